// Commands `devmigrate migrate` runs at the destination: one run at the moment (argv, no local
// shell, bounded), and the unpause ARMED in advance. The guest is paused at the destination from
// xl's last memory round until the unpause; starting the remote shell only then (ssh's process,
// its session, the remote login shell, each an exec on a dom0 busy with the migration) put
// seconds into the guest's downtime that plain `xl migrate` does not have: its receiver unpauses
// the guest itself. So the remote shell is started while xl still sends the memory and waits on
// its standard input; one line "unpause" makes it exec `xl unpause <domain>` there. Anything
// else (end of input: we disarmed or died, the connection dropped) ends it without unpausing.
import { spawn, type ChildProcess } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

const KEEP_OUTPUT = 16_384;

/**
 * Starts argv (no shell) in its own process group, so that a Ctrl-C at the terminal does not cut
 * it in half; `ended` resolves with how it ended and the last 16 KiB of its output, never rejects.
 */
function startCollecting(
  argv: readonly string[],
  stdin: 'ignore' | 'pipe',
): { child: ChildProcess | undefined; ended: Promise<RunResult> } {
  const [cmd, ...rest] = argv;
  if (cmd === undefined)
    return { child: undefined, ended: Promise.resolve({ code: 127, signal: null, output: 'empty command' }) };
  const child = spawn(cmd, rest, { stdio: [stdin, 'pipe', 'pipe'], detached: true });
  let output = '';
  const keep = (b: Buffer): void => {
    output = (output + b.toString()).slice(-KEEP_OUTPUT);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // A remote side that is gone makes our writes fail with EPIPE: seen as its end, not thrown.
  child.stdin?.on('error', () => undefined);
  const ended = new Promise<RunResult>((resolve) => {
    child.on('error', (err) => resolve({ code: 127, signal: null, output: `${output}${err.message}` }));
    child.on('close', (code, signal) => resolve({ code, signal, output }));
  });
  return { child, ended };
}

/** A short command on the destination: argv, no shell, bounded. */
export async function runBounded(argv: readonly string[], timeoutMs: number): Promise<RunResult> {
  const { child, ended } = startCollecting(argv, 'ignore');
  const timer = setTimeout(() => child?.kill('SIGTERM'), timeoutMs);
  try {
    return await ended;
  } finally {
    clearTimeout(timer);
  }
}

/** A word quoted for a POSIX shell (the remote side's: ssh hands it a command line). */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The word the armed remote shell waits for; anything else leaves the guest paused. */
export const UNPAUSE_WORD = 'unpause';

/**
 * The remote command line of the armed unpause: POSIX sh, as ssh runs it on the destination.
 * `read` returns non-zero at end of input, so a connection that ends without the word never
 * reaches xl.
 */
export function armedUnpauseScript(domain: string): string {
  return `read -r w && [ "$w" = ${UNPAUSE_WORD} ] && exec xl unpause ${shellQuote(domain)}`;
}

/**
 * The argv of the armed unpause: `<remote shell> <[user@]host> <armed script>`. xl's default
 * remote shell (no -s) is ssh, given BatchMode here: it starts beside xl's own ssh, and a
 * password prompt of its own would interleave with xl's on the terminal; without a key it ends
 * at once and the unpause is run the ordinary way at the end. A -s command is used as given.
 */
export function armedUnpauseArgv(
  sshCommand: readonly string[] | undefined,
  destination: string,
  domain: string,
): string[] {
  const shell = sshCommand ?? ['ssh', '-o', 'BatchMode=yes'];
  return [...shell, destination, armedUnpauseScript(domain)];
}

/**
 * The remote shell of the unpause, started early (`<remote shell> <host> <armed script>`). fire()
 * sends the word and waits (bounded) for the command's end; disarm() ends its input and kills
 * it after a grace period. `ready` is false once it ended on its own before fire(): the caller
 * then runs the unpause the ordinary way.
 */
export class ArmedCommand {
  private readonly child: ChildProcess | undefined;
  private readonly ended: Promise<RunResult>;
  private exited = false;
  private fired = false;

  constructor(readonly argv: readonly string[]) {
    ({ child: this.child, ended: this.ended } = startCollecting(argv, 'pipe'));
    if (this.child === undefined) this.exited = true;
    void this.ended.then(() => (this.exited = true));
  }

  /** Still waiting for the word (its remote shell is up or coming up). */
  get ready(): boolean {
    return !this.exited && !this.fired;
  }

  /** What it said and how it ended, when it ended on its own (for the log). */
  async endedEarly(): Promise<RunResult | undefined> {
    return this.exited && !this.fired ? this.ended : undefined;
  }

  async fire(timeoutMs: number): Promise<RunResult> {
    if (this.child === undefined || !this.ready) return this.ended;
    this.fired = true;
    this.child.stdin?.end(`${UNPAUSE_WORD}\n`);
    const timer = setTimeout(() => this.child?.kill('SIGTERM'), timeoutMs);
    try {
      return await this.ended;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends its input without the word; the remote side exits without unpausing. */
  disarm(graceMs = 5_000): void {
    if (this.child === undefined || this.exited) return;
    this.fired = true;
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child?.kill('SIGTERM'), graceMs);
    timer.unref();
    void this.ended.then(() => clearTimeout(timer));
  }
}
