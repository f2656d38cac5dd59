// koffi declaration of xc_domain_resume, which lives in libxenguest (not libxenctrl), unchanged
// in 4.17-4.22. It takes the xc_interface* opened through libxenctrl.ts; types and symbols only.
import koffi from 'koffi';
import type { LibraryHandle } from 'koffi';
import { NativeLibraryError, NativeSymbolError, XcInterfacePtr, callAsync } from './libxenctrl.js';
import type { NativeFunction, NativeResult, XcHandle } from './libxenctrl.js';
import { LIBXENGUEST_ENV, selectHostXenLibrary } from './library-selection.js';

export { LIBXENGUEST_ENV };

export interface LibxenguestBinding {
  readonly path: string;
  /**
   * int xc_domain_resume(xc_interface *, uint32_t domid, int fast). Runs on the worker pool:
   * the slow variant resets the guest's PV state and may take a while.
   */
  resume(xch: XcHandle, domid: number, fast: boolean): Promise<NativeResult>;
}

export interface LibxenguestLoadOptions {
  /** Path or soname; default: $DEVMIGRATE_LIBXENGUEST, else the running hypervisor's release's. */
  path?: string;
  /** Where a hypervisor-derived path was looked for (named in the error when it does not load). */
  searched?: readonly string[];
}

export function resolveLibxenguestPath(opts: LibxenguestLoadOptions = {}): string {
  return opts.path ?? selectHostXenLibrary('libxenguest').pick.path;
}

export function loadLibxenguest(opts: LibxenguestLoadOptions = {}): LibxenguestBinding {
  let { path, searched } = opts;
  if (path === undefined) {
    const { pick } = selectHostXenLibrary('libxenguest');
    path = pick.path;
    searched = pick.searched;
  }
  let lib: LibraryHandle;
  try {
    lib = koffi.load(path);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    const where = searched && searched.length > 0 ? ` (looked for ${searched.join(', ')})` : '';
    throw new NativeLibraryError('libxenguest', path, `${why}${where}`);
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
