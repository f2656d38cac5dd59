// The built-in device policies, one small migrator each: nothing to do, refuse with a reason,
// PCI (refuse naming the BDF), and disks (shared -> ok, local file -> copy if configured, else refuse).
import type { DevMigrateConfig } from '../config/schema.js';
import { decideDisk, diskPath, type DiskDecision } from './disk-policy.js';
import { MirrorDiskMigrator } from './mirror-copy.js';
import { RsyncDiskMigrator } from './rsync-copy.js';
import type { StorageProbe } from './storage.js';
import type {
  DeviceMigrator,
  DeviceMigratorFactory,
  DeviceRef,
  OpContext,
  Phase,
  TestOutcome,
} from './types.js';

/** vif, console, vkbd, vfb, 9pfs: the toolstack recreates them at the target; no state to move. */
export class NothingToDo implements DeviceMigrator {
  constructor(readonly policy = 'nothing-to-do') {}
}

/** Vetoes at test; has nothing to undo. */
export class Refuse implements DeviceMigrator {
  readonly policy = 'refuse';
  constructor(readonly reason: string) {}
  test(): Promise<TestOutcome> {
    return Promise.resolve({ ok: false, reason: this.reason });
  }
}

export const noInspect = (): Promise<Record<string, string>> => Promise.resolve({});

export function readKeys(keys: readonly string[]): DeviceMigratorFactory['inspect'] {
  return async (read) => {
    const out: Record<string, string> = {};
    const vals = await Promise.all(keys.map((k) => read(k)));
    keys.forEach((k, i) => {
      const v = vals[i];
      if (v !== undefined) out[k] = v;
    });
    return out;
  };
}

export const nothingFactory: DeviceMigratorFactory = {
  inspect: noInspect,
  create: () => new NothingToDo(),
};

export function refuseFactory(reason: (dev: DeviceRef) => string): DeviceMigratorFactory {
  return { inspect: noInspect, create: (dev) => new Refuse(reason(dev)) };
}

const BDF = /^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$/;

/** pciback lists its devices as num_devs and dev-<i> = "DDDD:BB:DD.F" under one devid (0). */
export const pciFactory: DeviceMigratorFactory = {
  async inspect(read) {
    const n = Number(await read('num_devs'));
    const count = Number.isInteger(n) && n > 0 ? Math.min(n, 16) : 0;
    const out: Record<string, string> = {};
    const vals = await Promise.all(Array.from({ length: count }, (_, i) => read(`dev-${i}`)));
    const bdfs = vals.filter((v): v is string => v !== undefined && BDF.test(v));
    out.bdfs = bdfs.join(',');
    return out;
  },
  create(dev) {
    const bdfs = dev.backend.bdfs;
    const which =
      bdfs !== undefined && bdfs !== '' ? `device ${bdfs.split(',').join(', ')}` : `device ${dev.devid}`;
    return new Refuse(`pci passthrough ${which} cannot be migrated (detach it first)`);
  },
};

/** vbd/qdisk: decided at test, from the backend nodes and a probe of the path in dom0. */
export class DiskMigrator implements DeviceMigrator {
  policy = 'disk';
  private decision: DiskDecision | undefined;
  private method: DeviceMigrator | undefined;

  constructor(
    private readonly dev: DeviceRef,
    private readonly config: DevMigrateConfig,
    private readonly storage: StorageProbe,
    private readonly timeoutMs: number,
  ) {}

  private async decide(): Promise<DiskDecision> {
    if (this.decision !== undefined) return this.decision;
    const b = this.dev.backend;
    const path = diskPath(b.params ?? '');
    const info =
      path !== undefined &&
      this.dev.backendDomid === 0 &&
      !this.config.disks.sharedPathPrefixes.some((p) => path.startsWith(p))
        ? await this.storage.probe(path)
        : undefined;
    const d = decideDisk(b, info, this.config.disks, this.dev.backendDomid, this.dev.type === 'qdisk');
    this.decision = d;
    const { copy, mirror } = this.config.disks;
    const t = this.config.timeouts;
    if (d.action === 'copy' && copy !== undefined) {
      this.method = new RsyncDiskMigrator(d.path, d.size, copy, this.timeoutMs, t.killGraceMs, {
        allocated: d.allocated,
        syncMs: t.syncMs,
      });
    } else if (d.action === 'mirror' && mirror !== undefined) {
      this.method = new MirrorDiskMigrator(
        {
          domid: this.dev.domid,
          devid: this.dev.devid,
          domainUuid: this.dev.domainUuid,
          path: d.path,
          vdev: d.vdev,
          format: d.format,
          allocatedBytes: d.allocated,
        },
        mirror,
        {
          deviceTimeoutMs: this.timeoutMs,
          exportLifetimeMs: t.preSuspendMs + t.postSuspendMs + t.syncMs,
          killGraceMs: t.killGraceMs,
        },
      );
    }
    this.policy = this.method?.policy ?? d.action;
    return d;
  }

  async test(ctx: OpContext): Promise<TestOutcome> {
    const d = await this.decide();
    switch (d.action) {
      case 'refuse':
        return { ok: false, reason: d.reason };
      case 'shared':
        return { ok: true, note: `${d.path} ${d.why}` };
      case 'nothing':
        return { ok: true, note: d.why };
      case 'copy':
      case 'mirror':
        return this.method?.test !== undefined
          ? this.method.test(ctx)
          : { ok: false, reason: 'no copy method' };
    }
  }
  async preSuspend(ctx: OpContext): Promise<void> {
    await (await this.methodOrUndefined())?.preSuspend?.(ctx);
  }
  async postSuspend(ctx: OpContext): Promise<void> {
    await (await this.methodOrUndefined())?.postSuspend?.(ctx);
  }
  async sync(ctx: OpContext): Promise<void> {
    await (await this.methodOrUndefined())?.sync?.(ctx);
  }
  async recover(ctx: OpContext, lastPhase: Phase): Promise<void> {
    // After an agent restart nothing was decided yet: decide, so the method can clean up by name.
    await (await this.methodOrUndefined().catch(() => undefined))?.recover?.(ctx, lastPhase);
  }
  private async methodOrUndefined(): Promise<DeviceMigrator | undefined> {
    await this.decide();
    return this.method;
  }
}

/** Disk backend types: the mirror needs the domain uuid (libxl's QMP lock is named after it). */
export function diskFactory(
  config: DevMigrateConfig,
  storage: StorageProbe,
  timeoutMs: (type: string) => number,
): DeviceMigratorFactory {
  return {
    inspect: readKeys(['type', 'params', 'mode', 'dev']),
    needsDomainUuid: config.disks.mirror !== undefined && config.disks.mirror.qmpLockDir !== '',
    create: (dev) => new DiskMigrator(dev, config, storage, timeoutMs(dev.type)),
  };
}
