// What the destination host says about a target path before a copy or a mirror writes there:
// does a file already sit at that path, and how much room has its filesystem. Read through the
// remote shell with plain POSIX tools (test, df -P); the verdict is a pure function.
import { RemoteCommandError, describeRun, runRemote, type RemoteShell } from './remote-shell.js';
import type { Logger, TestOutcome } from './types.js';

export interface DestinationState {
  exists: boolean;
  /** Bytes available (to root, as df reports them) on the filesystem that will hold the path. */
  freeBytes: number | undefined;
  /** The folder `df` answered for (the nearest existing ancestor of the target's folder). */
  freeAt: string | undefined;
}

/** `df -P -k <dir>`: the second line's fourth column, in KiB. */
export function parseDfAvailBytes(lines: readonly string[]): number | undefined {
  const row = lines.find((l, i) => i > 0 && l.trim() !== '');
  const cols = row?.trim().split(/\s+/);
  const avail = cols?.[3];
  return avail !== undefined && /^[0-9]{1,18}$/.test(avail) ? Number(avail) * 1024 : undefined;
}

export function parentDir(path: string): string {
  const i = path.replace(/\/+$/, '').lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

/** Asks the destination; a remote shell failure (ssh exit 255, timeout) is a RemoteCommandError. */
export async function probeDestination(
  shell: RemoteShell,
  path: string,
  opts: { timeoutMs: number; signal?: AbortSignal; log: Logger },
): Promise<DestinationState> {
  const t = await runRemote(shell, ['test', '-e', path], opts);
  if (t.code !== 0 && t.code !== 1) {
    throw new RemoteCommandError(`test -e ${path}`, describeRun(t.run, opts.timeoutMs));
  }
  // df needs an existing path: walk up from the target's folder (the copy creates the rest).
  let dir = parentDir(path);
  for (let depth = 0; depth < 32; depth += 1) {
    const r = await runRemote(shell, ['df', '-P', '-k', dir], opts);
    if (r.code === 0) return { exists: t.code === 0, freeBytes: parseDfAvailBytes(r.stdout), freeAt: dir };
    if (r.code === 255 || r.run.timedOut || r.run.aborted) {
      throw new RemoteCommandError(`df ${dir}`, describeRun(r.run, opts.timeoutMs));
    }
    if (dir === '/') break;
    dir = parentDir(dir);
  }
  return { exists: t.code === 0, freeBytes: undefined, freeAt: undefined };
}

/** Refuse a target path that exists (unless reuse is configured) or whose filesystem lacks room. */
export function destinationVerdict(
  state: DestinationState,
  want: { path: string; host: string; needBytes: number; reuse: boolean; reuseKey: string },
): TestOutcome {
  const where = `${want.host}:${want.path}`;
  if (state.exists) {
    if (!want.reuse) {
      return {
        ok: false,
        reason: `${where} already exists; refusing to write over it (set ${want.reuseKey} to reuse it)`,
      };
    }
    return { ok: true, note: `${where} exists and will be overwritten (${want.reuseKey})` };
  }
  if (state.freeBytes === undefined) {
    return { ok: false, reason: `cannot tell the free space for ${where} (df -P found no folder)` };
  }
  if (state.freeBytes < want.needBytes) {
    return {
      ok: false,
      reason: `${where}: ${state.freeBytes} bytes free under ${state.freeAt ?? '?'}, the image needs ${want.needBytes}`,
    };
  }
  return { ok: true };
}
