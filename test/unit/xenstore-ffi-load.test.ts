// Loading libxenstore: a missing or wrong library fails with an error that names the file, the
// environment variable to fix it, and every missing symbol; an absent xenstored names the path.
// No daemon: these fail before (or at) connecting.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LIBXENSTORE_ENV, NativeLibraryError, NativeSymbolError } from '../../native-bindings/libxenstore.js';
import { XenStoreDisconnectedError } from '../../src/xenstore/errors.js';
import { openFfiXenStoreClient } from '../../src/xenstore/ffi-client.js';

describe('loading libxenstore', () => {
  it('names a missing library and how to point at another one', async () => {
    const err = await openFfiXenStoreClient({
      path: '/nonexistent/socket',
      libPath: '/nonexistent/libxenstore.so.4',
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NativeLibraryError);
    expect((err as NativeLibraryError).library).toBe('libxenstore');
    expect((err as NativeLibraryError).path).toBe('/nonexistent/libxenstore.so.4');
    expect((err as Error).message).toContain('/nonexistent/libxenstore.so.4');
    expect((err as Error).message).toContain(LIBXENSTORE_ENV);
  });

  it('honours DEVMIGRATE_LIBXENSTORE', async () => {
    const saved = process.env[LIBXENSTORE_ENV];
    process.env[LIBXENSTORE_ENV] = '/nonexistent/from-env.so';
    try {
      const err = await openFfiXenStoreClient({ path: '/nonexistent/socket' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NativeLibraryError);
      expect((err as NativeLibraryError).path).toBe('/nonexistent/from-env.so');
    } finally {
      if (saved === undefined) delete process.env[LIBXENSTORE_ENV];
      else process.env[LIBXENSTORE_ENV] = saved;
    }
  });

  it('lists every missing symbol of a library that is not libxenstore', async () => {
    const err = await openFfiXenStoreClient({ libPath: 'libm.so.6' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NativeSymbolError);
    const missing = (err as NativeSymbolError).symbol.split(', ');
    expect(missing).toContain('xs_open');
    expect(missing).toContain('xs_read_watch');
    expect((err as Error).message).toContain('libm.so.6');
  });

  it('reports an unreachable xenstored as a disconnection naming the path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ffi-nosock-'));
    try {
      const path = join(dir, 'socket');
      const err = await openFfiXenStoreClient({ path }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(XenStoreDisconnectedError);
      expect((err as Error).message).toContain(path);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
