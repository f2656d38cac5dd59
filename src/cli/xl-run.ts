// Runs `xl migrate` for the migrate command and knows where it is. xl runs in its own process
// group (a Ctrl-C at the terminal reaches us, not xl), without a shell, bounded in time. Its
// stderr tells the stages (tools/xl/xl_migrate.c): "Target has acknowledged transfer" is the
// point of no return for us: from then on xl renames the source away and gives the destination
// permission to start. Before it, xl can be made to fail cleanly by stopping its transport (the
// child that runs "<ssh> <host> xl migrate-receive"): xl then resumes the guest at the source
// itself ("Migration failed, resuming at sender"). Killing xl instead could leave the guest
// suspended with nobody to resume it.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, readSync, watch, type FSWatcher } from 'node:fs';
import { setPriority } from 'node:os';

/** How far xl got, in order. */
export type XlStage = 'sending' | 'acknowledged' | 'go' | 'started-at-target';

const STAGE_ORDER: readonly XlStage[] = ['sending', 'acknowledged', 'go', 'started-at-target'];

/** xl's own words for its stages and its failure ends (stderr lines). */
export function stageOfLine(line: string): XlStage | undefined {
  if (/Target has acknowledged transfer/.test(line)) return 'acknowledged';
  if (/Giving target permission to start/.test(line)) return 'go';
  if (/Target reports successful startup|Migration successful/.test(line)) return 'started-at-target';
  return undefined;
}

/** What xl said about its failure: resumed here, or the dreaded undefined state. */
export function failureOfOutput(output: string): 'resumed-at-source' | 'undefined-state' | undefined {
  if (/Migration failed during final handshake|Domain state is now undefined/.test(output))
    return 'undefined-state';
  if (/resuming at sender|Resumed OK|failed to suspend at sender/.test(output)) return 'resumed-at-source';
  return undefined;
}

export interface XlResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last 16 KiB of its output. */
  output: string;
  stage: XlStage;
  timedOut: boolean;
  /** The transport was stopped by cancel(). */
  cancelled: boolean;
}

export type CancelOutcome = 'transport-stopped' | 'xl-stopped' | 'too-late' | 'finished';

export interface XlRun {
  readonly pid: number | undefined;
  /** Where xl's output goes (a file: xl must outlive us when we leave early). */
  readonly logFile: string;
  /** Furthest stage seen so far. */
  readonly stage: XlStage;
  /** Past the point of no return: the destination has the memory; nothing can be undone. */
  readonly pastNoReturn: boolean;
  readonly result: Promise<XlResult>;
  onStage(cb: (stage: XlStage, atMs: number) => void): void;
  /**
   * Before the point of no return: stops xl's transport so that xl fails and resumes the guest
   * at the source (xl itself when it has no transport yet). Too late once xl said the target
   * acknowledged the transfer.
   */
  cancel(): CancelOutcome;
  /**
   * Lowers the CPU priority of xl and everything it runs (to nice 10) for what is left of its
   * work: past the target's startup xl only removes the source domain, which the guest does not
   * wait for, while the unpause at the destination is the end of its downtime.
   */
  yieldCpu(): void;
}

/** Every process of a /proc with its parent and command name (one pass; ended ones skipped). */
function processTable(procRoot: string): { pid: number; ppid: number; comm: string }[] {
  const out: { pid: number; ppid: number; comm: string }[] = [];
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const stat = readFileSync(`${procRoot}/${e}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const ppid = Number(stat.slice(close + 2).split(' ')[1]);
      out.push({ pid: Number(e), ppid, comm });
    } catch {
      // the process ended meanwhile
    }
  }
  return out;
}

/** Direct children of a process (Linux /proc), with their command names. */
export function childrenOf(pid: number, procRoot = '/proc'): { pid: number; comm: string }[] {
  return processTable(procRoot)
    .filter((p) => p.ppid === pid)
    .map(({ pid: child, comm }) => ({ pid: child, comm }));
}

/** A process and all of its descendants (one pass over /proc). */
export function processTree(pid: number, procRoot = '/proc'): number[] {
  const kids = new Map<number, number[]>();
  for (const p of processTable(procRoot)) kids.set(p.ppid, [...(kids.get(p.ppid) ?? []), p.pid]);
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0 && out.length < 4096) {
    const p = todo.pop() as number;
    out.push(p);
    todo.push(...(kids.get(p) ?? []));
  }
  return out;
}

/** Nice value for xl once only the source's removal is left (see XlRun.yieldCpu). */
export const XL_TEARDOWN_NICE = 10;

function killTree(pid: number, sig: NodeJS.Signals): void {
  for (const c of childrenOf(pid)) killTree(c.pid, sig);
  try {
    process.kill(pid, sig);
  } catch {
    // gone already
  }
}

/**
 * Starts xl with its output in `logFile` (not a pipe: if we leave before xl ends, xl must not
 * meet a closed pipe in its final handshake), which is followed for xl's stages.
 */
export function startXl(argv: readonly string[], timeoutMs: number, logFile: string): XlRun {
  const [cmd, ...rest] = argv;
  let stage: XlStage = 'sending';
  let output = '';
  let cancelled = false;
  let timedOut = false;
  let finished = false;
  const listeners: ((s: XlStage, at: number) => void)[] = [];
  const out = openSync(logFile, 'w');
  const child = spawn(cmd ?? 'xl', rest, { stdio: ['ignore', out, out], detached: true });
  closeSync(out);
  const advance = (s: XlStage): void => {
    if (STAGE_ORDER.indexOf(s) <= STAGE_ORDER.indexOf(stage)) return;
    stage = s;
    const at = Date.now();
    for (const l of listeners) l(s, at);
  };
  let partial = '';
  let offset = 0;
  const reader = openSync(logFile, 'r');
  const buf = Buffer.alloc(65_536);
  const follow = (): void => {
    for (;;) {
      let n: number;
      try {
        n = readSync(reader, buf, 0, buf.length, offset);
      } catch {
        return;
      }
      if (n <= 0) return;
      offset += n;
      const text = buf.subarray(0, n).toString();
      output = (output + text).slice(-16_384);
      partial += text;
      const lines = partial.split(/\r\n|\n|\r/);
      partial = lines.pop() ?? '';
      for (const l of lines) {
        const s = stageOfLine(l);
        if (s !== undefined) advance(s);
      }
    }
  };
  // inotify tells when xl wrote; no polling.
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(logFile, () => follow());
  } catch {
    watcher = undefined;
  }
  const stopFollowing = (): void => {
    follow();
    watcher?.close();
    try {
      closeSync(reader);
    } catch {
      // closed already
    }
  };

  const stopTransport = (): CancelOutcome => {
    if (finished) return 'finished';
    if (stage !== 'sending') return 'too-late';
    const pid = child.pid;
    if (pid === undefined) return 'finished'; // never started
    // libxl's save helper is xl's child too: it must finish its own failure path, not be killed.
    const transports = childrenOf(pid).filter((c) => !c.comm.startsWith('libxl-save-hel'));
    cancelled = true;
    if (transports.length === 0) {
      // No transport yet: xl has not begun to send, so it cannot have suspended the guest; it is
      // stopped itself (and a guest found suspended afterwards is resumed by the caller).
      child.kill('SIGTERM');
      return 'xl-stopped';
    }
    for (const t of transports) killTree(t.pid, 'SIGTERM');
    const hard = setTimeout(() => {
      for (const t of transports) killTree(t.pid, 'SIGKILL');
    }, 2000);
    hard.unref();
    return 'transport-stopped';
  };

  const result = new Promise<XlResult>((resolve) => {
    const timer = setTimeout(() => {
      timedOut = true;
      // Bounded like every wait: before the point of no return xl is made to fail cleanly;
      // past it, killing xl would only leave its final handshake undone, so it is let run.
      stopTransport();
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      finished = true;
      stopFollowing();
      resolve({ code: 127, signal: null, output: `${output}${err.message}`, stage, timedOut, cancelled });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      finished = true;
      stopFollowing();
      if (partial !== '') {
        const s = stageOfLine(partial);
        if (s !== undefined) advance(s);
      }
      resolve({ code, signal, output, stage, timedOut, cancelled });
    });
  });

  return {
    logFile,
    get pid() {
      return child.pid;
    },
    get stage() {
      return stage;
    },
    get pastNoReturn() {
      return stage !== 'sending';
    },
    result,
    onStage: (cb) => listeners.push(cb),
    cancel: stopTransport,
    yieldCpu: () => {
      if (finished || child.pid === undefined) return;
      for (const p of processTree(child.pid)) {
        try {
          setPriority(p, XL_TEARDOWN_NICE);
        } catch {
          // ended meanwhile, or not ours to change: it only costs the guest time
        }
      }
    },
  };
}
