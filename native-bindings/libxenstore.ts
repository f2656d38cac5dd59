// koffi declarations of Debian's libxenstore.so.4 (Xen 4.17, /usr/include/xenstore.h) and the
// few libc calls needed around it (free of returned memory, socket options). Types and symbols
// only: the logic lives in src/xenstore/ffi-client.ts. Loading checks every symbol at once.
import koffi, { type LibraryHandle, type TypeObject } from 'koffi';
// One pair of load errors for every binding (defined with libxenctrl's), so callers catch one class.
import { NativeLibraryError, NativeSymbolError } from './libxenctrl.js';

export { NativeLibraryError, NativeSymbolError };

/** soname loaded when neither the option nor DEVMIGRATE_LIBXENSTORE names another file. */
export const DEFAULT_LIBXENSTORE = 'libxenstore.so.4';
/** Environment variable naming the libxenstore to load (a path or a soname). */
export const LIBXENSTORE_ENV = 'DEVMIGRATE_LIBXENSTORE';
const LIBC = 'libc.so.6';

/** An opaque native pointer as koffi hands it out (an External); never dereferenced in JS. */
export type NativePointer = object;

/** A koffi function: callable synchronously, or on libuv's thread pool through .async. */
export interface NativeFn<A extends unknown[], R> {
  (...args: A): R;
  async(...args: [...A, (err: unknown, result: R) => void]): void;
}

/** `unsigned int *` out-parameter: koffi writes the value into element 0. */
export type OutUint = [number];

/** struct xs_permissions { unsigned int id; unsigned int perms; } (xenstore_lib.h). */
export interface XsPermissionsStruct {
  id: number;
  perms: number;
}
/** Bits of xs_permissions.perms. */
export const XS_PERM_NONE = 0x00;
export const XS_PERM_READ = 0x01;
export const XS_PERM_WRITE = 0x02;
/** XBT_NULL: "no transaction". */
export const XBT_NULL = 0;

export interface LibXenStore {
  /** The name or path actually loaded. */
  readonly library: string;
  readonly xs_open: NativeFn<[flags: number], NativePointer | null>;
  readonly xs_close: NativeFn<[h: NativePointer], void>;
  readonly xs_fileno: NativeFn<[h: NativePointer], number>;
  readonly xs_read: NativeFn<[h: NativePointer, t: number, path: string, len: OutUint], NativePointer | null>;
  readonly xs_write: NativeFn<
    [h: NativePointer, t: number, path: string, data: Buffer, len: number],
    boolean
  >;
  readonly xs_mkdir: NativeFn<[h: NativePointer, t: number, path: string], boolean>;
  readonly xs_rm: NativeFn<[h: NativePointer, t: number, path: string], boolean>;
  /** Returns one malloc'ed block: `num` char* followed by the strings. free() it once. */
  readonly xs_directory: NativeFn<
    [h: NativePointer, t: number, path: string, num: OutUint],
    NativePointer | null
  >;
  /** Returns a malloc'ed array of `num` struct xs_permissions. */
  readonly xs_get_permissions: NativeFn<
    [h: NativePointer, t: number, path: string, num: OutUint],
    NativePointer | null
  >;
  readonly xs_set_permissions: NativeFn<
    [h: NativePointer, t: number, path: string, perms: XsPermissionsStruct[], num: number],
    boolean
  >;
  readonly xs_watch: NativeFn<[h: NativePointer, path: string, token: string], boolean>;
  readonly xs_unwatch: NativeFn<[h: NativePointer, path: string, token: string], boolean>;
  /** Returns a malloc'ed char*[] (path, token, ...) in one block, or NULL with errno EAGAIN. */
  readonly xs_check_watch: NativeFn<[h: NativePointer], NativePointer | null>;
  /** Blocks until a watch fires or the connection drops (NULL). */
  readonly xs_read_watch: NativeFn<[h: NativePointer, num: OutUint], NativePointer | null>;
  /** Returns 0 (XBT_NULL) on failure. */
  readonly xs_transaction_start: NativeFn<[h: NativePointer], number>;
  readonly xs_transaction_end: NativeFn<[h: NativePointer, t: number, abort: boolean], boolean>;
  readonly xs_introduce_domain: NativeFn<
    [h: NativePointer, domid: number, mfn: bigint | number, eventchn: number],
    boolean
  >;
  readonly xs_set_target: NativeFn<[h: NativePointer, domid: number, target: number], boolean>;
  readonly xs_resume_domain: NativeFn<[h: NativePointer, domid: number], boolean>;
  readonly xs_release_domain: NativeFn<[h: NativePointer, domid: number], boolean>;
  /** Returns a malloc'ed NUL-terminated string. */
  readonly xs_get_domain_path: NativeFn<[h: NativePointer, domid: number], NativePointer | null>;
  /** false both for "no" and for an error: check errno (set to 0 before the call). */
  readonly xs_is_domain_introduced: NativeFn<[h: NativePointer, domid: number], boolean>;
  /** libc free(), for everything libxenstore returns. */
  readonly free: NativeFn<[p: NativePointer], void>;
  /** libc memcpy(): copies a result into a Buffer (far cheaper than koffi.view per call). */
  readonly memcpy: NativeFn<[dest: Buffer, src: NativePointer, n: number], NativePointer | null>;
  /** libc shutdown(2): wakes a thread blocked reading a socket. */
  readonly shutdown: NativeFn<[fd: number, how: number], number>;
  /** libc setsockopt(2) with a struct timeval value (SO_RCVTIMEO / SO_SNDTIMEO). */
  readonly setsockopt_timeval: NativeFn<
    [fd: number, level: number, name: number, tv: { tv_sec: number; tv_usec: number }, len: number],
    number
  >;
  /** struct xs_permissions, for decoding xs_get_permissions results. */
  readonly permsType: TypeObject;
}

// Linux x86_64/aarch64 values of <sys/socket.h> constants used with the libc calls above.
export const SOL_SOCKET = 1;
export const SO_RCVTIMEO = 20;
export const SO_SNDTIMEO = 21;
export const SHUT_RDWR = 2;
export const TIMEVAL_SIZE = 16;

const cache = new Map<string, LibXenStore>();

/** koffi's (unexported) TypeSpec: a type name, a type object or an out-parameter marker. */
type Spec = string | TypeObject | ReturnType<typeof koffi.out>;

/** The library to load: the explicit option, else $DEVMIGRATE_LIBXENSTORE, else the soname. */
export function resolveLibXenStorePath(libPath?: string): string {
  const fromEnv = process.env[LIBXENSTORE_ENV];
  if (libPath !== undefined && libPath !== '') return libPath;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return DEFAULT_LIBXENSTORE;
}

function loadLibrary(name: string, what: 'libxenstore' | 'libc'): LibraryHandle {
  try {
    return koffi.load(name);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    const hint = what === 'libxenstore' ? ` (set ${LIBXENSTORE_ENV} or the libPath option to its path)` : '';
    throw new NativeLibraryError(what, name, `${why}${hint}`);
  }
}

/**
 * Loads libxenstore (cached per path) and declares every symbol the client uses. Throws
 * NativeLibraryError (file not loadable) or NativeSymbolError (naming every missing symbol).
 */
export function loadLibXenStore(libPath?: string): LibXenStore {
  const library = resolveLibXenStorePath(libPath);
  const cached = cache.get(library);
  if (cached !== undefined) return cached;

  const xs = loadLibrary(library, 'libxenstore');
  const libc = loadLibrary(LIBC, 'libc');
  // Anonymous types: koffi's named-type registry is process-wide, and this module may be
  // evaluated more than once (test runners), so nothing here registers a name.
  const handle = koffi.pointer(koffi.opaque());
  const uintOut = koffi.out(koffi.pointer('unsigned int'));
  const perms = koffi.struct({ id: 'unsigned int', perms: 'unsigned int' });
  const timeval = koffi.struct({ tv_sec: 'long', tv_usec: 'long' });

  const missing: string[] = [];
  const declare = (lib: LibraryHandle, name: string, ret: Spec, args: Spec[]) => {
    try {
      return lib.func(name, ret, args);
    } catch {
      missing.push(name);
      return undefined;
    }
  };
  const fns = {
    xs_open: declare(xs, 'xs_open', handle, ['unsigned long']),
    xs_close: declare(xs, 'xs_close', 'void', [handle]),
    xs_fileno: declare(xs, 'xs_fileno', 'int', [handle]),
    xs_read: declare(xs, 'xs_read', 'void *', [handle, 'uint32_t', 'const char *', uintOut]),
    xs_write: declare(xs, 'xs_write', 'bool', [
      handle,
      'uint32_t',
      'const char *',
      'const void *',
      'unsigned int',
    ]),
    xs_mkdir: declare(xs, 'xs_mkdir', 'bool', [handle, 'uint32_t', 'const char *']),
    xs_rm: declare(xs, 'xs_rm', 'bool', [handle, 'uint32_t', 'const char *']),
    xs_directory: declare(xs, 'xs_directory', 'void *', [handle, 'uint32_t', 'const char *', uintOut]),
    xs_get_permissions: declare(xs, 'xs_get_permissions', 'void *', [
      handle,
      'uint32_t',
      'const char *',
      uintOut,
    ]),
    xs_set_permissions: declare(xs, 'xs_set_permissions', 'bool', [
      handle,
      'uint32_t',
      'const char *',
      koffi.pointer(perms),
      'unsigned int',
    ]),
    xs_watch: declare(xs, 'xs_watch', 'bool', [handle, 'const char *', 'const char *']),
    xs_unwatch: declare(xs, 'xs_unwatch', 'bool', [handle, 'const char *', 'const char *']),
    xs_check_watch: declare(xs, 'xs_check_watch', 'void *', [handle]),
    xs_read_watch: declare(xs, 'xs_read_watch', 'void *', [handle, uintOut]),
    xs_transaction_start: declare(xs, 'xs_transaction_start', 'uint32_t', [handle]),
    xs_transaction_end: declare(xs, 'xs_transaction_end', 'bool', [handle, 'uint32_t', 'bool']),
    xs_introduce_domain: declare(xs, 'xs_introduce_domain', 'bool', [
      handle,
      'unsigned int',
      'unsigned long',
      'unsigned int',
    ]),
    xs_set_target: declare(xs, 'xs_set_target', 'bool', [handle, 'unsigned int', 'unsigned int']),
    xs_resume_domain: declare(xs, 'xs_resume_domain', 'bool', [handle, 'unsigned int']),
    xs_release_domain: declare(xs, 'xs_release_domain', 'bool', [handle, 'unsigned int']),
    xs_get_domain_path: declare(xs, 'xs_get_domain_path', 'void *', [handle, 'unsigned int']),
    xs_is_domain_introduced: declare(xs, 'xs_is_domain_introduced', 'bool', [handle, 'unsigned int']),
    free: declare(libc, 'free', 'void', ['void *']),
    memcpy: declare(libc, 'memcpy', 'void *', ['void *', 'const void *', 'size_t']),
    shutdown: declare(libc, 'shutdown', 'int', ['int', 'int']),
    setsockopt_timeval: declare(libc, 'setsockopt', 'int', [
      'int',
      'int',
      'int',
      koffi.pointer(timeval),
      'uint32_t',
    ]),
  };
  if (missing.length > 0) {
    // Every missing name at once: one error explains an incompatible library completely.
    throw new NativeSymbolError(
      missing.some((m) => m.startsWith('xs_')) ? 'libxenstore' : 'libc',
      library,
      missing.join(', '),
    );
  }
  // Every entry is defined here (missing is empty); the cast only narrows koffi's untyped
  // function objects to the prototypes declared above.
  const loaded = { library, permsType: perms, ...fns } as unknown as LibXenStore;
  cache.set(library, loaded);
  return loaded;
}
