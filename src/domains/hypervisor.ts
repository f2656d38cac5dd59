// The hypervisor seen by domain-control.ts: the few libxenctrl/libxenguest calls it makes, with
// errno turned into DomainError. One implementation over the koffi bindings, loading the libraries
// of the running Xen's release (native-bindings/library-selection.ts); tests may add fakes.
import {
  HVM_PARAM,
  XC_DOMAININFO_SIZE,
  XEN_DOMINF,
  decodeDomainInfo,
  errnoName,
  loadLibxenctrl,
} from '../../native-bindings/libxenctrl.js';
import type { LibxenctrlBinding, NativeResult, XcHandle } from '../../native-bindings/libxenctrl.js';
import { loadLibxenguest } from '../../native-bindings/libxenguest.js';
import type { LibxenguestBinding } from '../../native-bindings/libxenguest.js';
import { selectHostXenLibraries } from '../../native-bindings/library-selection.js';
import type { XenLibraryChoice } from '../../native-bindings/library-selection.js';
import { DomainError } from './errors.js';
import { shutdownReasonName } from './suspend.js';
import type { DomainInfo } from './types.js';

export interface Hypervisor {
  /** undefined when the domain does not exist. */
  info(domid: number): Promise<DomainInfo | undefined>;
  list(): Promise<DomainInfo[]>;
  pause(domid: number): Promise<void>;
  unpause(domid: number): Promise<void>;
  /** xc_domain_shutdown(reason), reason a SHUTDOWN_* code. */
  shutdown(domid: number, reason: number): Promise<void>;
  /** xc_domain_resume(fast). */
  resume(domid: number, fast: boolean): Promise<void>;
  /** HVM_PARAM_CALLBACK_IRQ and HVM_PARAM_ACPI_S_STATE; undefined when the library cannot tell. */
  hvmSuspendParams(domid: number): Promise<{ callbackIrq: bigint; acpiSState: bigint } | undefined>;
  /** xc_domain_destroy, when the library has it (tests). */
  destroy?(domid: number): Promise<void>;
  /** Which Xen and which library files (the libxenctrl implementation sets it). */
  readonly libraries?: XenLibraryChoice;
  close(): Promise<void>;
}

export interface XcHypervisorOptions {
  /** libxenctrl path or soname (else $DEVMIGRATE_LIBXENCTRL, else the running Xen's libxenctrl.so.4.<minor>). */
  libxenctrlPath?: string;
  /** libxenguest path or soname (else $DEVMIGRATE_LIBXENGUEST, else the running Xen's libxenguest.so.4.<minor>). */
  libxenguestPath?: string;
  /** Where the running Xen's version is read (default /sys/hypervisor; tests point it elsewhere). */
  sysHypervisor?: string;
}

export function toDomainInfo(flags: number, domid: number): DomainInfo {
  const shutdown = (flags & XEN_DOMINF.shutdown) !== 0;
  const info: DomainInfo = {
    domid,
    paused: (flags & XEN_DOMINF.paused) !== 0,
    shutdown,
    dying: (flags & XEN_DOMINF.dying) !== 0,
    hvm: (flags & XEN_DOMINF.hvmGuest) !== 0,
  };
  if (shutdown)
    info.shutdownReason = shutdownReasonName((flags >>> XEN_DOMINF.shutdownShift) & XEN_DOMINF.shutdownMask);
  return info;
}

/**
 * Chooses the libraries once for both (they must be of one release), loads them and opens one
 * xc_interface. Throws UnsupportedXenError / XenVersionUnknownError (selection), NativeLayoutError,
 * NativeLibraryError, NativeSymbolError, DomainError (xc_interface_open).
 */
export function openXcHypervisor(opts: XcHypervisorOptions = {}): Hypervisor {
  const choice = selectHostXenLibraries({
    libxenctrl: opts.libxenctrlPath,
    libxenguest: opts.libxenguestPath,
    ...(opts.sysHypervisor !== undefined ? { sysHypervisor: opts.sysHypervisor } : {}),
  });
  const xc = loadLibxenctrl({
    path: choice.libxenctrl.path,
    release: choice.release,
    searched: choice.libxenctrl.searched,
  });
  const xg = loadLibxenguest({ path: choice.libxenguest.path, searched: choice.libxenguest.searched });
  const { handle, errno } = xc.interfaceOpen();
  if (handle === null) {
    throw new DomainError('hypercall', 0, 'xc_interface_open', `cannot open ${xc.path}`, errnoName(errno));
  }
  return new XcHypervisor(xc, xg, handle, choice);
}

const LIST_CHUNK = 256;

/** close() waits this long for calls still running on the worker pool before giving up. */
const CLOSE_DRAIN_MS = 5000;

class XcHypervisor implements Hypervisor {
  private closed = false;
  /** Calls running on koffi's worker threads: the handle must outlive them. */
  private inFlight = 0;
  private drained: (() => void) | undefined;

  constructor(
    private readonly xc: LibxenctrlBinding,
    private readonly xg: LibxenguestBinding,
    private readonly xch: XcHandle,
    readonly libraries: XenLibraryChoice,
  ) {
    if (xc.destroy !== undefined) {
      const destroy = xc.destroy;
      this.destroy = async (domid: number) => {
        this.check(domid, 'xc_domain_destroy', await this.track(() => destroy(this.live(domid), domid)));
      };
    }
  }

  destroy?: (domid: number) => Promise<void>;

  private live(domid: number): XcHandle {
    if (this.closed) throw new DomainError('closed', domid, 'xc', 'xc_interface closed');
    return this.xch;
  }

  /** Runs one native call, counting it so close() never frees the handle under a worker. */
  private async track<T>(p: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await p();
    } finally {
      this.inFlight--;
      if (this.inFlight === 0) this.drained?.();
    }
  }

  private check(domid: number, step: string, r: NativeResult): void {
    if (r.ret < 0) throw new DomainError('hypercall', domid, step, 'failed', errnoName(r.errno));
  }

  async info(domid: number): Promise<DomainInfo | undefined> {
    // As xc_domain_getinfo_single does: ask for one entry from domid and check it is that domain.
    const buf = Buffer.alloc(XC_DOMAININFO_SIZE);
    const r = await this.track(() => this.xc.getinfolist(this.live(domid), domid, 1, buf));
    this.check(domid, 'xc_domain_getinfolist', r);
    if (r.ret < 1) return undefined;
    const rec = decodeDomainInfo(buf, 0);
    if (rec.domain !== domid) return undefined;
    return toDomainInfo(rec.flags, rec.domain);
  }

  async list(): Promise<DomainInfo[]> {
    const out: DomainInfo[] = [];
    let first = 0;
    const buf = Buffer.alloc(XC_DOMAININFO_SIZE * LIST_CHUNK);
    for (;;) {
      const r = await this.track(() => this.xc.getinfolist(this.live(first), first, LIST_CHUNK, buf));
      this.check(first, 'xc_domain_getinfolist', r);
      if (r.ret <= 0) break;
      let last = first;
      for (let i = 0; i < r.ret; i++) {
        const rec = decodeDomainInfo(buf, i);
        out.push(toDomainInfo(rec.flags, rec.domain));
        last = rec.domain;
      }
      if (r.ret < LIST_CHUNK) break;
      first = last + 1;
    }
    return out;
  }

  async pause(domid: number): Promise<void> {
    this.check(domid, 'xc_domain_pause', await this.track(() => this.xc.pause(this.live(domid), domid)));
  }

  async unpause(domid: number): Promise<void> {
    this.check(domid, 'xc_domain_unpause', await this.track(() => this.xc.unpause(this.live(domid), domid)));
  }

  async shutdown(domid: number, reason: number): Promise<void> {
    this.check(
      domid,
      'xc_domain_shutdown',
      await this.track(() => this.xc.shutdown(this.live(domid), domid, reason)),
    );
  }

  async resume(domid: number, fast: boolean): Promise<void> {
    this.check(
      domid,
      `xc_domain_resume(fast=${fast ? 1 : 0})`,
      await this.track(() => this.xg.resume(this.live(domid), domid, fast)),
    );
  }

  async hvmSuspendParams(domid: number): Promise<{ callbackIrq: bigint; acpiSState: bigint } | undefined> {
    const get = this.xc.hvmParamGet;
    if (get === undefined) return undefined;
    const irq = await this.track(() => get(this.live(domid), domid, HVM_PARAM.callbackIrq));
    this.check(domid, 'xc_hvm_param_get(CALLBACK_IRQ)', irq);
    const s = await this.track(() => get(this.live(domid), domid, HVM_PARAM.acpiSState));
    this.check(domid, 'xc_hvm_param_get(ACPI_S_STATE)', s);
    return { callbackIrq: irq.value, acpiSState: s.value };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inFlight > 0) {
      const drained = new Promise<boolean>((resolve) => {
        const t = setTimeout(() => resolve(false), CLOSE_DRAIN_MS);
        this.drained = () => {
          clearTimeout(t);
          resolve(true);
        };
      });
      // A call still stuck in the library keeps using the handle: leak it rather than free it.
      if (!(await drained)) return;
    }
    await this.xc.interfaceClose(this.xch);
  }
}
