// Specification of socket discovery, in libxenstore 4.17's order: XENSTORED_PATH, then
// $XENSTORED_RUNDIR/socket, then /var/run/xenstored/socket; a non-socket goes to the FFI client.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { daemonSocketPath, discoverXenStore, kindOf } from '../../src/xenstore/discovery.js';

describe('daemonSocketPath', () => {
  it('prefers XENSTORED_PATH', () => {
    expect(daemonSocketPath({ XENSTORED_PATH: '/x/s', XENSTORED_RUNDIR: '/r' })).toEqual({
      path: '/x/s',
      source: 'XENSTORED_PATH',
    });
  });
  it('falls back to $XENSTORED_RUNDIR/socket', () => {
    expect(daemonSocketPath({ XENSTORED_RUNDIR: '/r' })).toEqual({
      path: '/r/socket',
      source: 'XENSTORED_RUNDIR',
    });
  });
  it('defaults to /var/run/xenstored/socket', () => {
    expect(daemonSocketPath({})).toEqual({ path: '/var/run/xenstored/socket', source: 'default' });
  });
});

describe('discoverXenStore', () => {
  let dir = '';
  let server: net.Server | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'xs-disc-'));
    writeFileSync(path.join(dir, 'plain'), '');
    server = net.createServer();
    await new Promise<void>((resolve) => server?.listen(path.join(dir, 'socket'), resolve));
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds a socket through XENSTORED_RUNDIR', async () => {
    expect(await discoverXenStore({ XENSTORED_RUNDIR: dir })).toEqual({
      kind: 'socket',
      path: path.join(dir, 'socket'),
      source: 'XENSTORED_RUNDIR',
    });
    expect(await kindOf(path.join(dir, 'socket'))).toBe('socket');
  });

  it('reports a non-socket XENSTORED_PATH as a device for the FFI client', async () => {
    const got = await discoverXenStore({ XENSTORED_PATH: path.join(dir, 'plain') });
    expect(got).toMatchObject({ kind: 'device', path: path.join(dir, 'plain') });
    expect(got.kind === 'device' && got.reason).toMatch(/not a socket/);
  });

  it('falls back to the xenbus device when the socket is missing', async () => {
    const got = await discoverXenStore({ XENSTORED_RUNDIR: path.join(dir, 'nope') });
    expect(got.kind).toBe('device');
    expect(got.path).toMatch(/^\/(dev\/xen|proc\/xen)\/xenbus$/);
    expect(got.kind === 'device' && got.reason).toMatch(/does not exist/);
  });
});

describe('connectXenStore without a socket', () => {
  it('throws XenStoreNoSocketError naming the device to use instead', async () => {
    const { connectXenStore, XenStoreNoSocketError, XenStoreDisconnectedError } =
      await import('../../src/xenstore/index.js');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'xs-nosock-'));
    try {
      writeFileSync(path.join(dir, 'plain'), '');
      const err = await connectXenStore({ env: { XENSTORED_PATH: path.join(dir, 'plain') } }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(XenStoreNoSocketError);
      expect(err).toBeInstanceOf(XenStoreDisconnectedError);
      expect((err as InstanceType<typeof XenStoreNoSocketError>).devicePath).toBe(path.join(dir, 'plain'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
