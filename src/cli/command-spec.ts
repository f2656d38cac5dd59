// Every `devmigrate` command, argument and option as data: main.ts builds the yargs parser from
// it, and the man page (devmigrate(8)) and bash completion are generated from it (cli-docs.ts),
// so help, manual and completion cannot drift apart. Handlers live elsewhere (main.ts).
import { LOG_LEVELS } from '../agent/log-options.js';
import { STEPS } from '../migration/state-machine.js';

export interface OptionSpec {
  name: string;
  /** One-letter alias (xl's -s). */
  alias?: string;
  type: 'string' | 'number' | 'boolean';
  describe: string;
  default?: string | number | boolean;
  /** Shown instead of the default in help (computed defaults). */
  defaultText?: string;
  choices?: readonly string[];
  required?: boolean;
  /** The value's placeholder in synopses: SECONDS, FILE, DIR, CMD. */
  value?: string;
  /** What bash completes the value with. */
  complete?: 'file' | 'dir' | 'command';
}

export interface PositionalSpec {
  name: string;
  describe: string;
  optional?: boolean;
  choices?: readonly string[];
  /** How the synopsis shows it ("[user@]host"); default the name. */
  display?: string;
  /** What bash completes it with: domain names, or the choices. */
  complete?: 'domain' | 'host';
}

export interface CommandSpec {
  /** ['migrate'], or ['sim', 'up'] for a subcommand. */
  path: readonly string[];
  summary: string;
  /** Paragraphs for the manual (what it does, when it ends, what it prints). */
  details?: readonly string[];
  positionals: readonly PositionalSpec[];
  options: readonly OptionSpec[];
  examples?: readonly (readonly [string, string])[];
  /** Internal (the simulated host's supervisor): not in help, manual or completion. */
  hidden?: boolean;
}

export const LOG_FORMATS = ['auto', 'journal', 'human', 'json'] as const;
export const LOG_LEVEL_NAMES = Object.keys(LOG_LEVELS) as readonly string[];
export const STEP_NAMES: readonly string[] = [...STEPS, 'recover', 'abort'];

export const GLOBAL_OPTIONS: readonly OptionSpec[] = [
  {
    name: 'json',
    type: 'boolean',
    default: false,
    describe:
      'Machine-readable output: one JSON document (per line with --watch); errors as {"ok":false,...}',
  },
  {
    name: 'config',
    type: 'string',
    value: 'FILE',
    complete: 'file',
    describe:
      'Configuration file; its xenstoredPath also tells the CLI where xenstored is (default: $DEVMIGRATE_CONFIG, else /etc/xen/devmigrate.json)',
  },
];

const domainArg: PositionalSpec = {
  name: 'domain',
  describe: 'Domain name or id',
  complete: 'domain',
};

const timeout = (seconds: number, what: string): OptionSpec => ({
  name: 'timeout',
  type: 'number',
  value: 'SECONDS',
  default: seconds,
  describe: what,
});

export const COMMANDS: readonly CommandSpec[] = [
  {
    path: ['agent'],
    summary: 'Run the agent daemon (what xen-devmigrate.service starts)',
    details: [
      'Watches /tool/devmigrate/jobs in XenStore and runs every job written there (docs/protocol.md). SIGTERM drains running jobs (jobs past the suspension may finish, the others are aborted with the guest resumed), SIGHUP reloads the configuration. Under systemd it reports readiness (Type=notify) and logs to the journal with the fields DOMID, JOB, PHASE and DEVICE.',
    ],
    positionals: [],
    options: [
      {
        name: 'log-format',
        type: 'string',
        value: 'FORMAT',
        default: 'auto',
        choices: LOG_FORMATS,
        describe:
          'auto: the journal (native fields) under systemd, human lines elsewhere; journal: <N>-prefixed lines on stdout; json: one object per line',
      },
      {
        name: 'log-level',
        type: 'string',
        value: 'LEVEL',
        choices: LOG_LEVEL_NAMES,
        describe: "Lowest level logged; wins over the configuration's logLevel, also after a reload",
      },
      {
        name: 'drain-timeout',
        type: 'number',
        value: 'SECONDS',
        default: 30,
        describe:
          'On SIGTERM: seconds to bring running jobs to a safe end (keep below the unit TimeoutStopSec=, 45 s)',
      },
    ],
  },
  {
    path: ['migrate'],
    summary:
      'Migrate a domain with xl migrate -p, its devices driven by the agent, then unpause it at the destination',
    details: [
      "Writes a job (mode auto, suspend=toolstack) and waits until the agent has tested and prepared every device; runs `xl migrate -p [-s CMD] <domain> <[user@]host>` (no shell); the agent starts post-suspend the moment xl suspends the guest; once xl reported the target's startup and the devices are synced (job done) it unpauses the guest at the destination through the same remote shell (`<CMD> <[user@]host>` running `xl unpause <domain>`), started with xl and waiting on its input, so that the guest does not wait for ssh to start. It ends with a summary: outcome, total time, downtime, time per phase, bytes copied.",
      "Ctrl-C (SIGINT; also SIGTERM, SIGHUP) before xl's point of no return aborts the job: xl is made to fail (its transport is stopped, and xl resumes the guest at the source), the devices are recovered, and the command exits 130. Past xl's point of no return (the destination acknowledged the memory) nothing can be undone: it says exactly where the guest is and goes on to the unpause; a second Ctrl-C leaves at once with the steps still to take (exit 5).",
      'The job is kept after the migration so that `devmigrate status` and `devmigrate report` can show it (--no-keep-job removes it); of the finished jobs of domains that left this host, the 16 newest are kept.',
    ],
    positionals: [
      domainArg,
      {
        name: 'host',
        display: '[user@]host',
        describe:
          'Destination as xl takes it: [user@]host; the host alone (name, IPv4 or IPv6) goes to the agent and its device tools',
        complete: 'host',
      },
    ],
    options: [
      {
        name: 'ssh-command',
        alias: 's',
        type: 'string',
        value: 'CMD',
        complete: 'command',
        defaultText: 'ssh',
        describe:
          "xl's -s: the remote shell xl runs its migrate-receive with, passed to xl as is; also runs the unpause at the destination",
      },
      {
        name: 'migrate-command',
        type: 'string',
        value: 'CMD',
        default: 'xl migrate -p',
        complete: 'command',
        describe: 'Run as: CMD [-s SSH] <domain> <[user@]host> (plain words, no shell)',
      },
      {
        name: 'unpause-command',
        type: 'string',
        value: 'CMD',
        defaultText: '<ssh-command> {host} xl unpause',
        complete: 'command',
        describe:
          'Run as: CMD <domain> once the devices are synced (started then, not in advance); {host} becomes the [user@]host given',
      },
      {
        name: 'live',
        type: 'boolean',
        default: true,
        describe: 'Live: bulk device copies while the guest runs (--no-live: everything after the suspend)',
      },
      timeout(3600, 'Seconds to wait for each stage (devices ready, xl, devices synced)'),
      {
        name: 'keep-job',
        type: 'boolean',
        default: true,
        describe: 'Keep the finished job for status and report (--no-keep-job: remove it)',
      },
    ],
    examples: [
      ['devmigrate migrate web01 host-b', 'migrate web01 over ssh to host-b'],
      ['devmigrate migrate -s "ssh -p 2222" web01 root@host-b', 'as xl would, with another remote shell'],
    ],
  },
  {
    path: ['check'],
    summary: 'Run the test phase only: would the devices let this domain migrate? (exit 0 yes, 3 no)',
    details: [
      'Nothing is changed: the job is tested, then aborted and removed. Every device prints its verdict and, when it refuses, why.',
    ],
    positionals: [
      domainArg,
      {
        name: 'host',
        display: '[user@]host',
        optional: true,
        describe: 'Destination the devices are asked about (default localhost)',
        complete: 'host',
      },
    ],
    options: [timeout(120, 'Seconds to wait for the agent')],
  },
  {
    path: ['status'],
    summary: "Show the agent and the jobs, or one domain's job with its timing summary",
    details: [
      'Without a domain: the agent and one line per job. With a domain (name or id, also of a domain that has left this host, or a job id): its job, each device, and the summary of a finished job (outcome, total time, downtime, per-phase times, bytes copied). --watch follows the job live: one line per device with its state, bytes, rate and ETA on a terminal, plain lines elsewhere.',
    ],
    positionals: [{ ...domainArg, optional: true, describe: 'Domain name or id, or a job id' }],
    options: [
      { name: 'watch', type: 'boolean', default: false, describe: 'Follow the job live until it ends' },
      timeout(86400, 'With --watch: give up after this many seconds'),
    ],
  },
  {
    path: ['report'],
    summary: 'Draw the timeline of a job: one bar per device through the phases, the downtime marked',
    details: [
      'Prints the job (by domain name or id, also of a domain that has left this host, or by job id) as a chart in the terminal: a row per phase, per device operation and for the guest, with the window in which the guest was stopped marked; a zoomed chart of that window follows when it is short. --svg writes the same picture as an SVG file.',
    ],
    positionals: [{ ...domainArg, describe: 'Domain name or id, or a job id' }],
    options: [
      {
        name: 'svg',
        type: 'string',
        value: 'FILE',
        complete: 'file',
        describe: 'Also write the timeline as an SVG picture to FILE',
      },
      {
        name: 'width',
        type: 'number',
        value: 'COLUMNS',
        describe: "Width of the chart (default: the terminal's, else 80)",
      },
    ],
  },
  {
    path: ['abort'],
    summary: "Abort the domain's job: devices recovered, the guest resumed at the source",
    details: [
      "Waits until the agent has recovered the devices. A job whose guest xl suspended (a running `devmigrate migrate`) is the toolstack's: the abort stops the devices, and `devmigrate migrate` makes xl resume the guest when xl has not passed its point of no return; abort says where the guest is and exits 5 when it is not running at the source afterwards.",
    ],
    positionals: [domainArg],
    options: [timeout(300, 'Seconds to wait for the recovery')],
  },
  {
    path: ['step'],
    summary: 'Drive a steps-mode job one step, as xend did',
    details: [
      'The first step (test) of a new job needs --host. Ctrl-C stops waiting only: the job stays for the next step (or `step <domain> abort`).',
    ],
    positionals: [domainArg, { name: 'step', describe: 'The step to take', choices: STEP_NAMES }],
    options: [
      {
        name: 'host',
        type: 'string',
        value: '[user@]host',
        describe: 'Destination; needed by the first step (test)',
      },
      timeout(3600, 'Seconds to wait for the step'),
    ],
  },
  {
    path: ['config', 'check'],
    summary: 'Validate the configuration file (exit 78 names the bad key)',
    positionals: [],
    options: [],
  },
  {
    path: ['sim', 'up'],
    summary: 'Start a simulated Xen host in the background and print how to use it',
    details: [
      'The real xenstored under the xen-mocks shim, a simulated hypervisor, simulated guests, a stand-in `xl` and a remote-shell stand-in `sim-ssh` in DIR/bin, and an agent configuration DIR/devmigrate.json. Prints the shell lines to use it: eval "$(devmigrate sim up --dir DIR --agent)", and what to try. Needs the source tree (xen-mocks); not part of the installed package.',
    ],
    positionals: [],
    options: [
      {
        name: 'dir',
        type: 'string',
        value: 'DIR',
        required: true,
        complete: 'dir',
        describe: "Folder for the host's files",
      },
      {
        name: 'host',
        type: 'string',
        value: 'FILE',
        complete: 'file',
        describe: 'Host description (JSON); default xen-mocks/hosts/example-host.json',
      },
      {
        name: 'agent',
        type: 'boolean',
        default: false,
        describe:
          'Also run the agent on it, as the service would on a dom0 (log: DIR/agent.log); sim down stops it',
      },
    ],
  },
  {
    path: ['sim', 'down'],
    summary: 'Stop the simulated host of a folder',
    positionals: [],
    options: [
      {
        name: 'dir',
        type: 'string',
        value: 'DIR',
        required: true,
        complete: 'dir',
        describe: 'Folder given to sim up',
      },
    ],
  },
  {
    path: ['sim', 'serve'],
    summary: "The simulated host's supervisor (started by sim up)",
    hidden: true,
    positionals: [],
    options: [
      { name: 'dir', type: 'string', value: 'DIR', required: true, describe: "Folder for the host's files" },
      { name: 'host', type: 'string', value: 'FILE', describe: 'Host description (JSON)' },
      { name: 'agent', type: 'boolean', default: false, describe: 'Also run the agent (log: DIR/agent.log)' },
    ],
  },
  {
    path: ['demo'],
    summary: 'Show the product on a simulated host: migrations, a refusal and an abort (no Xen needed)',
    details: [
      'Starts a simulated host and an agent, then tells the same story every run: a migration through `devmigrate migrate` and the stand-in xl, a local disk copied by rsync, a refusal and a guest that will not suspend, each with its timeline. Exit 0 when every scene ends as it should. Needs the source tree (xen-mocks).',
    ],
    positionals: [],
    options: [
      {
        name: 'dir',
        type: 'string',
        value: 'DIR',
        complete: 'dir',
        describe: "Keep the demo's files (logs, configuration) here (default: a temporary folder, removed)",
      },
    ],
  },
];

/** Top-level groups whose commands are all subcommands (config check, sim up...). */
export const GROUPS: Readonly<Record<string, string>> = {
  config: 'Configuration commands',
  sim: 'A simulated Xen host (real xenstored, simulated hypervisor and guests)',
};

export function visibleCommands(): CommandSpec[] {
  return COMMANDS.filter((c) => c.hidden !== true);
}

/** The synopsis of a command: `devmigrate migrate [options] <domain> <[user@]host>`. */
export function synopsis(c: CommandSpec): string {
  const args = c.positionals.map((p) => {
    const shown = p.display ?? p.name;
    return p.optional === true ? `[${shown}]` : `<${shown}>`;
  });
  const required = c.options
    .filter((o) => o.required === true)
    .map((o) => `--${o.name} ${o.value ?? 'VALUE'}`);
  const opts = c.options.some((o) => o.required !== true) ? ['[options]'] : [];
  return ['devmigrate', ...c.path, ...opts, ...required, ...args].join(' ');
}

/** The words of argv that are not options or option values (`--config F migrate x` -> migrate x). */
export function plainWords(argv: readonly string[]): string[] {
  const valued = new Set<string>();
  for (const o of [...GLOBAL_OPTIONS, ...COMMANDS.flatMap((c) => c.options)]) {
    if (o.type === 'boolean') continue;
    valued.add(`--${o.name}`);
    if (o.alias !== undefined) valued.add(`-${o.alias}`);
  }
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      words.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('-') && a !== '-') {
      if (valued.has(a)) i += 1;
      continue;
    }
    words.push(a);
  }
  return words;
}

/** The command an argv names (the longest path its leading words match), if any. */
export function commandOf(argv: readonly string[]): CommandSpec | undefined {
  const words = plainWords(argv);
  let best: CommandSpec | undefined;
  for (const c of COMMANDS) {
    if (c.path.every((w, i) => words[i] === w) && (best === undefined || c.path.length > best.path.length))
      best = c;
  }
  return best;
}
