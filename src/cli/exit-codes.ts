// The CLI's and the agent's exit codes: one table, documented in docs/operations.md, so that
// scripts can branch on them. Values below 64 are ours; 64+ follow sysexits.h where one fits.

export const ExitCode = {
  /** Success; for `check`: the migration would be accepted. */
  OK: 0,
  /** A failure not covered below (the message says what). */
  FAILURE: 1,
  /** `check`: at least one device refuses; the reasons are printed per device. */
  REFUSED: 3,
  /** `migrate`: aborted, the guest is running at the source. */
  ABORTED: 4,
  /** `migrate`: the outcome is uncertain; the message names what to check on which host. */
  UNCERTAIN: 5,
  /** The domain (by name or id) does not exist. */
  NO_DOMAIN: 6,
  /** A job is already running for that domain. */
  BUSY: 7,
  /** xenstored could not be reached, or no agent is running. */
  UNAVAILABLE: 8,
  /** The operation timed out. */
  TIMEOUT: 9,
  /** Bad command line or argument (unknown command, bad host name, bad step). */
  USAGE: 64,
  /**
   * Interrupted (128 + the signal): the command stopped what it started before exiting (a job
   * aborted, its devices recovered); 130 for Ctrl-C (SIGINT), 129 SIGHUP, 143 SIGTERM.
   */
  HANGUP: 129,
  INTERRUPTED: 130,
  TERMINATED: 143,
  /** An unexpected internal error (a bug: please report it with the log). */
  SOFTWARE: 70,
  /** The configuration file is malformed; the key and reason are printed. systemd does not restart on it. */
  CONFIG: 78,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** A CLI failure that carries its exit code; main() prints the message and exits with the code. */
export class CliError extends Error {
  override readonly name: string = 'CliError';
  constructor(
    message: string,
    readonly code: ExitCodeValue,
    /** Extra lines for the operator: what to check, on which host. */
    readonly hints: readonly string[] = [],
  ) {
    super(message);
  }
}

/** Every exit status and what it means, for the manual (docs/operations.md has the same table). */
export const EXIT_STATUS: readonly (readonly [string, string])[] = [
  ['0', 'success; check: the migration would be accepted'],
  ['1', 'failure not covered below (the message says what)'],
  ['3', 'check, step, migrate: refused by at least one device (reasons printed per device)'],
  ['4', 'migrate: aborted, the guest runs at the source'],
  ['5', 'migrate, abort: outcome uncertain; the message names what to check on which host'],
  ['6', 'no such domain (name or id) or job'],
  ['7', 'the domain already has a job in progress'],
  ['8', 'xenstored unreachable, or no agent running'],
  ['9', 'timed out waiting'],
  ['64', 'bad command line (unknown command or option, missing argument, bad host name, bad step)'],
  ['70', 'internal error (a bug: report it with the log)'],
  [
    '78',
    'configuration refused (key and reason printed); the agent does not start, systemd does not retry it',
  ],
  [
    '129, 130, 143',
    "interrupted by SIGHUP, SIGINT (Ctrl-C), SIGTERM: what the command started was stopped first (a job aborted, its devices recovered); migrate past xl's point of no return goes on instead",
  ],
];
