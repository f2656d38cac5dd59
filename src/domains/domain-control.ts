// DomainControl over the hypervisor (libxenctrl/libxenguest through koffi) and XenStore: libxl's
// suspend handshake and resume, step by step, with every wait bounded and every failure typed.
// The suspend event-channel path of libxl is deliberately absent (see docs/domains.md).
import { SHUTDOWN_CODE } from '../../native-bindings/libxenctrl.js';
import type { XenLibraryChoice } from '../../native-bindings/library-selection.js';
import type { WatchEvent, XenStore, Watch } from '../xenstore/types.js';
import { DomainError, SuspendCancelledError, type CancelledEnd } from './errors.js';
import { openXcHypervisor } from './hypervisor.js';
import type { Hypervisor, XcHypervisorOptions } from './hypervisor.js';
import { ReleaseWatch, coalesced } from './release-watch.js';
import {
  LIBXL_ACK_TIMEOUT_MS,
  LIBXL_SUSPEND_TIMEOUT_MS,
  afterAckTimeout,
  checkSuspendable,
  chooseSuspendMethod,
  isSuspendAcked,
  judgeSuspendWait,
  parseFeatureSuspend,
  planResume,
  validateDomid,
} from './suspend.js';
import type { DomainControl, DomainEvent, DomainInfo, ResumeOptions, SuspendOptions } from './types.js';

export type DomainLogLevel = 'debug' | 'info' | 'warn' | 'error';
/** Structured fields of a domain-control log line (the agent passes them to winston as metadata). */
export interface DomainLogMeta {
  domid?: number;
}
export type DomainLog = (level: DomainLogLevel, msg: string, meta?: DomainLogMeta) => void;

/** Default grace after an aborted suspend, to see whether the guest suspended anyway. */
export const SUSPEND_CANCEL_GRACE_MS = 2000;

export interface DomainControlOptions extends XcHypervisorOptions {
  xenstore: XenStore;
  /** Use this hypervisor instead of loading the libraries (it is then not closed by close()). */
  hypervisor?: Hypervisor;
  /** Default ack wait (libxl: 60 s). */
  ackTimeoutMs?: number;
  /** Default wait for shutdown(suspend) after the ack (libxl: 60 s). */
  suspendTimeoutMs?: number;
  /**
   * When an HVM guest left control/feature-suspend unset ("") and did not ack, suspend it through
   * the hypervisor instead of failing (xenstore-paths: "try an alternative"). Default true.
   */
  hvmFallback?: boolean;
  /** Safety re-check of the domain state while waiting, besides @releaseDomain. Default 1000 ms; 0 = off. */
  recheckIntervalMs?: number;
  /** Default grace after an aborted suspend (SuspendOptions.cancelGraceMs). Default 2000 ms. */
  cancelGraceMs?: number;
  /** Log sink; lines about one domain carry `{ domid }` as metadata (and name it in the text). */
  log?: DomainLog;
}

/** Opens the libraries (unless a hypervisor is given) and returns a DomainControl. */
export function createDomainControl(opts: DomainControlOptions): XenDomainControl {
  const ownsHypervisor = opts.hypervisor === undefined;
  const hv = opts.hypervisor ?? openXcHypervisor(opts);
  return new XenDomainControl(hv, ownsHypervisor, opts);
}

type AckOutcome = 'acked' | 'suspended' | 'timeout' | 'aborted';

/** Internal: a wait ended by the caller's signal (turned into SuspendCancelledError after the grace). */
class WaitAborted extends Error {
  override readonly name = 'WaitAborted';
}

/** What an abort needs: the caller's signal and the grace it allows. */
interface Cancel {
  signal: AbortSignal;
  graceMs: number;
}

function reasonText(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  if (r instanceof Error) return r.message;
  return r === undefined ? 'aborted' : String(r);
}

/** A failure during a domain step as a DomainError: kept as is, or a 'xenstore' one naming the step. */
function asDomainError(err: unknown, domid: number, step: string): DomainError {
  if (err instanceof DomainError) return err;
  return new DomainError(
    'xenstore',
    domid,
    step,
    err instanceof Error ? err.message : String(err),
    undefined,
    { cause: err },
  );
}

export class XenDomainControl implements DomainControl {
  private readonly xs: XenStore;
  private readonly release: ReleaseWatch;
  private readonly ackTimeoutMs: number;
  private readonly suspendTimeoutMs: number;
  private readonly hvmFallback: boolean;
  private readonly recheckMs: number;
  private readonly cancelGraceMs: number;
  private readonly log: DomainLog;
  private readonly suspending = new Set<number>();
  /** Cancels every pending wait (close()). */
  private readonly aborts = new Set<(err: Error) => void>();
  private readonly eventListeners = new Set<(ev: DomainEvent) => void>();
  private snapshot: Map<number, DomainInfo> | undefined;
  private stopEvents: (() => void) | undefined;
  private closed = false;

  /** Which Xen and which library files were loaded (undefined for an injected hypervisor). */
  get libraries(): XenLibraryChoice | undefined {
    return this.hv.libraries;
  }

  constructor(
    private readonly hv: Hypervisor,
    private readonly ownsHypervisor: boolean,
    opts: DomainControlOptions,
  ) {
    this.xs = opts.xenstore;
    this.release = new ReleaseWatch(this.xs);
    this.ackTimeoutMs = opts.ackTimeoutMs ?? LIBXL_ACK_TIMEOUT_MS;
    this.suspendTimeoutMs = opts.suspendTimeoutMs ?? LIBXL_SUSPEND_TIMEOUT_MS;
    this.hvmFallback = opts.hvmFallback ?? true;
    this.recheckMs = opts.recheckIntervalMs ?? 1000;
    this.cancelGraceMs = opts.cancelGraceMs ?? SUSPEND_CANCEL_GRACE_MS;
    this.log = opts.log ?? (() => undefined);
  }

  private alive(domid: number, step: string): void {
    if (this.closed) throw new DomainError('closed', domid, step, 'DomainControl is closed');
  }

  info(domid: number): Promise<DomainInfo | undefined> {
    this.alive(domid, 'info');
    return this.hv.info(domid);
  }

  list(): Promise<DomainInfo[]> {
    this.alive(0, 'list');
    return this.hv.list();
  }

  async pause(domid: number): Promise<void> {
    validateDomid(domid, 'pause');
    this.alive(domid, 'pause');
    await this.hv.pause(domid);
  }

  async unpause(domid: number): Promise<void> {
    validateDomid(domid, 'unpause');
    this.alive(domid, 'unpause');
    await this.hv.unpause(domid);
  }

  async suspend(domid: number, opts: SuspendOptions = {}): Promise<void> {
    validateDomid(domid, 'suspend');
    this.alive(domid, 'suspend');
    if (this.suspending.has(domid))
      throw new DomainError('busy', domid, 'suspend', 'a suspend is already in progress');
    this.suspending.add(domid);
    const cancel: Cancel | undefined =
      opts.signal === undefined
        ? undefined
        : { signal: opts.signal, graceMs: opts.cancelGraceMs ?? this.cancelGraceMs };
    try {
      await this.suspendSteps(
        domid,
        opts.ackTimeoutMs ?? this.ackTimeoutMs,
        opts.suspendTimeoutMs ?? this.suspendTimeoutMs,
        cancel,
      );
    } finally {
      this.suspending.delete(domid);
    }
  }

  private async suspendSteps(
    domid: number,
    ackTimeoutMs: number,
    suspendTimeoutMs: number,
    cancel: Cancel | undefined,
  ): Promise<void> {
    // Before anything is asked, an abort changes nothing: no grace needed.
    const notYet = (step: string): void => {
      if (cancel?.signal.aborted === true) {
        throw new SuspendCancelledError(
          domid,
          step,
          'running',
          false,
          `suspend cancelled (${reasonText(cancel.signal)}) before anything was asked; domain running`,
        );
      }
    };
    notYet('check');
    const info = checkSuspendable(domid, await this.hv.info(domid));
    const hvmParams = info.hvm ? await this.readHvmParams(domid) : undefined;
    const method = chooseSuspendMethod(info.hvm, hvmParams);
    // The release watch must exist before anything is asked, so that no shutdown event is missed.
    await this.xsStep(domid, 'watch @releaseDomain', () => this.release.ensure());

    if (method === 'hypervisor') {
      notYet('xc_domain_shutdown');
      this.log('debug', `domain ${domid}: HVM without PV drivers: xc_domain_shutdown(SHUTDOWN_suspend)`, {
        domid,
      });
      // One hypercall: nothing to cancel once made; an abort after it still reports the outcome.
      await this.hv.shutdown(domid, SHUTDOWN_CODE.suspend);
      await this.waitSuspendedOrCancel(domid, suspendTimeoutMs, 'wait-suspended', cancel);
      return;
    }

    const control = `/local/domain/${domid}/control`;
    const shutdownPath = `${control}/shutdown`;
    // Guest-writable: only "0" / "1" / anything-else matter, and only for the handshake.
    const feature = parseFeatureSuspend(
      await this.xsStep(domid, 'read feature-suspend', () => this.xs.tryRead(`${control}/feature-suspend`)),
    );
    notYet('feature-suspend');
    if (feature === 'no') {
      throw new DomainError(
        'guest-refuses',
        domid,
        'feature-suspend',
        'guest says control/feature-suspend = 0',
      );
    }

    this.log('debug', `domain ${domid}: writing suspend to ${shutdownPath}`, { domid });
    await this.xsStep(domid, 'request', () => this.xs.write(shutdownPath, 'suspend'));
    const ack = await this.waitAck(domid, shutdownPath, ackTimeoutMs, cancel?.signal);
    if (ack === 'suspended') return;
    if (ack === 'timeout' || ack === 'aborted') {
      // Re-read and clear in one transaction: a last-minute ack must not be overwritten.
      const outcome = await this.xsStep(domid, 'cancel', () =>
        this.xs.transaction(async (tx) => {
          const v = await tx.tryRead(shutdownPath);
          if (isSuspendAcked(v)) return 'late-ack' as const;
          await tx.write(shutdownPath, '');
          return 'cancelled' as const;
        }),
      );
      if (ack === 'aborted' && cancel !== undefined) {
        const note =
          outcome === 'cancelled' ? 'request withdrawn before any ack' : 'the guest had already acked';
        this.log('warn', `domain ${domid}: suspend aborted while waiting for the ack: ${note}`, { domid });
        throw await this.cancelAfterGrace(domid, 'ack', cancel, note, outcome === 'late-ack');
      }
      if (outcome === 'cancelled') {
        if (afterAckTimeout(feature, info.hvm, this.hvmFallback) === 'hypervisor') {
          notYet('xc_domain_shutdown');
          this.log(
            'warn',
            `domain ${domid}: no ack, feature-suspend unset: falling back to xc_domain_shutdown`,
            { domid },
          );
          await this.hv.shutdown(domid, SHUTDOWN_CODE.suspend);
          await this.waitSuspendedOrCancel(domid, suspendTimeoutMs, 'wait-suspended', cancel);
          return;
        }
        this.log('error', `domain ${domid}: guest didn't acknowledge suspend, request cancelled`, { domid });
        throw new DomainError(
          'ack-timeout',
          domid,
          'ack',
          `guest did not acknowledge suspend within ${ackTimeoutMs} ms; request cancelled`,
        );
      }
      this.log('debug', `domain ${domid}: last-minute ack`, { domid });
    }
    await this.waitSuspendedOrCancel(domid, suspendTimeoutMs, 'wait-suspended', cancel);
  }

  /** waitSuspended, where an abort of the caller's signal ends in the grace and 'cancelled'. */
  private async waitSuspendedOrCancel(
    domid: number,
    timeoutMs: number,
    step: string,
    cancel: Cancel | undefined,
  ): Promise<void> {
    try {
      await this.waitSuspended(domid, timeoutMs, step, cancel?.signal);
    } catch (err) {
      if (!(err instanceof WaitAborted) || cancel === undefined) throw err;
      this.log('warn', `domain ${domid}: suspend aborted while waiting for shutdown(suspend)`, { domid });
      throw await this.cancelAfterGrace(domid, step, cancel, 'the suspend had been accepted', true);
    }
  }

  /**
   * After an abort: waits at most the grace for the domain to be seen suspended (a guest that acked
   * before the request was withdrawn carries on), then builds the 'cancelled' error saying how the
   * domain ended. Failures other than "not suspended in time", "gone" or another shutdown propagate.
   */
  private async cancelAfterGrace(
    domid: number,
    step: string,
    cancel: Cancel,
    note: string,
    acked: boolean,
  ): Promise<SuspendCancelledError> {
    let end: CancelledEnd;
    try {
      await this.waitSuspended(domid, cancel.graceMs, `${step} (cancel grace)`);
      end = 'suspended';
    } catch (err) {
      if (!(err instanceof DomainError)) throw err;
      if (err.code === 'suspend-timeout') end = 'running';
      else if (err.code === 'gone') end = 'gone';
      else if (err.code === 'unexpected-shutdown') end = 'shutdown';
      else throw err;
    }
    const how: Record<CancelledEnd, string> = {
      suspended: 'the domain ended suspended (resume it)',
      running: `the domain was not suspended within the ${cancel.graceMs} ms grace`,
      gone: 'the domain is gone',
      shutdown: 'the domain shut down for another reason',
    };
    this.log(end === 'suspended' ? 'warn' : 'info', `domain ${domid}: suspend cancelled: ${how[end]}`, {
      domid,
    });
    return new SuspendCancelledError(
      domid,
      step,
      end,
      acked,
      `suspend cancelled (${reasonText(cancel.signal)}); ${note}; ${how[end]}`,
    );
  }

  /**
   * libxl ignores a failed xc_hvm_param_get and then treats the guest as having no PV drivers;
   * we treat the answer as unknown instead and ask the guest first (the fallback still applies).
   */
  private async readHvmParams(
    domid: number,
  ): Promise<{ callbackIrq: bigint; acpiSState: bigint } | undefined> {
    try {
      return await this.hv.hvmSuspendParams(domid);
    } catch (err) {
      this.log('warn', `domain ${domid}: cannot read HVM params (${String(err)}): asking the guest`, {
        domid,
      });
      return undefined;
    }
  }

  /** Runs a XenStore step, turning its failure into a DomainError naming the step. */
  private async xsStep<T>(domid: number, step: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw asDomainError(err, domid, step);
    }
  }

  /**
   * Waits for the guest's ack on control/shutdown. A death or a shutdown seen on @releaseDomain
   * ends the wait at once (a guest may suspend without writing the ack).
   */
  private waitAck(
    domid: number,
    path: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<AckOutcome> {
    return new Promise<AckOutcome>((resolve, reject) => {
      let done = false;
      let watch: Watch | undefined;
      const cleanups: (() => void)[] = [];
      const finish = (err: Error | undefined, v?: AckOutcome): void => {
        if (done) return;
        done = true;
        for (const c of cleanups) c();
        if (watch !== undefined) void watch.close().catch(() => undefined);
        if (err !== undefined) reject(err);
        else resolve(v ?? 'timeout');
      };
      const fail = (err: unknown): void => finish(asDomainError(err, domid, 'ack'));
      const checkNode = coalesced(async () => {
        if (done) return;
        const v = await this.xs.tryRead(path);
        if (!done && isSuspendAcked(v)) finish(undefined, 'acked');
      }, fail);
      const checkDomain = coalesced(async () => {
        if (done) return;
        const verdict = judgeSuspendWait(await this.hv.info(domid));
        if (done) return;
        if (verdict === 'gone')
          finish(new DomainError('gone', domid, 'ack', 'domain destroyed while waiting for the ack'));
        else if (verdict === 'suspended') finish(undefined, 'suspended');
        else if (verdict === 'unexpected-shutdown') {
          const i = await this.hv.info(domid);
          finish(
            new DomainError(
              'unexpected-shutdown',
              domid,
              'ack',
              `domain shut down (${i?.shutdownReason ?? 'unknown'}) instead of suspending`,
            ),
          );
        }
      }, fail);

      const timer = setTimeout(() => finish(undefined, 'timeout'), timeoutMs);
      cleanups.push(() => clearTimeout(timer));
      cleanups.push(this.release.listen((err) => (err !== undefined ? fail(err) : checkDomain())));
      const abort = (err: Error): void => finish(err);
      this.aborts.add(abort);
      cleanups.push(() => this.aborts.delete(abort));
      if (signal !== undefined) {
        if (signal.aborted) {
          finish(undefined, 'aborted');
          return;
        }
        const onSignal = (): void => finish(undefined, 'aborted');
        signal.addEventListener('abort', onSignal, { once: true });
        cleanups.push(() => signal.removeEventListener('abort', onSignal));
      }

      this.xs.watch(path, { onEvent: (_ev: WatchEvent) => checkNode(), onError: fail }).then((w) => {
        if (done) void w.close().catch(() => undefined);
        else watch = w;
      }, fail);
    });
  }

  /**
   * Waits until the domain is shut down with reason suspend; rejects on timeout, death, other
   * reason, and with WaitAborted when `signal` fires.
   */
  private waitSuspended(domid: number, timeoutMs: number, step: string, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let done = false;
      const cleanups: (() => void)[] = [];
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        for (const c of cleanups) c();
        if (err !== undefined) reject(err);
        else resolve();
      };
      const fail = (err: unknown): void => finish(asDomainError(err, domid, step));
      const check = coalesced(async () => {
        if (done) return;
        const info = await this.hv.info(domid);
        const verdict = judgeSuspendWait(info);
        if (verdict === 'suspended') finish();
        else if (verdict === 'gone')
          finish(new DomainError('gone', domid, step, 'domain destroyed while suspending'));
        else if (verdict === 'unexpected-shutdown') {
          finish(
            new DomainError(
              'unexpected-shutdown',
              domid,
              step,
              `domain shut down (${info?.shutdownReason ?? 'unknown'}) instead of suspending`,
            ),
          );
        }
      }, fail);

      const timer = setTimeout(
        () =>
          finish(
            new DomainError('suspend-timeout', domid, step, `guest did not suspend within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
      cleanups.push(() => clearTimeout(timer));
      if (this.recheckMs > 0) {
        const iv = setInterval(check, this.recheckMs);
        cleanups.push(() => clearInterval(iv));
      }
      const abort = (err: Error): void => finish(err);
      this.aborts.add(abort);
      cleanups.push(() => this.aborts.delete(abort));
      if (signal !== undefined) {
        if (signal.aborted) {
          finish(new WaitAborted(reasonText(signal)));
          return;
        }
        const onSignal = (): void => finish(new WaitAborted(reasonText(signal)));
        signal.addEventListener('abort', onSignal, { once: true });
        cleanups.push(() => signal.removeEventListener('abort', onSignal));
      }
      cleanups.push(this.release.listen((err) => (err !== undefined ? fail(err) : check())));
      this.release.ensure().then(check, fail);
    });
  }

  async waitForSuspended(domid: number, timeoutMs: number): Promise<void> {
    validateDomid(domid, 'wait-for-suspended');
    this.alive(domid, 'wait-for-suspended');
    await this.waitSuspended(domid, timeoutMs, 'wait-for-suspended');
  }

  async resume(domid: number, opts: ResumeOptions = {}): Promise<void> {
    validateDomid(domid, 'resume');
    this.alive(domid, 'resume');
    const plan = planResume(domid, await this.hv.info(domid));
    if (plan === 'nothing') return;
    if (plan === 'resume') {
      const fast = opts.fast ?? true;
      try {
        await this.hv.resume(domid, fast);
      } catch (err) {
        if (!fast) throw err;
        this.log('warn', `domain ${domid}: fast resume failed (${String(err)}), trying slow resume`, {
          domid,
        });
        await this.hv.resume(domid, false);
      }
      // XS_RESUME clears xenstored's "shut down" mark, so the next shutdown fires @releaseDomain again.
      await this.xsStep(domid, 'xs-resume', () => this.xs.resume(domid));
    }
    const after = await this.hv.info(domid);
    if (after === undefined)
      throw new DomainError('gone', domid, 'resume', 'domain disappeared during resume');
    if (after.paused) await this.hv.unpause(domid);
  }

  onEvent(cb: (ev: DomainEvent) => void): () => void {
    this.alive(0, 'on-event');
    this.eventListeners.add(cb);
    if (this.stopEvents === undefined) this.startEvents();
    return () => {
      this.eventListeners.delete(cb);
    };
  }

  private startEvents(): void {
    const scan = coalesced(
      async () => {
        const doms = await this.hv.list();
        const next = new Map(doms.map((d) => [d.domid, d]));
        const prev = this.snapshot;
        this.snapshot = next;
        if (prev === undefined) return; // the baseline is silent
        for (const [domid, before] of prev) {
          const now = next.get(domid);
          if (now === undefined || now.dying) {
            if (!before.dying) this.emit({ kind: 'gone', domid });
          } else if (now.shutdown && !before.shutdown) {
            const reason = now.shutdownReason ?? 'unknown';
            this.emit(
              reason === 'suspend' ? { kind: 'suspended', domid } : { kind: 'shutdown', domid, reason },
            );
          }
        }
        for (const [domid, now] of next) {
          if (prev.has(domid)) continue;
          if (now.dying) this.emit({ kind: 'gone', domid });
          else if (now.shutdown) {
            const reason = now.shutdownReason ?? 'unknown';
            this.emit(
              reason === 'suspend' ? { kind: 'suspended', domid } : { kind: 'shutdown', domid, reason },
            );
          }
        }
      },
      (err) => this.log('error', `domain event scan failed: ${String(err)}`),
    );
    this.stopEvents = this.release.listen((err) => {
      if (err !== undefined) this.log('error', `@releaseDomain watch lost: ${err.message}`);
      else scan();
    });
    this.release
      .ensure()
      .then(scan, (err: unknown) => this.log('error', `cannot watch @releaseDomain: ${String(err)}`));
  }

  private emit(ev: DomainEvent): void {
    for (const cb of [...this.eventListeners]) {
      try {
        cb(ev);
      } catch (err) {
        this.log('error', `domain event listener threw: ${String(err)}`);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const abort of [...this.aborts])
      abort(new DomainError('closed', 0, 'close', 'DomainControl closed'));
    this.stopEvents?.();
    this.eventListeners.clear();
    await this.release.close();
    if (this.ownsHypervisor) await this.hv.close();
  }
}
