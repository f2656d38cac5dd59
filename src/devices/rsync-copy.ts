// The built-in copy method for local file-backed images: rsync in two passes over the remote
// shell: the bulk while the guest runs (pre-suspend), the final delta while it is suspended
// (started in post-suspend, awaited in sync). Argv only; progress parsed from --info=progress2.
// The test phase refuses a target path that exists (unless reuse is configured) or lacks room,
// and estimates the final pass's downtime; recover removes a target file the copy created.
import type { RsyncCopyConfig } from '../config/schema.js';
import { destinationVerdict, probeDestination } from './destination.js';
import { estimateFinalPass } from './downtime-estimate.js';
import { runTool, type ToolRunResult } from './external-tool.js';
import { measureReadRate } from './read-rate.js';
import { mustRunRemote, type RemoteShell } from './remote-shell.js';
import { DeviceOpError, type DeviceMigrator, type OpContext, type Phase, type TestOutcome } from './types.js';

const SAFE_PATH = /^\/[A-Za-z0-9_.+@%=,:/-]{0,1023}$/;

/** "  1,234,567  45%  12.34MB/s  0:00:01 (xfr#1, to-chk=0/1)" -> bytes done. */
export function parseProgress2(line: string): number | undefined {
  const m = /^\s*([0-9][0-9,]*)\s+[0-9]{1,3}%/.exec(line);
  return m?.[1] !== undefined ? Number(m[1].replace(/,/g, '')) : undefined;
}

/** rsync's host:path with brackets around IPv6 addresses. */
export function remoteSpec(target: string, path: string): string {
  return target.includes(':') ? `[${target}]:${path}` : `${target}:${path}`;
}

export function remotePathFor(cfg: RsyncCopyConfig, path: string): string {
  return cfg.remoteRoot === '/' ? path : `${cfg.remoteRoot.replace(/\/$/, '')}${path}`;
}

/**
 * What rsync's argv may hold: plain words, the remote shell's words joined by single spaces (rsync
 * splits `-e` itself, no shell), and `[v6addr]:path`. No quotes, `$`, `;`, `|`, `&`, `<`, `>`,
 * backquotes or control characters anywhere.
 */
const RSYNC_ARG = /^[A-Za-z0-9_@%+=:,./[\]-]+(?: [A-Za-z0-9_@%+=:,./-]+)*$/;
export function rsyncArgOk(arg: string): boolean {
  return arg.length <= 4096 && RSYNC_ARG.test(arg);
}

export function rsyncArgs(cfg: RsyncCopyConfig, src: string, target: string): string[] {
  // --ignore-times: never trust size+mtime; a guest write in the same second as the bulk pass
  // would otherwise be skipped by the final pass (seen in the integration test).
  // --sparse with --inplace: zero runs are punched as holes (rsync >= 3.1.3), so a region the guest
  // zeroed after the bulk pass reads as zeros at the target too (tested).
  return [
    '--ignore-times',
    '--inplace',
    '--partial',
    '--no-whole-file',
    '--mkpath',
    '--info=progress2',
    ...(cfg.sparse === false ? [] : ['--sparse']),
    ...cfg.extraArgs,
    '-e',
    cfg.rsh.join(' '),
    '--',
    src,
    remoteSpec(target, remotePathFor(cfg, src)),
  ];
}

export interface RsyncExtras {
  /** Bytes the image occupies (the destination needs that much room; the copy is sparse). */
  allocated?: number;
  /** timeouts.syncMs: the final pass's estimate is compared with it. */
  syncMs?: number;
  /** Measure the read rate at test (false in tests that only check argv). */
  estimate?: boolean;
}

/** Bound on each remote check (test -e, df, rm) of the test phase and of the cleanup. */
const REMOTE_CHECK_MS = 30_000;

export class RsyncDiskMigrator implements DeviceMigrator {
  readonly policy = 'copy:rsync';
  private finalPass: Promise<ToolRunResult> | undefined;
  private readonly running = new Set<AbortController>();
  /** The destination had no file at the path at test time: a failed copy removes what it made. */
  private targetWasAbsent = false;
  private copyStarted = false;

  constructor(
    private readonly path: string,
    private readonly size: number,
    private readonly cfg: RsyncCopyConfig,
    private readonly timeoutMs: number,
    private readonly killGraceMs: number,
    private readonly extras: RsyncExtras = {},
  ) {}

  private shell(ctx: OpContext): RemoteShell {
    return { rsh: this.cfg.rsh, host: ctx.job.target, killGraceMs: this.killGraceMs };
  }

  async test(ctx: OpContext): Promise<TestOutcome> {
    if (!SAFE_PATH.test(this.path))
      return { ok: false, reason: `disk path ${this.path} has unsafe characters` };
    const dest = remotePathFor(this.cfg, this.path);
    const bounds = { timeoutMs: REMOTE_CHECK_MS, signal: ctx.signal, log: ctx.log };
    let verdict: TestOutcome;
    try {
      const state = await probeDestination(this.shell(ctx), dest, bounds);
      this.targetWasAbsent = !state.exists;
      verdict = destinationVerdict(state, {
        path: dest,
        host: ctx.job.target,
        needBytes: this.cfg.sparse === false ? this.size : (this.extras.allocated ?? this.size),
        reuse: this.cfg.reuseExisting === true,
        reuseKey: 'disks.copy.reuseExisting',
      });
    } catch (err) {
      return { ok: false, reason: `rsync: destination check failed: ${(err as Error).message}` };
    }
    if (!verdict.ok) return verdict;
    const notes = [`copy ${this.size} bytes by rsync`];
    if (verdict.note !== undefined) notes.push(verdict.note);
    if (this.extras.estimate !== false && this.extras.syncMs !== undefined) {
      const rate = await measureReadRate(this.path, this.size, { log: ctx.log, signal: ctx.signal });
      if (rate !== undefined) {
        const est = estimateFinalPass(this.size, rate, this.extras.syncMs);
        // A warning leads the note (devmigrate check looks for it there).
        if (est.exceedsSync) {
          ctx.log.warn(est.note);
          notes.unshift(est.note);
        } else notes.push(est.note);
      }
    }
    return { ok: true, note: notes.join('; ') };
  }

  private pass(ctx: OpContext, label: string): Promise<ToolRunResult> {
    // A private controller per pass: recover() can stop a pass that outlives its phase (the final one).
    const ac = new AbortController();
    const onAbort = (): void => ac.abort(ctx.signal.reason);
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    this.running.add(ac);
    ctx.log.info(`rsync ${label} pass of ${this.path} to ${ctx.job.target}`);
    this.copyStarted = true;
    return runTool(this.cfg.rsync, rsyncArgs(this.cfg, this.path, ctx.job.target), {
      timeoutMs: this.timeoutMs,
      killGraceMs: this.killGraceMs,
      signal: ac.signal,
      log: ctx.log,
      argOk: rsyncArgOk,
      track: ctx.toolProcess?.bind(ctx),
      onLine: (line) => {
        const done = parseProgress2(line);
        if (done !== undefined) ctx.progress(Math.min(done, this.size), this.size);
        return done !== undefined;
      },
    }).finally(() => {
      ctx.signal.removeEventListener('abort', onAbort);
      this.running.delete(ac);
    });
  }

  private static check(r: ToolRunResult, label: string, timeoutMs: number): void {
    if (r.code === 0) return;
    const why = r.timedOut
      ? `timed out after ${timeoutMs} ms`
      : r.aborted
        ? 'aborted'
        : `${r.code !== null ? `exit status ${r.code}` : `signal ${r.signal ?? '?'}`}${r.tail.length > 0 ? `: ${r.tail[r.tail.length - 1]}` : ''}`;
    throw new DeviceOpError(`rsync ${label} pass failed: ${why}`);
  }

  async preSuspend(ctx: OpContext): Promise<void> {
    // Non-live jobs copy everything once the guest is suspended: a bulk pass would be wasted.
    if (!ctx.job.live) return;
    RsyncDiskMigrator.check(await this.pass(ctx, 'bulk'), 'bulk', this.timeoutMs);
    ctx.progress(this.size, this.size);
  }

  postSuspend(ctx: OpContext): Promise<void> {
    // Started here, awaited in sync: the phase reports at once and the copy runs meanwhile.
    const p = this.pass(ctx, 'final');
    p.catch(() => undefined);
    this.finalPass = p;
    return Promise.resolve();
  }

  async sync(ctx: OpContext): Promise<void> {
    const p = this.finalPass;
    if (p === undefined) throw new DeviceOpError('sync without a final pass (post-suspend did not run)');
    const r = await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        const onAbort = (): void => reject(new DeviceOpError('aborted while waiting for the final pass'));
        if (ctx.signal.aborted) onAbort();
        ctx.signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
    RsyncDiskMigrator.check(r, 'final', this.timeoutMs);
    ctx.progress(this.size, this.size);
  }

  async recover(ctx: OpContext, lastPhase: Phase): Promise<void> {
    // The source image is untouched by a copy: stop the passes, then remove a target file that
    // did not exist before this copy (a torn image must not be taken for a good one).
    for (const ac of this.running) ac.abort(new Error(`recover after ${lastPhase}`));
    if (this.finalPass !== undefined) await this.finalPass.catch(() => undefined);
    if (this.copyStarted && this.targetWasAbsent) {
      const dest = remotePathFor(this.cfg, this.path);
      try {
        await mustRunRemote(this.shell(ctx), ['rm', '-f', dest], {
          timeoutMs: REMOTE_CHECK_MS,
          log: ctx.log,
        });
      } catch (err) {
        throw new DeviceOpError(
          `rsync copy stopped, but removing ${ctx.job.target}:${dest} failed: ${(err as Error).message}`,
        );
      }
      this.copyStarted = false;
      ctx.log.info(
        `rsync copy of ${this.path} stopped; the partial copy ${ctx.job.target}:${dest} was removed`,
      );
      return;
    }
    ctx.log.info(`rsync copy of ${this.path} stopped; the source image is unchanged`);
  }
}
