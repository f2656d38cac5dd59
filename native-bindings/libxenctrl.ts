// koffi declarations of the libxenctrl calls DomainControl needs: types, symbols and the load-time
// check of which symbols this Xen has. No policy here; src/domains/ decides what to call and when.
// The layout is the same in Xen 4.17-4.22 (xen-releases.ts records it per release, checked with
// gcc); which library file to load is library-selection.ts's answer for the running hypervisor.
import koffi from 'koffi';
import type { LibraryHandle, TypeObject } from 'koffi';
import { LIBXENCTRL_ENV, selectHostXenLibrary } from './library-selection.js';
import { SUPPORTED_XEN_VERSIONS, type XenRelease } from './xen-releases.js';

export { LIBXENCTRL_ENV };

/** koffi's TypeSpec and KoffiFunction are not exported; these name the same things. */
export type TypeSpec = string | TypeObject | ReturnType<typeof koffi.out>;
export type NativeFunction = ReturnType<LibraryHandle['func']>;

/** XEN_DOMINF_* bits of xen_domctl_getdomaininfo.flags (xen/domctl.h, unchanged 4.x). */
export const XEN_DOMINF = {
  dying: 1 << 0,
  hvmGuest: 1 << 1,
  shutdown: 1 << 2,
  paused: 1 << 3,
  blocked: 1 << 4,
  running: 1 << 5,
  debugged: 1 << 6,
  xsDomain: 1 << 7,
  hap: 1 << 8,
  shutdownShift: 16,
  shutdownMask: 0xff,
} as const;

/** SHUTDOWN_* codes of xen/include/public/sched.h. */
export const SHUTDOWN_CODE = {
  poweroff: 0,
  reboot: 1,
  suspend: 2,
  crash: 3,
  watchdog: 4,
  soft_reset: 5,
} as const;

/** HVM_PARAM_* indexes of xen/include/public/hvm/params.h that libxl reads before a suspend. */
export const HVM_PARAM = { callbackIrq: 0, acpiSState: 14 } as const;

/** The library file could not be opened. */
export class NativeLibraryError extends Error {
  override readonly name = 'NativeLibraryError';
  constructor(
    readonly library: string,
    readonly path: string,
    readonly reason: string,
  ) {
    super(`cannot load ${library} from ${path}: ${reason}`);
  }
}

/** The library loaded but lacks a symbol we cannot do without. */
export class NativeSymbolError extends Error {
  override readonly name = 'NativeSymbolError';
  constructor(
    readonly library: string,
    readonly path: string,
    readonly symbol: string,
  ) {
    super(
      `${library} (${path}) has no symbol ${symbol}: not a supported Xen library (supported: Xen ${SUPPORTED_XEN_VERSIONS.join(', ')})`,
    );
  }
}

/** Our xc_domaininfo_t declaration differs from the layout recorded for the running release. */
export class NativeLayoutError extends Error {
  override readonly name = 'NativeLayoutError';
  constructor(
    readonly version: string,
    readonly problems: readonly string[],
  ) {
    super(`xc_domaininfo_t does not match the layout recorded for Xen ${version}: ${problems.join('; ')}`);
  }
}

/** Number -> name of the host's errno values (koffi ships the table). */
const ERRNO_NAMES = new Map<number, string>(Object.entries(koffi.os.errno).map(([name, n]) => [n, name]));

export function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `errno ${n}`;
}

/** Result of an FFI call: the C return value and errno as the calling thread saw it. */
export interface NativeResult {
  ret: number;
  errno: number;
}

interface AsyncFn {
  async: (...args: unknown[]) => void;
}

/**
 * Runs a koffi function on the worker pool. koffi (>= 2.x) restores the worker's errno around
 * the completion callback, so errno is read there, synchronously, before anything else runs.
 */
export function callAsync(fn: AsyncFn, ...args: unknown[]): Promise<NativeResult> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, ret: unknown) => {
      const errno = koffi.errno();
      if (err !== null && err !== undefined) {
        reject(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      resolve({ ret: Number(ret), errno });
    });
  });
}

export const XcInterfacePtr = koffi.pointer('xc_interface_ptr', koffi.opaque('xc_interface'));

const ArchDomainConfig = koffi.struct('xen_arch_domainconfig_x86', {
  emulation_flags: 'uint32_t',
  misc_flags: 'uint32_t',
});

/** xc_domaininfo_t == struct xen_domctl_getdomaininfo: one layout in 4.17-4.22 (xen-releases.ts). */
export const XcDomainInfo = koffi.struct('xc_domaininfo_t', {
  domain: 'uint16_t',
  pad1: 'uint16_t',
  flags: 'uint32_t',
  tot_pages: 'uint64_t',
  max_pages: 'uint64_t',
  outstanding_pages: 'uint64_t',
  shr_pages: 'uint64_t',
  paged_pages: 'uint64_t',
  shared_info_frame: 'uint64_t',
  cpu_time: 'uint64_t',
  nr_online_vcpus: 'uint32_t',
  max_vcpu_id: 'uint32_t',
  ssidref: 'uint32_t',
  handle: koffi.array('uint8_t', 16),
  cpupool: 'uint32_t',
  gpaddr_bits: 'uint8_t',
  pad2: koffi.array('uint8_t', 7),
  arch_config: ArchDomainConfig,
});

/** sizeof(xc_domaininfo_t) measured with gcc against the 4.17-4.22 headers. */
export const XC_DOMAININFO_SIZE = 112;
if (koffi.sizeof(XcDomainInfo) !== XC_DOMAININFO_SIZE) {
  throw new Error(
    `xc_domaininfo_t is ${koffi.sizeof(XcDomainInfo)} bytes here, expected ${XC_DOMAININFO_SIZE}`,
  );
}

/** The fields of xc_domaininfo_t we use, as decoded by koffi. */
export interface XcDomainInfoRecord {
  domain: number;
  flags: number;
  tot_pages: number | bigint;
  max_pages: number | bigint;
  cpu_time: number | bigint;
  nr_online_vcpus: number;
  handle: number[];
}

export function decodeDomainInfo(buf: Buffer, index: number): XcDomainInfoRecord {
  return koffi.decode(buf, index * XC_DOMAININFO_SIZE, XcDomainInfo) as XcDomainInfoRecord;
}

/** An opaque xc_interface* (null when open failed). */
export type XcHandle = unknown;

export interface LibxenctrlBinding {
  readonly path: string;
  /** Optional symbols, by name: which of them this library has. */
  readonly has: { xc_domain_getinfo: boolean; xc_hvm_param_get: boolean; xc_domain_destroy: boolean };
  /** xc_interface *xc_interface_open(xentoollog_logger *, xentoollog_logger *, unsigned open_flags) */
  interfaceOpen(): { handle: XcHandle; errno: number };
  /** int xc_interface_close(xc_interface *) */
  interfaceClose(xch: XcHandle): Promise<NativeResult>;
  /** int xc_domain_getinfolist(xc_interface *, uint32_t first_domain, unsigned max, xc_domaininfo_t *) */
  getinfolist(xch: XcHandle, firstDomain: number, max: number, out: Buffer): Promise<NativeResult>;
  /** int xc_domain_pause(xc_interface *, uint32_t domid) */
  pause(xch: XcHandle, domid: number): Promise<NativeResult>;
  /** int xc_domain_unpause(xc_interface *, uint32_t domid) */
  unpause(xch: XcHandle, domid: number): Promise<NativeResult>;
  /** int xc_domain_shutdown(xc_interface *, uint32_t domid, int reason) */
  shutdown(xch: XcHandle, domid: number, reason: number): Promise<NativeResult>;
  /** int xc_domain_destroy(xc_interface *, uint32_t domid); undefined when absent. */
  destroy?: (xch: XcHandle, domid: number) => Promise<NativeResult>;
  /** int xc_hvm_param_get(xc_interface *, uint32_t dom, uint32_t param, uint64_t *value); undefined when absent. */
  hvmParamGet?: (xch: XcHandle, domid: number, param: number) => Promise<NativeResult & { value: bigint }>;
}

/** The differences between XcDomainInfo (as koffi lays it out) and a release's recorded layout. */
export function domainInfoLayoutProblems(release: Pick<XenRelease, 'domainInfo'>): string[] {
  const problems: string[] = [];
  const size = koffi.sizeof(XcDomainInfo);
  if (size !== release.domainInfo.size) problems.push(`size ${size}, recorded ${release.domainInfo.size}`);
  for (const [field, recorded] of Object.entries(release.domainInfo.offsets)) {
    const ours = koffi.offsetof(XcDomainInfo, field);
    if (ours !== recorded) problems.push(`${field} at ${ours}, recorded ${recorded}`);
  }
  return problems;
}

/** Throws NativeLayoutError when our declaration does not match the release's recorded layout. */
export function checkDomainInfoLayout(release: XenRelease): void {
  const problems = domainInfoLayoutProblems(release);
  if (problems.length > 0) throw new NativeLayoutError(release.version, problems);
}

export interface LoadOptions {
  /** Path or soname; default: $DEVMIGRATE_LIBXENCTRL, else the running hypervisor's release's. */
  path?: string;
  /** The running release (checked against our layout); default: what the selection read. */
  release?: XenRelease | undefined;
  /** Where a hypervisor-derived path was looked for (named in the error when it does not load). */
  searched?: readonly string[];
}

/** The library this process would load: option, else $DEVMIGRATE_LIBXENCTRL, else the running Xen's. */
export function resolveLibxenctrlPath(opts: LoadOptions = {}): string {
  return opts.path ?? selectHostXenLibrary('libxenctrl').pick.path;
}

/**
 * Opens the library and declares the calls. Throws UnsupportedXenError / XenVersionUnknownError
 * (selection), NativeLayoutError, NativeLibraryError, NativeSymbolError.
 */
export function loadLibxenctrl(opts: LoadOptions = {}): LibxenctrlBinding {
  let { path, release, searched } = opts;
  if (path === undefined) {
    const choice = selectHostXenLibrary('libxenctrl');
    path = choice.pick.path;
    release = choice.release;
    searched = choice.pick.searched;
  }
  if (release !== undefined) checkDomainInfoLayout(release);
  let lib: LibraryHandle;
  try {
    lib = koffi.load(path);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    const where = searched && searched.length > 0 ? ` (looked for ${searched.join(', ')})` : '';
    throw new NativeLibraryError('libxenctrl', path, `${why}${where}`);
  }
  const required = (name: string, result: TypeSpec, args: TypeSpec[]): NativeFunction => {
    try {
      return lib.func(name, result, args);
    } catch {
      throw new NativeSymbolError('libxenctrl', path, name);
    }
  };
  const optional = (name: string, result: TypeSpec, args: TypeSpec[]): NativeFunction | undefined => {
    try {
      return lib.func(name, result, args);
    } catch {
      return undefined;
    }
  };

  const open = required('xc_interface_open', XcInterfacePtr, ['void *', 'void *', 'unsigned int']);
  const close = required('xc_interface_close', 'int', [XcInterfacePtr]);
  const getinfolist = required('xc_domain_getinfolist', 'int', [
    XcInterfacePtr,
    'uint32_t',
    'unsigned int',
    'void *',
  ]);
  const pause = required('xc_domain_pause', 'int', [XcInterfacePtr, 'uint32_t']);
  const unpause = required('xc_domain_unpause', 'int', [XcInterfacePtr, 'uint32_t']);
  const shutdown = required('xc_domain_shutdown', 'int', [XcInterfacePtr, 'uint32_t', 'int']);
  const destroy = optional('xc_domain_destroy', 'int', [XcInterfacePtr, 'uint32_t']);
  const hvmParamGet = optional('xc_hvm_param_get', 'int', [
    XcInterfacePtr,
    'uint32_t',
    'uint32_t',
    koffi.out(koffi.pointer('uint64_t')),
  ]);
  // Only probed: 4.18 removed it; we use xc_domain_getinfolist, present in 4.17-4.22.
  const getinfo = optional('xc_domain_getinfo', 'int', ['void *', 'uint32_t', 'unsigned int', 'void *']);

  return {
    path,
    has: {
      xc_domain_getinfo: getinfo !== undefined,
      xc_hvm_param_get: hvmParamGet !== undefined,
      xc_domain_destroy: destroy !== undefined,
    },
    interfaceOpen() {
      const handle: unknown = open(null, null, 0);
      return { handle, errno: handle === null ? koffi.errno() : 0 };
    },
    interfaceClose: (xch) => callAsync(close, xch),
    getinfolist: (xch, first, max, out) => callAsync(getinfolist, xch, first, max, out),
    pause: (xch, domid) => callAsync(pause, xch, domid),
    unpause: (xch, domid) => callAsync(unpause, xch, domid),
    shutdown: (xch, domid, reason) => callAsync(shutdown, xch, domid, reason),
    ...(destroy !== undefined
      ? { destroy: (xch: XcHandle, domid: number) => callAsync(destroy, xch, domid) }
      : {}),
    ...(hvmParamGet !== undefined
      ? {
          hvmParamGet: async (xch: XcHandle, domid: number, param: number) => {
            const value: [bigint | number] = [0];
            const r = await callAsync(hvmParamGet, xch, domid, param, value);
            return { ...r, value: BigInt(value[0]) };
          },
        }
      : {}),
  };
}
