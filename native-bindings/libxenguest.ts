// koffi declaration of xc_domain_resume, which lives in libxenguest (not libxenctrl) in 4.17.
// It takes the xc_interface* opened through libxenctrl.ts; types and symbols only.
import koffi from 'koffi';
import type { LibraryHandle } from 'koffi';
import { NativeLibraryError, NativeSymbolError, XcInterfacePtr, callAsync } from './libxenctrl.js';
import type { NativeFunction, NativeResult, XcHandle } from './libxenctrl.js';

export const DEFAULT_LIBXENGUEST = 'libxenguest.so.4.17';
export const LIBXENGUEST_ENV = 'DEVMIGRATE_LIBXENGUEST';

export interface LibxenguestBinding {
  readonly path: string;
  /**
   * int xc_domain_resume(xc_interface *, uint32_t domid, int fast). Runs on the worker pool:
   * the slow variant resets the guest's PV state and may take a while.
   */
  resume(xch: XcHandle, domid: number, fast: boolean): Promise<NativeResult>;
}

export function resolveLibxenguestPath(opts: { path?: string } = {}): string {
  return opts.path ?? process.env[LIBXENGUEST_ENV] ?? DEFAULT_LIBXENGUEST;
}

export function loadLibxenguest(opts: { path?: string } = {}): LibxenguestBinding {
  const path = resolveLibxenguestPath(opts);
  let lib: LibraryHandle;
  try {
    lib = koffi.load(path);
  } catch (err) {
    throw new NativeLibraryError('libxenguest', path, err instanceof Error ? err.message : String(err));
  }
  let resume: NativeFunction;
  try {
    resume = lib.func('xc_domain_resume', 'int', [XcInterfacePtr, 'uint32_t', 'int']);
  } catch {
    throw new NativeSymbolError('libxenguest', path, 'xc_domain_resume');
  }
  return {
    path,
    resume: (xch, domid, fast) => callAsync(resume, xch, domid, fast ? 1 : 0),
  };
}
