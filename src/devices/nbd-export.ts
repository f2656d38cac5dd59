// The destination half of the mirror: the target image, and qemu-nbd serving it on a unix socket
// only the source reaches (the remote shell's forward, ssh -L). qemu-nbd exits once its one client
// has gone, after flushing: the process ending with status 0 proves the export stopped.
import { chmod, mkdir, rm } from 'node:fs/promises';
import type { MirrorConfig } from '../config/schema.js';
import { runTool, type ToolRunResult } from './external-tool.js';
import { parentDir } from './destination.js';
import type { MirrorFormat, MirrorNames } from './mirror-plan.js';
import {
  describeRun,
  mustRunRemote,
  remoteArgv,
  remoteWordOk,
  runRemote,
  type RemoteShell,
} from './remote-shell.js';
import { DeviceOpError, type Logger } from './types.js';

export interface ExportSpec {
  shell: RemoteShell;
  cfg: MirrorConfig;
  names: MirrorNames;
  destPath: string;
  format: MirrorFormat;
  /** Virtual size of the source disk (the target image is created with it). */
  sizeBytes: number;
  /** Bound on the export's whole life (remote `timeout` and the local process). */
  lifetimeMs: number;
  /** qemu-nbd's --cache (disks.mirror.targetCache, or writeback after a refused O_DIRECT). */
  cache: 'none' | 'writeback';
}

interface Bounds {
  timeoutMs: number;
  signal?: AbortSignal;
  log: Logger;
}

/**
 * The export's one process: the remote shell with a unix-socket forward, running qemu-nbd on the
 * destination under `timeout` (its life is bounded even if this host dies). Pure.
 */
export function exportCommand(spec: ExportSpec, pidFile: string): { words: string[]; rshExtra: string[] } {
  const { cfg, names, destPath, format, lifetimeMs, cache } = spec;
  return {
    rshExtra: [
      '-o',
      'ExitOnForwardFailure=yes',
      '-o',
      'StreamLocalBindUnlink=yes',
      '-L',
      `${names.localSocket}:${names.remoteSocket}`,
    ],
    words: [
      'timeout',
      '-s',
      'TERM',
      String(Math.max(1, Math.ceil(lifetimeMs / 1000))),
      cfg.qemuNbd,
      `--socket=${names.remoteSocket}`,
      `--format=${format}`,
      `--export-name=${names.exportName}`,
      // One client (the source QEMU); without --persistent qemu-nbd exits once it is gone.
      '--shared=1',
      `--cache=${cache}`,
      '--discard=unmap',
      '--detect-zeroes=unmap',
      `--pid-file=${pidFile}`,
      destPath,
    ],
  };
}

export class NbdExport {
  /** True once we (may have) created the target image: recover removes it. */
  createdImage = false;
  private tunnel: Promise<ToolRunResult> | undefined;
  private tunnelStop: AbortController | undefined;
  private tunnelEnd: ToolRunResult | undefined;
  private remotePid: number | undefined;

  constructor(readonly spec: ExportSpec) {}

  /**
   * The export ended because the destination's filesystem refused O_DIRECT (qemu-nbd
   * --cache=none on ramfs, or tmpfs before Linux 6.6: "Could not open '<image>': filesystem does
   * not support O_DIRECT"; older QEMU said "Invalid argument").
   */
  get refusedDirectIo(): boolean {
    return (
      this.spec.cache === 'none' &&
      this.tunnelEnd !== undefined &&
      this.tunnelEnd.tail.some((l) => /Could not open .*(does not support O_DIRECT|Invalid argument)/.test(l))
    );
  }

  get pidFile(): string {
    return `${this.spec.names.remoteSocket.replace(/\.sock$/, '')}.pid`;
  }

  /** Folders, a fresh target image (unless reused), no stale socket. Runs with the guest running. */
  async prepare(b: Bounds & { reuse: boolean }): Promise<void> {
    const { shell, cfg, names, destPath, format, sizeBytes } = this.spec;
    await mustRunRemote(shell, ['mkdir', '-p', '-m', '0700', cfg.remoteRunDir], b);
    await mustRunRemote(shell, ['rm', '-f', names.remoteSocket, this.pidFile], b);
    const t = await runRemote(shell, ['test', '-e', destPath], b);
    if (t.code !== 0 && t.code !== 1)
      throw new DeviceOpError(`destination unreachable: ${describeRun(t.run, b.timeoutMs)}`);
    if (t.code === 0 && !b.reuse) {
      throw new DeviceOpError(`${shell.host}:${destPath} appeared since the test phase; not overwriting it`);
    }
    if (t.code === 0) return;
    await mustRunRemote(shell, ['mkdir', '-p', parentDir(destPath)], b);
    this.createdImage = true;
    await mustRunRemote(shell, [cfg.qemuImg, 'create', '-q', '-f', format, destPath, String(sizeBytes)], b);
  }

  /** Starts the forward and qemu-nbd in one process; readiness is the source's first connection. */
  async start(log: Logger, killGraceMs: number): Promise<void> {
    const { shell, cfg, names, lifetimeMs } = this.spec;
    await mkdir(cfg.runDir, { recursive: true, mode: 0o700 });
    await chmod(cfg.runDir, 0o700);
    await rm(names.localSocket, { force: true });
    const cmd = exportCommand(this.spec, this.pidFile);
    const { path, args } = remoteArgv(shell, cmd.words, cmd.rshExtra);
    const ac = new AbortController();
    this.tunnelStop = ac;
    this.tunnelEnd = undefined;
    const p = runTool(path, args, {
      timeoutMs: lifetimeMs + 5000,
      killGraceMs,
      signal: ac.signal,
      log,
      argOk: (a) => a === shell.host || remoteWordOk(a),
    });
    p.then(
      (r) => (this.tunnelEnd = r),
      () => undefined,
    );
    this.tunnel = p;
  }

  /** Still running? (false before start and after its end) */
  get running(): boolean {
    return this.tunnel !== undefined && this.tunnelEnd === undefined;
  }

  /** How the export ended, once it has. */
  get ended(): ToolRunResult | undefined {
    return this.tunnelEnd;
  }

  /** Remembers qemu-nbd's pid (for recover) and removes the pid file; best effort. */
  async notePid(b: Bounds): Promise<void> {
    const r = await runRemote(this.spec.shell, ['cat', this.pidFile], b).catch(() => undefined);
    const line = r?.stdout[0]?.trim() ?? '';
    if (r?.code === 0 && /^[1-9][0-9]{0,9}$/.test(line)) this.remotePid = Number(line);
    else b.log.warn(`could not read qemu-nbd's pid on the destination (${this.pidFile})`);
    await runRemote(this.spec.shell, ['rm', '-f', this.pidFile], b).catch(() => undefined);
  }

  /** Waits for the export to stop by itself (the source disconnected); status 0 = clean end. */
  async awaitStopped(b: Bounds): Promise<void> {
    const p = this.tunnel;
    if (p === undefined) throw new DeviceOpError('the destination export was never started');
    const r = await new Promise<ToolRunResult>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new DeviceOpError(`the destination export did not stop within ${b.timeoutMs} ms`)),
        b.timeoutMs,
      );
      const onAbort = (): void => reject(new DeviceOpError('aborted while waiting for the export to stop'));
      if (b.signal?.aborted === true) onAbort();
      b.signal?.addEventListener('abort', onAbort, { once: true });
      p.then(resolve, reject).finally(() => {
        clearTimeout(timer);
        b.signal?.removeEventListener('abort', onAbort);
      });
    });
    if (r.code !== 0) {
      throw new DeviceOpError(`the destination export ended badly: ${describeRun(r, this.spec.lifetimeMs)}`);
    }
    this.remotePid = undefined;
    await rm(this.spec.names.localSocket, { force: true }).catch(() => undefined);
  }

  /** Stops whatever still runs, on both hosts, and removes the sockets. Idempotent. */
  async stop(b: Bounds): Promise<void> {
    if (this.running) {
      this.tunnelStop?.abort(new Error('stop'));
      await this.tunnel?.catch(() => undefined);
    }
    const clean = this.tunnelEnd?.code === 0;
    if (!clean && this.tunnel !== undefined) {
      // ssh does not signal the remote command when its connection closes (no tty): qemu-nbd
      // would wait for a client forever (well, until its `timeout`).
      // Its pid file may not be written yet if we stop right after the start.
      for (let i = 0; i < 5 && this.remotePid === undefined; i += 1) {
        if (i > 0) await new Promise((r) => setTimeout(r, 200));
        await this.notePid(b);
      }
      if (this.remotePid !== undefined) {
        await runRemote(this.spec.shell, ['kill', '-TERM', String(this.remotePid)], b).catch(() => undefined);
      }
    }
    this.remotePid = undefined;
    await runRemote(this.spec.shell, ['rm', '-f', this.spec.names.remoteSocket, this.pidFile], b).catch(
      () => undefined,
    );
    await rm(this.spec.names.localSocket, { force: true }).catch(() => undefined);
  }

  /** Removes the target image if we created it. */
  async removeImage(b: Bounds): Promise<void> {
    if (!this.createdImage) return;
    await mustRunRemote(this.spec.shell, ['rm', '-f', this.spec.destPath], b);
    this.createdImage = false;
  }
}
