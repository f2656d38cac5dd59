// Specification of the device policies and discovery: disks (shared / local block / local file
// with and without a copy method / driver domain), pci naming the BDF, vtpm and usb needing a
// tool, nothing-to-do types, unknown types failing closed, and discovery from trusted backends only.
import { describe, expect, it } from 'vitest';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import {
  BackendIndex,
  discoverDevices,
  ownedOnlyBy,
  trustedDomainName,
} from '../../src/devices/discovery.js';
import { decideDisk, diskPath } from '../../src/devices/disk-policy.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import { parseProgress2, remoteSpec, rsyncArgs } from '../../src/devices/rsync-copy.js';
import { fsTypeName, type StorageInfo, type StorageProbe } from '../../src/devices/storage.js';
import type { DeviceRef, Logger, OpContext } from '../../src/devices/types.js';
import { MemoryXenStore } from './migration-fake-xenstore.js';

const warnings: string[] = [];
const log: Logger = {
  error: () => undefined,
  warn: (m) => warnings.push(m),
  info: () => undefined,
  debug: () => undefined,
};
const ctx: OpContext = {
  job: { jobId: 'j', domid: 5, target: 'host-b', live: true, domainName: 'g5' },
  signal: new AbortController().signal,
  log,
  progress: () => undefined,
};

function cfgWith(f: (c: DevMigrateConfig) => void = () => undefined): DevMigrateConfig {
  const c = defaultConfig();
  f(c);
  return c;
}
const file = (fsType = 'ext2/ext3', size = 1024): StorageInfo => ({ kind: 'file', fsType, size });
const block: StorageInfo = { kind: 'block', fsType: 'devtmpfs', size: 0 };

function probeOf(map: Record<string, StorageInfo>): StorageProbe {
  return { probe: (p) => Promise.resolve(map[p] ?? { kind: 'missing', fsType: 'none', size: 0 }) };
}
function ref(type: string, backend: Record<string, string>, backendDomid = 0): DeviceRef {
  return {
    domid: 5,
    backendDomid,
    type,
    devid: '51712',
    backendPath: `/local/domain/${backendDomid}/backend/${type}/5/51712`,
    backend,
  };
}

describe('disk policy (pure)', () => {
  const disks = cfgWith((c) => (c.disks.sharedPathPrefixes = ['/srv/shared/'])).disks;
  it('strips format prefixes from params', () => {
    expect(diskPath('aio:/var/a.img')).toBe('/var/a.img');
    expect(diskPath('qcow2:/var/a.qcow2')).toBe('/var/a.qcow2');
    expect(diskPath('/dev/vg/x')).toBe('/dev/vg/x');
    expect(diskPath('iscsi://x')).toBeUndefined();
  });
  it('shared prefix -> shared, without probing', () => {
    expect(decideDisk({ params: '/srv/shared/a.img' }, undefined, disks, 0)).toMatchObject({
      action: 'shared',
    });
  });
  it('shared filesystem type -> shared', () => {
    expect(decideDisk({ params: '/var/a.img' }, file('nfs'), disks, 0)).toMatchObject({
      action: 'shared',
      why: expect.stringContaining('nfs'),
    });
  });
  it('local block device -> refused with the reason', () => {
    expect(decideDisk({ params: '/dev/vg0/guest' }, block, disks, 0)).toEqual({
      action: 'refuse',
      reason: 'local block device /dev/vg0/guest is not on shared storage',
    });
  });
  it('local file without copy method -> refused naming disks.copy', () => {
    const d = decideDisk({ params: '/var/a.img' }, file(), disks, 0);
    expect(d).toMatchObject({
      action: 'refuse',
      reason: expect.stringContaining('no copy method configured (disks.copy)'),
    });
  });
  it('local file with a copy method -> copy', () => {
    const withCopy = cfgWith(
      (c) =>
        (c.disks.copy = {
          method: 'rsync',
          rsync: '/usr/bin/rsync',
          rsh: ['ssh'],
          remoteRoot: '/',
          extraArgs: [],
        }),
    ).disks;
    expect(decideDisk({ params: '/var/a.img' }, file('ext2/ext3', 4096), withCopy, 0)).toEqual({
      action: 'copy',
      path: '/var/a.img',
      size: 4096,
      allocated: 4096,
    });
  });
  it('empty drive -> nothing; missing image and driver-domain disks -> refused', () => {
    expect(decideDisk({ params: '' }, undefined, disks, 0)).toMatchObject({ action: 'nothing' });
    expect(
      decideDisk({ params: '/var/x.img' }, { kind: 'missing', fsType: 'none', size: 0 }, disks, 0),
    ).toMatchObject({ action: 'refuse', reason: expect.stringContaining('not found') });
    expect(decideDisk({ params: '/var/x.img' }, undefined, disks, 3)).toMatchObject({
      action: 'refuse',
      reason: expect.stringContaining('driver domain 3'),
    });
  });
  it('names statfs magic numbers as stat -f does', () => {
    expect(fsTypeName(0x6969)).toBe('nfs');
    expect(fsTypeName(0xef53)).toBe('ext2/ext3');
    expect(fsTypeName(0x1234)).toBe('unknown(0x1234)');
  });
});

describe('registry policies', () => {
  it('vif, console, vkbd, vfb, 9pfs: nothing to do', () => {
    const reg = new DeviceRegistry(defaultConfig());
    for (const t of ['vif', 'console', 'vkbd', 'vfb', '9pfs']) {
      const m = reg.factoryFor(t).create(ref(t, {}));
      expect(m.policy).toBe('nothing-to-do');
      expect(m.test).toBeUndefined();
    }
  });
  it('vtpm without a tool refuses with that reason; with a tool it is external', async () => {
    const m = new DeviceRegistry(defaultConfig()).factoryFor('vtpm').create(ref('vtpm', {}));
    expect(await m.test?.(ctx)).toEqual({
      ok: false,
      reason: expect.stringContaining('vtpm needs an external tool (devices.vtpm.tool)'),
    });
    const withTool = cfgWith(
      (c) =>
        (c.devices.vtpm = {
          tool: {
            path: '/bin/true',
            contract: 'external-device-migrate',
            timeoutMs: 1000,
            passSubtype: false,
          },
        }),
    );
    expect(new DeviceRegistry(withTool).factoryFor('vtpm').create(ref('vtpm', {})).policy).toBe(
      'external:/bin/true',
    );
  });
  it('vusb and qusb refuse unless a tool is configured', async () => {
    for (const t of ['vusb', 'qusb']) {
      const m = new DeviceRegistry(defaultConfig()).factoryFor(t).create(ref(t, {}));
      expect(await m.test?.(ctx)).toEqual({
        ok: false,
        reason: expect.stringContaining(`devices.${t}.tool`),
      });
    }
  });
  it('pci refuses naming the BDF read from the backend', async () => {
    const f = new DeviceRegistry(defaultConfig()).factoryFor('pci');
    const nodes: Record<string, string> = { num_devs: '2', 'dev-0': '0000:03:00.0', 'dev-1': '0000:04:00.1' };
    const backend = await f.inspect((k) => Promise.resolve(nodes[k]));
    const m = f.create({ ...ref('pci', backend), devid: '0' });
    expect(await m.test?.(ctx)).toEqual({
      ok: false,
      reason: 'pci passthrough device 0000:03:00.0, 0000:04:00.1 cannot be migrated (detach it first)',
    });
  });
  it('unknown types fail closed by default, or are ignored when configured', async () => {
    const m = new DeviceRegistry(defaultConfig()).factoryFor('vwhatever').create(ref('vwhatever', {}));
    expect(await m.test?.(ctx)).toEqual({
      ok: false,
      reason: expect.stringContaining('unknown device type vwhatever'),
    });
    const ign = new DeviceRegistry(cfgWith((c) => (c.unknownDevices = 'ignore')))
      .factoryFor('vwhatever')
      .create(ref('vwhatever', {}));
    expect(ign.policy).toBe('ignored-unknown-type');
  });
  it('a configured tool overrides a built-in policy (vbd)', () => {
    const c = cfgWith(
      (x) =>
        (x.devices.vbd = {
          tool: {
            path: '/bin/true',
            contract: 'external-device-migrate',
            timeoutMs: 1000,
            passSubtype: true,
          },
        }),
    );
    expect(new DeviceRegistry(c).factoryFor('vbd').create(ref('vbd', { type: 'phy' })).policy).toBe(
      'external:/bin/true',
    );
  });
  it('vbd policy probes the params path and decides at test', async () => {
    const reg = new DeviceRegistry(
      defaultConfig(),
      probeOf({ '/dev/vg0/g': block, '/nfs/a.img': file('nfs') }),
    );
    const local = reg.factoryFor('vbd').create(ref('vbd', { type: 'phy', params: '/dev/vg0/g', mode: 'w' }));
    expect(await local.test?.(ctx)).toEqual({
      ok: false,
      reason: 'local block device /dev/vg0/g is not on shared storage',
    });
    expect(local.policy).toBe('refuse');
    const shared = reg
      .factoryFor('qdisk')
      .create(ref('qdisk', { type: 'qdisk', params: 'raw:/nfs/a.img', mode: 'w' }));
    expect(await shared.test?.(ctx)).toMatchObject({ ok: true });
    expect(shared.policy).toBe('shared');
  });
});

describe('rsync copy helpers', () => {
  const cfg = {
    method: 'rsync' as const,
    rsync: '/usr/bin/rsync',
    rsh: ['ssh', '-o', 'BatchMode=yes'],
    remoteRoot: '/srv/in',
    extraArgs: ['--bwlimit=10M'],
  };
  it('argv: inplace/partial/progress2/sparse, rsh joined, remote root applied, IPv6 bracketed', () => {
    expect(rsyncArgs(cfg, '/var/a.img', '2001:db8::2')).toEqual([
      '--ignore-times',
      '--inplace',
      '--partial',
      '--no-whole-file',
      '--mkpath',
      '--info=progress2',
      '--sparse',
      '--bwlimit=10M',
      '-e',
      'ssh -o BatchMode=yes',
      '--',
      '/var/a.img',
      '[2001:db8::2]:/srv/in/var/a.img',
    ]);
    expect(remoteSpec('host-b', '/x')).toBe('host-b:/x');
    expect(rsyncArgs({ ...cfg, sparse: false }, '/var/a.img', 'h')).not.toContain('--sparse');
  });
  it('parses --info=progress2 lines', () => {
    expect(parseProgress2('     32,768,000  50%   31.25MB/s    0:00:01 (xfr#1, to-chk=0/1)')).toBe(
      32_768_000,
    );
    expect(parseProgress2('sending incremental file list')).toBeUndefined();
  });
});

describe('discovery', () => {
  function host(): MemoryXenStore {
    const xs = new MemoryXenStore();
    const dom0 = [{ domid: 0, access: 'n' as const }];
    xs.put('/local/domain/0/backend/vbd/5/51712/params', '/dev/vg0/g', dom0);
    xs.put('/local/domain/0/backend/vbd/5/51712/type', 'phy');
    xs.put('/local/domain/0/backend/vif/5/0/state', '4');
    xs.put('/local/domain/0/backend/vif/6/0/state', '4');
    xs.put('/local/domain/5/name', 'guest5', [
      { domid: 0, access: 'n' },
      { domid: 5, access: 'r' },
    ]);
    // A guest-writable frontend that claims a device: never consulted.
    xs.put('/local/domain/5/device/vtpm/0/backend', '/local/domain/0/backend/vtpm/5/0', [
      { domid: 5, access: 'n' },
    ]);
    return xs;
  }
  it('finds the guest devices from backend dirs only', async () => {
    const xs = host();
    const reg = new DeviceRegistry(defaultConfig(), probeOf({}));
    const r = await discoverDevices(xs, 5, new BackendIndex(xs, []), reg, log);
    expect(r.devices.map((d) => `${d.ref.type}/${d.ref.devid}`)).toEqual(['vbd/51712', 'vif/0']);
    expect(r.devices[0]?.ref.backend).toEqual({ params: '/dev/vg0/g', type: 'phy' });
  });
  it('a backend dir not owned by its backend domain fails closed', async () => {
    const xs = host();
    xs.put('/local/domain/7/backend/vbd/5/768/params', '/x', [{ domid: 5, access: 'n' }]); // guest-owned "backend"
    const reg = new DeviceRegistry(defaultConfig(), probeOf({}));
    const r = await discoverDevices(xs, 5, new BackendIndex(xs, []), reg, log);
    const bad = r.devices.find((d) => d.ref.backendDomid === 7);
    expect(bad?.migrator.policy).toBe('refuse');
    expect(await bad?.migrator.test?.(ctx)).toEqual({
      ok: false,
      reason: expect.stringContaining('not owned by its backend domain 7'),
    });
  });
  it('a device dir another domain may write fails closed (its params decide nothing)', async () => {
    const xs = host();
    await xs.setPerms('/local/domain/0/backend/vbd/5/51712', [
      { domid: 0, access: 'n' },
      { domid: 5, access: 'w' },
    ]);
    const reg = new DeviceRegistry(defaultConfig(), probeOf({}));
    const r = await discoverDevices(xs, 5, new BackendIndex(xs, []), reg, log);
    const vbd = r.devices.find((d) => d.ref.type === 'vbd');
    expect(vbd?.migrator.policy).toBe('refuse');
    expect(vbd?.ref.backend).toEqual({});
    expect(await vbd?.migrator.test?.(ctx)).toEqual({
      ok: false,
      reason: 'backend /local/domain/0/backend/vbd/5/51712 is writable by a domain other than its backend 0',
    });
  });
  it('ownedOnlyBy: owner first, nobody else writes', () => {
    expect(
      ownedOnlyBy(
        [
          { domid: 0, access: 'n' },
          { domid: 5, access: 'r' },
        ],
        0,
      ),
    ).toBe(true);
    expect(ownedOnlyBy([{ domid: 0, access: 'w' }], 0)).toBe(false);
    expect(
      ownedOnlyBy(
        [
          { domid: 0, access: 'n' },
          { domid: 5, access: 'b' },
        ],
        0,
      ),
    ).toBe(false);
    expect(ownedOnlyBy([{ domid: 5, access: 'n' }], 0)).toBe(false);
    expect(ownedOnlyBy([], 0)).toBe(false);
  });
  it('domain name: dom0-owned and strict charset, else /vm/<uuid>/name, else none', async () => {
    const xs = host();
    expect(await trustedDomainName(xs, 5, log)).toBe('guest5');
    xs.put('/local/domain/5/name', 'x;reboot');
    expect(await trustedDomainName(xs, 5, log)).toBeUndefined();
    xs.put('/local/domain/5/vm', '/vm/0a1b-2c');
    xs.put('/vm/0a1b-2c/name', 'guest5-vm', [{ domid: 0, access: 'n' }]);
    expect(await trustedDomainName(xs, 5, log)).toBe('guest5-vm');
    xs.put('/local/domain/5/name', 'guest5', [{ domid: 5, access: 'b' }]);
    xs.put('/vm/0a1b-2c/name', 'guest5-vm', [{ domid: 5, access: 'n' }]);
    expect(await trustedDomainName(xs, 5, log)).toBeUndefined();
  });
});
