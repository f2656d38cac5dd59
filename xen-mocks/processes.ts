// Child processes of the test world (xenstored, ring bridges): each in its own process group,
// tracked so that stop() and a crashing test run alike leave no process behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

export class MockProcessError extends Error {
  override readonly name = 'MockProcessError';
}

const live = new Set<ManagedProcess>();
const tempDirs = new Set<string>();
let hooked = false;

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

function installExitHook(): void {
  if (hooked) return;
  hooked = true;
  // 'exit' handlers must be synchronous: SIGKILL every group we started, remove temp folders.
  process.on('exit', () => {
    for (const p of live) killGroup(p.pid, 'SIGKILL');
    for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
}

/** Registers a temp folder to be removed if the process exits without stop(). */
export function trackTempDir(dir: string): void {
  installExitHook();
  tempDirs.add(dir);
}

export function untrackTempDir(dir: string): void {
  tempDirs.delete(dir);
}

const OUTPUT_KEEP = 64 * 1024;

/** A spawned daemon: its pid (= process group id), captured output, and exit tracking. */
export class ManagedProcess {
  readonly pid: number;
  private out = '';
  private err = '';
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exited: Promise<void>;
  private readonly lineWaiters: Array<{ text: string; resolve: () => void }> = [];

  constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    if (child.pid === undefined) throw new MockProcessError(`${name}: spawn failed`);
    this.pid = child.pid;
    installExitHook();
    live.add(this);
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (s: string) => {
      this.out = (this.out + s).slice(-OUTPUT_KEEP);
      for (const w of [...this.lineWaiters]) {
        if (this.out.includes(w.text)) {
          this.lineWaiters.splice(this.lineWaiters.indexOf(w), 1);
          w.resolve();
        }
      }
    });
    child.stderr?.on('data', (s: string) => {
      this.err = (this.err + s).slice(-OUTPUT_KEEP);
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this);
        resolve();
      });
      child.on('error', (e) => {
        this.err += `\nspawn error: ${e.message}`;
        this.exitInfo ??= { code: null, signal: null };
        live.delete(this);
        resolve();
      });
    });
    // Daemons must not keep the test process alive on their own.
    child.unref();
    (child.stdout as { unref?: () => void } | null)?.unref?.();
    (child.stderr as { unref?: () => void } | null)?.unref?.();
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  get stdout(): string {
    return this.out;
  }

  get stderr(): string {
    return this.err;
  }

  describeExit(): string {
    if (!this.exitInfo) return 'running';
    return this.exitInfo.signal
      ? `killed by ${this.exitInfo.signal}`
      : `exited with code ${this.exitInfo.code}`;
  }

  /** Resolves when stdout has contained `text`; rejects on exit or timeout. */
  async waitForOutput(text: string, timeoutMs: number): Promise<void> {
    if (this.out.includes(text)) return;
    let timer: NodeJS.Timeout | undefined;
    const seen = new Promise<void>((resolve) => this.lineWaiters.push({ text, resolve }));
    const failed = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new MockProcessError(`${this.name}: no "${text}" within ${timeoutMs} ms\n${this.err}`)),
        timeoutMs,
      );
      void this.exited.then(() =>
        reject(new MockProcessError(`${this.name} ${this.describeExit()} before "${text}"\n${this.err}`)),
      );
    });
    try {
      await Promise.race([seen, failed]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Waits up to timeoutMs for the process to exit; true if it did. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
    const done = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return done;
  }

  /** Signals the whole group; escalates to SIGKILL after graceMs. */
  async kill(signal: NodeJS.Signals = 'SIGTERM', graceMs = 2000): Promise<void> {
    if (!this.running) return;
    killGroup(this.pid, signal);
    if (await this.waitExit(graceMs)) return;
    killGroup(this.pid, 'SIGKILL');
    if (!(await this.waitExit(graceMs)))
      throw new MockProcessError(`${this.name} (pid ${this.pid}) did not die`);
  }
}

/** Spawns a daemon in its own process group with stdin closed and output captured. */
export function spawnManaged(
  name: string,
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): ManagedProcess {
  const child = spawn(file, args, {
    env: { ...env, XEN_MOCKS_PARENT_PID: String(process.pid) },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new ManagedProcess(name, child);
}
