// Finds a guest's devices from BACKEND nodes only: /local/domain/<b>/backend/<type>/<domid>/<devid>,
// trusted only when the <domid> directory is owned by backend domain b and writable by no other
// domain. Frontend nodes (and their `backend` pointers) are guest-writable and never consulted.
import type { Perm, XenStore, XsOps } from '../xenstore/types.js';
import { isXsErrno } from '../xenstore/errors.js';
import { backendDir } from '../migration/paths.js';
import { Refuse } from './policies.js';
import type { DeviceRegistry } from './registry.js';
import type { DeviceMigrator, DeviceRef, Logger } from './types.js';

export interface DiscoveredDevice {
  ref: DeviceRef;
  migrator: DeviceMigrator;
}

const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const TYPE_RE = /^[a-z][a-z0-9_-]{0,31}$/;
const DEVID_RE = /^[A-Za-z0-9_-]{1,32}$/;

/** Owned by `owner` and nobody else may write (first entry's letter is everyone else's default). */
export function ownedOnlyBy(perms: readonly Perm[], owner: number): boolean {
  const [first, ...rest] = perms;
  if (first === undefined || first.domid !== owner) return false;
  if (first.access === 'w' || first.access === 'b') return false;
  return rest.every((p) => p.domid === owner || p.access === 'n' || p.access === 'r');
}

async function dirOrEmpty(xs: XsOps, path: string): Promise<string[]> {
  try {
    return await xs.directory(path);
  } catch (err) {
    if (isXsErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

/**
 * Which domains serve backends, and of which types. Shared by concurrent jobs for a short time
 * (single-flight + TTL): a scan costs one op per domain on the host.
 */
export class BackendIndex {
  private cached: { at: number; value: Promise<Map<number, string[]>> } | undefined;

  constructor(
    private readonly xs: XenStore,
    private readonly fixedDomains: readonly number[],
    private readonly ttlMs = 1000,
  ) {}

  invalidate(): void {
    this.cached = undefined;
  }

  backends(): Promise<Map<number, string[]>> {
    const now = Date.now();
    if (this.cached !== undefined && now - this.cached.at < this.ttlMs) return this.cached.value;
    const value = this.scan();
    this.cached = { at: now, value };
    value.catch(() => {
      if (this.cached?.value === value) this.cached = undefined;
    });
    return value;
  }

  private async scan(): Promise<Map<number, string[]>> {
    const domains =
      this.fixedDomains.length > 0
        ? [...this.fixedDomains]
        : (await dirOrEmpty(this.xs, '/local/domain')).filter((d) => /^[0-9]{1,5}$/.test(d)).map(Number);
    const out = new Map<number, string[]>();
    await Promise.all(
      domains.map(async (b) => {
        const types = (await dirOrEmpty(this.xs, `/local/domain/${b}/backend`)).filter((t) =>
          TYPE_RE.test(t),
        );
        if (types.length > 0) out.set(b, types);
      }),
    );
    return out;
  }
}

export interface DiscoveryResult {
  devices: DiscoveredDevice[];
  /** XenStore operations spent (for the ops budget and the benchmark). */
  ops: number;
}

export async function discoverDevices(
  xs: XenStore,
  domid: number,
  index: BackendIndex,
  registry: DeviceRegistry,
  log: Logger,
): Promise<DiscoveryResult> {
  let ops = 0;
  const counted = async <T>(p: Promise<T>): Promise<T> => {
    ops += 1;
    return p;
  };
  let uuid: Promise<string | undefined> | undefined;
  const domainUuid = (): Promise<string | undefined> => {
    uuid ??= trustedDomainUuid(xs, domid, log).finally(() => {
      ops += 2;
    });
    return uuid;
  };
  const backends = await index.backends();
  const found: DiscoveredDevice[] = [];
  const perType: Promise<void>[] = [];
  for (const [b, types] of backends) {
    for (const type of types) {
      perType.push(
        (async () => {
          const dir = backendDir(b, type, domid);
          const devids = await counted(dirOrEmpty(xs, dir));
          if (devids.length === 0) return;
          const perms = await counted(xs.getPerms(dir));
          const trusted = ownedOnlyBy(perms, b);
          const factory = registry.factoryFor(type);
          await Promise.all(
            devids.map(async (devid) => {
              const ref: DeviceRef = {
                domid,
                backendDomid: b,
                type,
                devid,
                backendPath: `${dir}/${devid}`,
                backend: {},
              };
              if (!DEVID_RE.test(devid)) {
                log.warn(`ignoring backend device with a malformed id under ${dir}`, { devid });
                return;
              }
              if (!trusted) {
                log.warn(
                  `backend dir ${dir} is not owned by backend domain ${b} alone; its device fails closed`,
                  {
                    perms,
                  },
                );
                found.push({
                  ref,
                  migrator: new Refuse(`backend ${dir} is not owned by its backend domain ${b}`),
                });
                return;
              }
              // The device's own directory too (libxl sets its permissions explicitly; its nodes
              // inherit them, and only the backend domain or dom0 may change them): a device
              // directory another domain may write decides nothing.
              const [devPerms, backend] = await Promise.all([
                counted(xs.getPerms(`${dir}/${devid}`)),
                factory.inspect((key) => counted(xs.tryRead(`${dir}/${devid}/${key}`))),
              ]);
              if (!ownedOnlyBy(devPerms, b)) {
                log.warn(`backend device ${dir}/${devid} is writable by another domain; it fails closed`, {
                  perms: devPerms,
                });
                found.push({
                  ref,
                  migrator: new Refuse(
                    `backend ${dir}/${devid} is writable by a domain other than its backend ${b}`,
                  ),
                });
                return;
              }
              const full: DeviceRef = { ...ref, backend };
              if (factory.needsDomainUuid === true) {
                const u = await domainUuid();
                if (u !== undefined) full.domainUuid = u;
              }
              found.push({ ref: full, migrator: factory.create(full) });
            }),
          );
        })(),
      );
    }
  }
  await Promise.all(perType);
  found.sort((a, b) =>
    a.ref.type === b.ref.type
      ? a.ref.backendDomid - b.ref.backendDomid ||
        a.ref.devid.localeCompare(b.ref.devid, 'en', { numeric: true })
      : a.ref.type.localeCompare(b.ref.type),
  );
  return { devices: found, ops };
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The domain's uuid from /local/domain/<domid>/vm ("/vm/<uuid>", written by libxl), trusted only
 * when that node is owned by dom0 and writable by no other domain; otherwise undefined.
 */
export async function trustedDomainUuid(xs: XsOps, domid: number, log: Logger): Promise<string | undefined> {
  const path = `/local/domain/${domid}/vm`;
  const [vm, perms] = await Promise.all([xs.tryRead(path), xs.getPerms(path).catch(() => [] as Perm[])]);
  if (vm === undefined) return undefined;
  if (!ownedOnlyBy(perms, 0)) {
    log.warn(`${path} is writable by a guest; the domain uuid is not used`);
    return undefined;
  }
  const m = /^\/vm\/([0-9a-fA-F-]{36})$/.exec(vm);
  const u = m?.[1]?.toLowerCase();
  return u !== undefined && UUID_RE.test(u) ? u : undefined;
}

/**
 * The domain's name for external tools. /local/domain/<domid>/name is trusted only when owned by
 * dom0 and writable by no other domain (libxl makes it so), else /vm/<uuid>/name under the same
 * rule; the value must also match [A-Za-z0-9_.-]{1,64} and not start with '-'. Otherwise undefined.
 */
export async function trustedDomainName(xs: XsOps, domid: number, log: Logger): Promise<string | undefined> {
  const candidates = [`/local/domain/${domid}/name`];
  // The vm pointer decides which /vm/<uuid>/name is read: it must be dom0's too.
  const vmPath = `/local/domain/${domid}/vm`;
  const vm = await xs.tryRead(vmPath);
  if (vm !== undefined && /^\/vm\/[0-9a-fA-F-]{1,64}$/.test(vm)) {
    const vmPerms = await xs.getPerms(vmPath).catch(() => [] as Perm[]);
    if (ownedOnlyBy(vmPerms, 0)) candidates.push(`${vm}/name`);
    else log.warn(`${vmPath} is writable by a guest; /vm name not used`);
  }
  for (const path of candidates) {
    const name = await xs.tryRead(path);
    if (name === undefined) continue;
    let perms: Perm[];
    try {
      perms = await xs.getPerms(path);
    } catch {
      continue;
    }
    if (!ownedOnlyBy(perms, 0)) {
      log.warn(`${path} is writable by a guest; not used as the domain name`);
      continue;
    }
    if (!NAME_RE.test(name) || name.startsWith('-')) {
      log.warn(`${path} has characters outside [A-Za-z0-9_.-]; not used as the domain name`);
      continue;
    }
    return name;
  }
  return undefined;
}
