// Which libxenctrl/libxenguest to load: the ones of the RUNNING hypervisor's release (the
// hypervisor refuses a domctl of another interface version with EACCES), found where Debian,
// Fedora, Alpine or a source install put them; an option or DEVMIGRATE_LIBXEN* overrides a file.
// selectXenLibraries() is pure; readHypervisorVersion() is its one piece of I/O (sysfs).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SUPPORTED_XEN_VERSIONS, findRelease, type XenRelease } from './xen-releases.js';

export const LIBXENCTRL_ENV = 'DEVMIGRATE_LIBXENCTRL';
export const LIBXENGUEST_ENV = 'DEVMIGRATE_LIBXENGUEST';

/** Where the distributions install the per-release libraries, searched in this order. */
export const LIBRARY_DIRS: readonly string[] = [
  '/usr/lib/x86_64-linux-gnu', // Debian, Ubuntu
  '/usr/lib64', // Fedora, openSUSE, XCP-ng
  '/usr/lib', // Alpine, Arch
  '/usr/local/lib', // Xen built from source (its default prefix)
];

/** /sys/hypervisor/version/{major,minor,extra}, as Debian's xen-utils-wrapper reads it. */
export interface HypervisorVersion {
  major: number;
  minor: number;
  extra?: string;
}

/** The running Xen (or the machine's architecture) is not one we support. */
export class UnsupportedXenError extends Error {
  override readonly name = 'UnsupportedXenError';
  readonly supported: readonly string[] = SUPPORTED_XEN_VERSIONS;
  constructor(
    /** What was found: "4.16", or "arch arm64". */
    readonly found: string,
  ) {
    super(
      `${found.startsWith('arch ') ? `architecture ${found.slice(5)}` : `Xen ${found}`} is not supported: ` +
        `xen-devmigrate supports Xen ${SUPPORTED_XEN_VERSIONS.join(', ')} on x86_64`,
    );
  }
}

/** No running Xen could be read, and no override names the library to load. */
export class XenVersionUnknownError extends Error {
  override readonly name = 'XenVersionUnknownError';
  constructor(
    readonly library: 'libxenctrl' | 'libxenguest',
    readonly reason: string,
  ) {
    super(
      `cannot tell which ${library} to load: ${reason} (not a Xen dom0?); ` +
        `set ${library === 'libxenctrl' ? LIBXENCTRL_ENV : LIBXENGUEST_ENV} to a library path to choose it`,
    );
  }
}

export type LibrarySource = 'option' | 'env' | 'hypervisor';

export interface LibraryPick {
  /** Absolute path when found in LIBRARY_DIRS (or given), else the bare soname for dlopen's search. */
  path: string;
  from: LibrarySource;
  /** The files looked at (hypervisor-derived picks only), for error messages. */
  searched: readonly string[];
}

export interface XenLibraryChoice {
  /** The running hypervisor's release; undefined when none was read (both libraries overridden). */
  release: XenRelease | undefined;
  hypervisor: HypervisorVersion | undefined;
  libxenctrl: LibraryPick;
  libxenguest: LibraryPick;
}

export interface SelectionInput {
  /** process.arch */
  arch: string;
  /** undefined: not readable (hypervisorProblem says why). */
  hypervisor: HypervisorVersion | undefined;
  hypervisorProblem?: string;
  options?: { libxenctrl?: string | undefined; libxenguest?: string | undefined };
  env?: Record<string, string | undefined>;
  exists: (path: string) => boolean;
}

function pickOne(
  library: 'libxenctrl' | 'libxenguest',
  input: SelectionInput,
  release: XenRelease | undefined,
): LibraryPick {
  const option = input.options?.[library];
  if (option !== undefined && option !== '') return { path: option, from: 'option', searched: [] };
  const fromEnv = input.env?.[library === 'libxenctrl' ? LIBXENCTRL_ENV : LIBXENGUEST_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return { path: fromEnv, from: 'env', searched: [] };
  if (release === undefined) {
    throw new XenVersionUnknownError(library, input.hypervisorProblem ?? 'no hypervisor version');
  }
  const soname = `${library}.so.${release.major}.${release.minor}`;
  const searched = LIBRARY_DIRS.map((d) => `${d}/${soname}`);
  const found = searched.find((p) => input.exists(p));
  return { path: found ?? soname, from: 'hypervisor', searched };
}

/**
 * Chooses both libraries. Throws UnsupportedXenError for a running Xen outside XEN_RELEASES (or a
 * non-x86_64 machine), whatever the overrides say, and XenVersionUnknownError when a library is
 * not overridden and the hypervisor's version cannot be read.
 */
export function selectXenLibraries(input: SelectionInput): XenLibraryChoice {
  const release = runningRelease(input);
  return {
    release,
    hypervisor: input.hypervisor,
    libxenctrl: pickOne('libxenctrl', input, release),
    libxenguest: pickOne('libxenguest', input, release),
  };
}

/** The same rules for one library only (a process that loads only libxenctrl). */
export function selectXenLibrary(
  library: 'libxenctrl' | 'libxenguest',
  input: SelectionInput,
): { release: XenRelease | undefined; pick: LibraryPick } {
  const release = runningRelease(input);
  return { release, pick: pickOne(library, input, release) };
}

function runningRelease(input: SelectionInput): XenRelease | undefined {
  if (input.arch !== 'x64') throw new UnsupportedXenError(`arch ${input.arch}`);
  if (input.hypervisor === undefined) return undefined;
  const { major, minor } = input.hypervisor;
  const release = findRelease(major, minor);
  if (release === undefined) throw new UnsupportedXenError(`${major}.${minor}`);
  return release;
}

/** Parses the two sysfs values; undefined with a reason when they are not plain numbers. */
export function parseHypervisorVersion(
  major: string,
  minor: string,
  extra?: string,
): { version: HypervisorVersion } | { problem: string } {
  const ma = major.trim();
  const mi = minor.trim();
  if (!/^\d{1,4}$/.test(ma) || !/^\d{1,4}$/.test(mi)) {
    return { problem: `unreadable hypervisor version ${JSON.stringify(`${ma}.${mi}`)}` };
  }
  const v: HypervisorVersion = { major: Number(ma), minor: Number(mi) };
  const ex = extra?.trim();
  if (ex) v.extra = ex.replace(/[^\w.+~-]/g, '?');
  return { version: v };
}

/** Reads the running hypervisor's version from sysfs (root: /sys/hypervisor). */
export function readHypervisorVersion(
  root = '/sys/hypervisor',
): { version: HypervisorVersion } | { problem: string } {
  const read = (p: string): string | undefined => {
    try {
      return readFileSync(join(root, p), 'utf8');
    } catch {
      return undefined;
    }
  };
  const type = read('type');
  if (type !== undefined && type.trim() !== 'xen') {
    return { problem: `the hypervisor is ${JSON.stringify(type.trim())}, not xen` };
  }
  const major = read('version/major');
  const minor = read('version/minor');
  if (major === undefined || minor === undefined) {
    return { problem: `${root}/version/{major,minor} not readable` };
  }
  return parseHypervisorVersion(major, minor, read('version/extra'));
}

export interface HostSelectionOptions {
  libxenctrl?: string | undefined;
  libxenguest?: string | undefined;
  /** Default /sys/hypervisor (tests point it elsewhere). */
  sysHypervisor?: string;
}

function hostInput(opts: HostSelectionOptions): SelectionInput {
  const hv = readHypervisorVersion(opts.sysHypervisor);
  return {
    arch: process.arch,
    hypervisor: 'version' in hv ? hv.version : undefined,
    ...('problem' in hv ? { hypervisorProblem: hv.problem } : {}),
    options: { libxenctrl: opts.libxenctrl, libxenguest: opts.libxenguest },
    env: process.env,
    exists: existsSync,
  };
}

/** selectXenLibraries() for this machine: its sysfs, process.env, its file system. */
export function selectHostXenLibraries(opts: HostSelectionOptions = {}): XenLibraryChoice {
  return selectXenLibraries(hostInput(opts));
}

/** selectXenLibrary() for this machine. */
export function selectHostXenLibrary(
  library: 'libxenctrl' | 'libxenguest',
  opts: HostSelectionOptions = {},
): { release: XenRelease | undefined; pick: LibraryPick } {
  return selectXenLibrary(library, hostInput(opts));
}

/** One line for logs: "Xen 4.20 (hypervisor): libxenctrl /usr/lib/.../libxenctrl.so.4.20 ...". */
export function describeChoice(c: XenLibraryChoice): string {
  const hv = c.hypervisor ? `Xen ${c.hypervisor.major}.${c.hypervisor.minor}` : 'no hypervisor read';
  return `${hv}: libxenctrl ${c.libxenctrl.path} (${c.libxenctrl.from}), libxenguest ${c.libxenguest.path} (${c.libxenguest.from})`;
}
