// Specifies the simulated host's XenStore layout against libxl's rules: which nodes a guest owns,
// which dom0 owns and the guest may read, device numbering, and refusal of bad descriptions.
import { describe, it, expect } from 'vitest';
import {
  HostDescriptionError,
  guestDevices,
  guestLayout,
  validateHost,
  vdevToDevid,
} from '../../xen-mocks/sim-host-layout.js';
import type { GuestDescription } from '../../xen-mocks/sim-host-layout.js';

const guest: GuestDescription = {
  domid: 7,
  name: 'web',
  uuid: '6f1c3a52-8d0e-4b7a-9c11-2f5e7d8a9b01',
  devices: [
    { type: 'vbd', vdev: 'xvda', params: '/dev/vg/web', format: 'phy', mode: 'w' },
    { type: 'vif', mac: '00:16:3e:00:00:01' },
    { type: 'pci', bdf: ['0000:03:00.0', '0000:03:00.1'] },
  ],
};

function node(path: string) {
  const n = guestLayout(guest, 0).find((x) => x.path === path);
  if (n === undefined) throw new Error(`no node ${path}`);
  return n;
}

describe('libxl device numbering', () => {
  it('derives devids from vdev names like libxl', () => {
    expect(vdevToDevid('xvda')).toBe(51712);
    expect(vdevToDevid('xvdb')).toBe(51728);
    expect(vdevToDevid('hda')).toBe(768);
    expect(vdevToDevid('hdc')).toBe(5632);
    expect(vdevToDevid('sda')).toBe(2048);
    expect(vdevToDevid('xvdq')).toBe((1 << 28) | (16 << 8));
    expect(() => vdevToDevid('nvme0n1')).toThrow(HostDescriptionError);
  });
});

describe('domain layout (libxl__domain_make)', () => {
  it('home and /vm are dom0-owned, guest-readable; control nodes are guest-owned', () => {
    expect(node('/local/domain/7').perms).toEqual([
      { domid: 0, access: 'n' },
      { domid: 7, access: 'r' },
    ]);
    expect(node('/vm/6f1c3a52-8d0e-4b7a-9c11-2f5e7d8a9b01').perms?.[0]).toEqual({ domid: 0, access: 'n' });
    expect(node('/local/domain/7/control/shutdown')).toMatchObject({
      value: '',
      perms: [{ domid: 7, access: 'n' }],
    });
    expect(node('/local/domain/7/control/feature-suspend').perms).toEqual([{ domid: 7, access: 'n' }]);
    expect(node('/local/domain/7/control/platform-feature-xs_reset_watches').perms).toBeUndefined();
    expect(node('/local/domain/7/vm').value).toBe('/vm/6f1c3a52-8d0e-4b7a-9c11-2f5e7d8a9b01');
    expect(node('/libxl/7').perms).toEqual([{ domid: 0, access: 'n' }]);
  });
});

describe('device layout (libxl__device_generic_add)', () => {
  it('backend owned by dom0 and readable by the guest; frontend owned by the guest and readable by dom0', () => {
    const be = '/local/domain/0/backend/vbd/7/51712';
    const fe = '/local/domain/7/device/vbd/51712';
    expect(node(be).perms).toEqual([
      { domid: 0, access: 'n' },
      { domid: 7, access: 'r' },
    ]);
    expect(node(fe).perms).toEqual([
      { domid: 7, access: 'n' },
      { domid: 0, access: 'r' },
    ]);
    expect(node(`${be}/frontend`).value).toBe(fe);
    expect(node(`${fe}/backend`).value).toBe(be);
    expect(node(`${be}/params`).value).toBe('/dev/vg/web');
    expect(node(`${be}/mode`).value).toBe('w');
    expect(node(`${fe}/state`).value).toBe('1');
    expect(node('/libxl/7/device/vbd/51712/params').value).toBe('/dev/vg/web');
  });

  it('lists PCI devices under one pci backend with dev-N BDFs', () => {
    expect(node('/local/domain/0/backend/pci/7/0/num_devs').value).toBe('2');
    expect(node('/local/domain/0/backend/pci/7/0/dev-1').value).toBe('0000:03:00.1');
    expect(guestDevices(guest).map((d) => `${d.kind}/${d.devid}`)).toEqual(['vbd/51712', 'vif/0', 'pci/0']);
  });
});

describe('description validation', () => {
  it('refuses bad names, uuids, BDFs and duplicate domids', () => {
    const ok = { guests: [guest] };
    expect(() => validateHost(ok)).not.toThrow();
    expect(() => validateHost({ guests: [{ ...guest, name: 'a b;rm' }] })).toThrow(HostDescriptionError);
    expect(() => validateHost({ guests: [{ ...guest, uuid: 'nope' }] })).toThrow(HostDescriptionError);
    expect(() => validateHost({ guests: [guest, guest] })).toThrow(/twice/);
    expect(() => validateHost({ guests: [{ ...guest, devices: [{ type: 'pci', bdf: '3:0.0' }] }] })).toThrow(
      /BDF/,
    );
  });
});
