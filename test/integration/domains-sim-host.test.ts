// Specifies the simulated host on the real xenstored: the example host JSON lays out as libxl
// would (permissions enforced by xenstored itself), and a booted guest connects its frontends
// as its own domain but cannot touch dom0's backend nodes.
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectXenStore, isXsErrno } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { buildMocks, startXenstored } from '../../xen-mocks/harness.js';
import type { XenstoredHarness } from '../../xen-mocks/harness.js';
import { createSimHost, loadHostDescription } from '../../xen-mocks/sim-host.js';
import type { SimHost } from '../../xen-mocks/sim-host.js';

const EXAMPLE = fileURLToPath(new URL('../../xen-mocks/hosts/example-host.json', import.meta.url));

let h: XenstoredHarness;
let xs: XenStore;
let host: SimHost;

beforeAll(async () => {
  await buildMocks();
  h = await startXenstored();
  process.env.XEN_SIM_STATE = h.stateDir;
  xs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
  host = await createSimHost(h, await loadHostDescription(EXAMPLE));
});

afterAll(async () => {
  await host?.close();
  await xs?.close();
  await h?.stop();
});

describe('simulated host from xen-mocks/hosts/example-host.json', () => {
  it('creates every guest in the hypervisor and in XenStore', async () => {
    expect([...host.guests.keys()]).toEqual([1, 2, 3, 4]);
    expect(await xs.readString('/local/domain/1/name')).toBe('web01');
    expect(await xs.readString('/local/domain/2/vm')).toBe('/vm/0b9e2d44-1c7f-4e36-8a5d-7f3c2b1e4d02');
    expect(await h.getDomain(2)).toMatchObject({ hvm: true, hvmParams: { 0: 1 } });
    expect(await h.getDomain(3)).toMatchObject({ hvm: true });
    expect(await xs.getPerms('/local/domain/1')).toEqual([
      { domid: 0, access: 'n' },
      { domid: 1, access: 'r' },
    ]);
    expect(await xs.directory('/local/domain/0/backend/vbd/1')).toEqual(['51712']);
    expect(await xs.directory('/local/domain/0/backend/qdisk/1')).toEqual(['51728']);
    expect(await xs.readString('/local/domain/0/backend/pci/2/0/dev-0')).toBe('0000:03:00.0');
    expect(await xs.readString('/local/domain/0/backend/vtpm/2/0/uuid')).toBe(
      '3d5b7e11-9a2c-4f80-b6d4-1e2f3a4b5c03',
    );
  });

  it('a booted guest connects its frontends as itself and cannot write its backend', async () => {
    const guest = await host.guest(1).boot();
    expect(await xs.readString('/local/domain/1/device/vbd/51712/state')).toBe('4');
    expect(await xs.readString('/local/domain/1/device/vif/0/state')).toBe('4');
    expect(await xs.readString('/local/domain/1/control/feature-suspend')).toBe('1');
    await guest.close();

    const asGuest = await connectXenStore({ path: host.guest(1).socketPath, timeoutMs: 10_000 });
    try {
      expect(await asGuest.readString('/local/domain/0/backend/vbd/1/51712/params')).toBe(
        '/dev/vg-shared/web01-root',
      );
      let err: unknown;
      await asGuest
        .write('/local/domain/0/backend/vbd/1/51712/params', '/dev/evil')
        .catch((e: unknown) => (err = e));
      expect(isXsErrno(err, 'EACCES')).toBe(true);
      err = undefined;
      await asGuest.write('/local/domain/1/name', 'renamed').catch((e: unknown) => (err = e));
      expect(isXsErrno(err, 'EACCES')).toBe(true);
      await asGuest.write('/local/domain/1/control/shutdown', '');
    } finally {
      await asGuest.close();
    }
  });
});
