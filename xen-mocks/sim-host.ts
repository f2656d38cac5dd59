// A simulated Xen host for tests, the agent and the demo: from a small JSON description it
// creates the domains in the simulated hypervisor (harness), lays out XenStore as libxl does
// (sim-host-layout.ts) and hands back one handle per guest, able to start its simulated kernel.
import { readFile } from 'node:fs/promises';
import { connectXenStore } from '../src/xenstore/index.js';
import type { Perm, XenStore, XsOps } from '../src/xenstore/types.js';
import type { GuestHandle, XenstoredHarness } from './harness.js';
import { startSimGuest } from './sim-guest.js';
import type { SimGuest, SimGuestOptions } from './sim-guest.js';
import { dom0Layout, guestDevices, guestLayout, validateHost } from './sim-host-layout.js';
import type { DeviceRef, GuestDescription, HostDescription, XsNode } from './sim-host-layout.js';

export type { DeviceDescription, DeviceRef, GuestDescription, HostDescription } from './sim-host-layout.js';
export { HostDescriptionError, guestLayout, guestDevices, vdevToDevid } from './sim-host-layout.js';

export interface SimHostGuest {
  readonly domid: number;
  readonly name: string;
  readonly uuid: string;
  readonly hvm: boolean;
  readonly devices: DeviceRef[];
  /** The ring bridge socket: a XenStore connection there is this domain. */
  readonly socketPath: string;
  /** Starts the simulated guest kernel (in this process) speaking through the bridge. */
  boot(opts?: Omit<SimGuestOptions, 'domid' | 'socket' | 'stateDir'>): Promise<SimGuest>;
}

export interface SimHost {
  readonly guests: ReadonlyMap<number, SimHostGuest>;
  guest(domid: number): SimHostGuest;
  /** Stops the guest kernels started through boot() (the harness owns bridges and xenstored). */
  close(): Promise<void>;
}

export async function loadHostDescription(file: string): Promise<HostDescription> {
  const desc = JSON.parse(await readFile(file, 'utf8')) as HostDescription;
  validateHost(desc);
  return desc;
}

/** Writes nodes in one transaction; every node gets its explicit or inherited perms set, as libxl leaves them. */
export async function writeNodes(xs: XenStore, nodes: readonly XsNode[]): Promise<void> {
  await xs.transaction(async (tx: XsOps) => {
    const eff = new Map<string, Perm[]>();
    const inherited = (path: string): Perm[] | undefined => {
      for (let p = path; p.lastIndexOf('/') > 0;) {
        p = p.slice(0, p.lastIndexOf('/'));
        const found = eff.get(p);
        if (found !== undefined) return found;
      }
      return undefined;
    };
    for (const n of nodes) {
      await tx.write(n.path, n.value);
      const perms = n.perms ?? inherited(n.path);
      if (perms !== undefined) {
        await tx.setPerms(n.path, perms);
        eff.set(n.path, perms);
      }
    }
  });
}

/**
 * Creates every guest of `desc` on the harness (domain in the simulated hypervisor, INTRODUCE,
 * ring bridge), then lays out its XenStore nodes and devices as libxl would.
 */
export async function createSimHost(harness: XenstoredHarness, desc: HostDescription): Promise<SimHost> {
  validateHost(desc);
  const xs = await connectXenStore({ path: harness.socketPath, timeoutMs: 10_000 });
  const guests = new Map<number, SimHostGuest>();
  const booted = new Set<SimGuest>();
  try {
    await writeNodes(xs, dom0Layout(desc));
    for (const g of desc.guests) {
      const handle: GuestHandle = await harness.addGuest(g.domid, { hvm: g.hvm ?? false, name: g.name });
      if (g.hvm === true) {
        // HVM_PARAM_CALLBACK_IRQ != 0 is how libxl tells that PV drivers are up.
        await harness.setDomain(g.domid, { hvmParams: { 0: g.pvDrivers === false ? 0 : 1 } });
      }
      await writeNodes(xs, guestLayout(g));
      guests.set(g.domid, makeGuest(harness, g, handle, booted));
    }
  } finally {
    await xs.close();
  }
  return {
    guests,
    guest(domid: number) {
      const g = guests.get(domid);
      if (g === undefined) throw new Error(`no guest ${domid} on this simulated host`);
      return g;
    },
    async close() {
      const all = [...booted];
      booted.clear();
      await Promise.all(all.map((g) => g.close().catch(() => undefined)));
    },
  };
}

function makeGuest(
  harness: XenstoredHarness,
  g: GuestDescription,
  handle: GuestHandle,
  booted: Set<SimGuest>,
): SimHostGuest {
  return {
    domid: g.domid,
    name: g.name,
    uuid: g.uuid,
    hvm: g.hvm ?? false,
    devices: guestDevices(g),
    socketPath: handle.socketPath,
    async boot(opts = {}) {
      const guest = await startSimGuest({
        libxenctrlPath: harness.env['DEVMIGRATE_LIBXENCTRL'],
        ...opts,
        domid: g.domid,
        socket: handle.socketPath,
        stateDir: harness.stateDir,
      });
      booted.add(guest);
      return guest;
    },
  };
}
