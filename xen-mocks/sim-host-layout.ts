// The XenStore tree libxl builds for a domain and its devices (libxl_create.c libxl__domain_make,
// libxl_device.c libxl__device_generic_add), as data: a list of nodes with values and permissions.
// Pure, so the layout can be checked node by node; sim-host.ts writes it to a real xenstored.
import type { Perm } from '../src/xenstore/types.js';

export type VbdBackendType = 'vbd' | 'qdisk' | 'vbd3';

export type DeviceDescription =
  | {
      type: 'vbd';
      /** Guest device name, e.g. "xvda"; devid is derived from it as libxl does. */
      vdev: string;
      params: string;
      /** Backend "type" node: phy, file, ... */
      format?: string;
      mode?: 'r' | 'w';
      backend?: VbdBackendType;
      devtype?: 'disk' | 'cdrom';
      /** The simulated host creates the image (random bytes) when it is missing. */
      image?: { sizeMb: number };
    }
  | { type: 'vif'; devid?: number; mac: string; bridge?: string; script?: string }
  | { type: 'vtpm'; devid?: number; uuid: string }
  | { type: 'pci'; bdf: string | string[] }
  | { type: 'vusb'; devid?: number; version?: 2 | 3; ports?: number }
  | { type: 'console'; devid?: number };

export interface GuestDescription {
  domid: number;
  name: string;
  uuid: string;
  hvm?: boolean;
  /** HVM only: whether PV drivers are up (HVM_PARAM_CALLBACK_IRQ set). Default true. */
  pvDrivers?: boolean;
  memoryKb?: number;
  vcpus?: number;
  devices?: DeviceDescription[];
}

export interface HostDescription {
  dom0?: { name?: string };
  guests: GuestDescription[];
}

export interface XsNode {
  path: string;
  value: string;
  /** Set explicitly; nodes without perms inherit their parent's (xenstored's rule). */
  perms?: Perm[];
}

export interface DeviceRef {
  /** Frontend kind under device/ (vbd for every disk backend). */
  kind: string;
  /** Backend kind under backend/ (vbd, qdisk, vbd3, vif, ...). */
  backendKind: string;
  devid: number;
  frontend: string;
  backend: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const BDF_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

export class HostDescriptionError extends Error {
  override readonly name = 'HostDescriptionError';
}

/**
 * libxl_device_disk_dev_number for the common names: xvdX (202), hdX (3/22), sdX (8); "xvda" ->
 * 51712. Extended xvd numbering (index >= 16) uses (1 << 28) | (index << 8).
 */
export function vdevToDevid(vdev: string): number {
  const m = /^(xvd|hd|sd)([a-z]+)$/.exec(vdev);
  if (m === null || m[1] === undefined || m[2] === undefined)
    throw new HostDescriptionError(`unsupported vdev ${vdev}`);
  let idx = 0;
  for (const ch of m[2]) idx = idx * 26 + (ch.charCodeAt(0) - 96);
  idx -= 1;
  switch (m[1]) {
    case 'xvd':
      return idx < 16 ? (202 << 8) | (idx << 4) : (1 << 28) | (idx << 8);
    case 'sd':
      if (idx >= 16) throw new HostDescriptionError(`unsupported vdev ${vdev}`);
      return (8 << 8) | (idx << 4);
    default: {
      const hd = [3 << 8, (3 << 8) | 64, 22 << 8, (22 << 8) | 64][idx];
      if (hd === undefined) throw new HostDescriptionError(`unsupported vdev ${vdev}`);
      return hd;
    }
  }
}

export function validateHost(desc: HostDescription): void {
  const seen = new Set<number>();
  for (const g of desc.guests) {
    if (!Number.isInteger(g.domid) || g.domid < 1 || g.domid > 0x7fef)
      throw new HostDescriptionError(`bad domid ${g.domid}`);
    if (seen.has(g.domid)) throw new HostDescriptionError(`domid ${g.domid} used twice`);
    seen.add(g.domid);
    if (!NAME_RE.test(g.name)) throw new HostDescriptionError(`bad name ${JSON.stringify(g.name)}`);
    if (!UUID_RE.test(g.uuid)) throw new HostDescriptionError(`bad uuid ${JSON.stringify(g.uuid)}`);
    for (const d of g.devices ?? []) {
      if (d.type === 'pci') {
        for (const b of Array.isArray(d.bdf) ? d.bdf : [d.bdf]) {
          if (!BDF_RE.test(b)) throw new HostDescriptionError(`bad PCI BDF ${JSON.stringify(b)}`);
        }
      }
    }
  }
}

/** Devices of a guest with their resolved devids and paths (what the agent will find). */
export function guestDevices(g: GuestDescription): DeviceRef[] {
  const out: DeviceRef[] = [];
  const next: Record<string, number> = {};
  const ref = (kind: string, backendKind: string, devid: number): DeviceRef => ({
    kind,
    backendKind,
    devid,
    frontend: `/local/domain/${g.domid}/device/${kind}/${devid}`,
    backend: `/local/domain/0/backend/${backendKind}/${g.domid}/${devid}`,
  });
  const auto = (kind: string, given: number | undefined): number => {
    const n = given ?? next[kind] ?? 0;
    next[kind] = n + 1;
    return n;
  };
  for (const d of g.devices ?? []) {
    switch (d.type) {
      case 'vbd':
        out.push(ref('vbd', d.backend ?? 'vbd', vdevToDevid(d.vdev)));
        break;
      case 'pci':
        out.push(ref('pci', 'pci', 0));
        break;
      case 'console':
        out.push(ref('console', 'console', auto('console', d.devid ?? 1)));
        break;
      default:
        out.push(ref(d.type, d.type, auto(d.type, d.devid)));
    }
  }
  return out;
}

/** The nodes libxl writes for domain N, then for each device (backend, frontend, /libxl copy). */
export function guestLayout(g: GuestDescription, now = Date.now()): XsNode[] {
  const N = g.domid;
  const dom = `/local/domain/${N}`;
  const vm = `/vm/${g.uuid}`;
  const roperm: Perm[] = [
    { domid: 0, access: 'n' },
    { domid: N, access: 'r' },
  ];
  const rwperm: Perm[] = [{ domid: N, access: 'n' }];
  const noperm: Perm[] = [{ domid: 0, access: 'n' }];
  const mem = String(g.memoryKb ?? 262144);
  const nodes: XsNode[] = [
    { path: dom, value: '', perms: roperm },
    { path: vm, value: '', perms: roperm },
    { path: `/libxl/${N}`, value: '', perms: noperm },
    { path: `${vm}/uuid`, value: g.uuid },
    { path: `${vm}/name`, value: g.name },
    { path: `${vm}/start_time`, value: (now / 1000).toFixed(2) },
    { path: `${dom}/vm`, value: vm },
    { path: `${dom}/name`, value: g.name },
    { path: `${dom}/domid`, value: String(N) },
    { path: `${dom}/cpu`, value: '' },
    { path: `${dom}/memory`, value: '' },
    { path: `${dom}/memory/static-max`, value: mem },
    { path: `${dom}/memory/target`, value: mem },
    { path: `${dom}/control`, value: '' },
    { path: `${dom}/control/shutdown`, value: '', perms: rwperm },
    { path: `${dom}/control/feature-poweroff`, value: '', perms: rwperm },
    { path: `${dom}/control/feature-reboot`, value: '', perms: rwperm },
    { path: `${dom}/control/feature-suspend`, value: '', perms: rwperm },
    { path: `${dom}/control/sysrq`, value: '', perms: rwperm },
    { path: `${dom}/control/platform-feature-multiprocessor-suspend`, value: '1' },
    { path: `${dom}/control/platform-feature-xs_reset_watches`, value: '1' },
    { path: `${dom}/device`, value: '', perms: rwperm },
    { path: `${dom}/device/suspend/event-channel`, value: '', perms: rwperm },
    { path: `${dom}/data`, value: '', perms: rwperm },
    { path: `${dom}/drivers`, value: '', perms: rwperm },
    { path: `${dom}/feature`, value: '', perms: rwperm },
    { path: `${dom}/attr`, value: '', perms: rwperm },
    { path: `${dom}/error`, value: '', perms: rwperm },
    { path: `${dom}/store/port`, value: String(1000 + N) },
    { path: `${dom}/store/ring-ref`, value: String(0x100 + N) },
  ];
  for (let i = 0; i < (g.vcpus ?? 1); i++)
    nodes.push({ path: `${dom}/cpu/${i}/availability`, value: 'online' });
  if (g.hvm === true) {
    nodes.push({ path: `${dom}/memory/videoram`, value: '8192' });
    nodes.push({ path: `${dom}/hvmloader/bios`, value: 'seabios' });
    nodes.push({ path: `/libxl/${N}/dm-version`, value: 'qemu_xen' });
  }
  // The primary console: frontend at ~/console (guest-owned, dom0 reads), backend console/N/0.
  nodes.push(...deviceNodes(g, 'console', 'console', 0, `${dom}/console`, consoleNodes(), {}));
  const refs = guestDevices(g);
  (g.devices ?? []).forEach((d, i) => {
    const r = refs[i];
    if (r === undefined) return;
    const { back, front } = deviceEntries(d, r.devid);
    nodes.push(...deviceNodes(g, r.kind, r.backendKind, r.devid, r.frontend, back, front));
  });
  return nodes;
}

function consoleNodes(): Record<string, string> {
  return { protocol: 'vt100', type: 'xenconsoled', output: 'pty', name: '' };
}

/** libxl__device_generic_add: backend [n0, rN]; frontend [nN, r0]; /libxl/N/device/... dom0 only. */
function deviceNodes(
  g: GuestDescription,
  kind: string,
  backendKind: string,
  devid: number,
  frontend: string,
  back: Record<string, string>,
  front: Record<string, string>,
): XsNode[] {
  const N = g.domid;
  const backend = `/local/domain/0/backend/${backendKind}/${N}/${devid}`;
  const libxlPath = `/libxl/${N}/device/${kind}/${devid}`;
  const nodes: XsNode[] = [
    { path: `${libxlPath}/frontend`, value: frontend },
    { path: `${libxlPath}/backend`, value: backend },
    {
      path: backend,
      value: '',
      perms: [
        { domid: 0, access: 'n' },
        { domid: N, access: 'r' },
      ],
    },
    { path: `${backend}/frontend`, value: frontend },
    { path: `${backend}/frontend-id`, value: String(N) },
    { path: `${backend}/online`, value: '1' },
    // No real backend driver runs here: the simulated host shows backends already connected.
    { path: `${backend}/state`, value: '4' },
    ...Object.entries(back).map(([k, v]) => ({ path: `${backend}/${k}`, value: v })),
    {
      path: frontend,
      value: '',
      perms: [
        { domid: N, access: 'n' },
        { domid: 0, access: 'r' },
      ],
    },
    { path: `${frontend}/backend`, value: backend },
    { path: `${frontend}/backend-id`, value: '0' },
    { path: `${frontend}/state`, value: '1' },
    ...Object.entries(front).map(([k, v]) => ({ path: `${frontend}/${k}`, value: v })),
  ];
  // libxl keeps trustworthy copies of the backend's identifying nodes under /libxl.
  for (const k of ['params', 'type', 'mode', 'mac', 'bridge', 'uuid', 'num_devs', 'dev-0']) {
    const v = back[k];
    if (v !== undefined) nodes.push({ path: `${libxlPath}/${k}`, value: v });
  }
  return nodes;
}

function deviceEntries(
  d: DeviceDescription,
  devid: number,
): { back: Record<string, string>; front: Record<string, string> } {
  switch (d.type) {
    case 'vbd':
      return {
        back: {
          params: d.params,
          type: d.format ?? 'phy',
          mode: d.mode ?? 'w',
          dev: d.vdev,
          'device-type': d.devtype ?? 'disk',
          removable: '0',
          bootable: '1',
          'discard-enable': '1',
          script: '/etc/xen/scripts/block',
          'hotplug-status': 'connected',
        },
        front: { 'virtual-device': String(devid), 'device-type': d.devtype ?? 'disk' },
      };
    case 'vif':
      return {
        back: {
          mac: d.mac,
          bridge: d.bridge ?? 'xenbr0',
          script: d.script ?? '/etc/xen/scripts/vif-bridge',
          handle: String(devid),
          type: 'vif',
          'hotplug-status': 'connected',
        },
        front: { handle: String(devid), mac: d.mac },
      };
    case 'vtpm':
      return { back: { uuid: d.uuid, resume: 'False' }, front: { handle: String(devid) } };
    case 'pci': {
      const bdfs = Array.isArray(d.bdf) ? d.bdf : [d.bdf];
      const back: Record<string, string> = { num_devs: String(bdfs.length) };
      bdfs.forEach((b, i) => {
        back[`dev-${i}`] = b;
        back[`key-${i}`] = b;
        back[`vdev-${i}`] = `0000:00:${(i + 1).toString(16).padStart(2, '0')}.0`;
        back[`state-${i}`] = '1';
        back[`opts-${i}`] = 'msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict';
      });
      return { back, front: {} };
    }
    case 'vusb': {
      const ports = d.ports ?? 8;
      const back: Record<string, string> = {
        'num-ports': String(ports),
        'usb-ver': String(d.version ?? 2),
        type: 'devicemodel',
      };
      for (let p = 1; p <= ports; p++) back[`port/${p}`] = '';
      return { back, front: {} };
    }
    case 'console':
      return { back: consoleNodes(), front: {} };
  }
}

/** dom0's own nodes (xencommons writes these at boot). */
export function dom0Layout(desc: HostDescription): XsNode[] {
  return [
    { path: '/local/domain/0/name', value: desc.dom0?.name ?? 'Domain-0' },
    { path: '/local/domain/0/domid', value: '0' },
  ];
}
