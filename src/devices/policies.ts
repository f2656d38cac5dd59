// The built-in device policies, one small migrator each: nothing to do, refuse with a reason,
// PCI (refuse naming the BDF), and disks (shared -> ok, local file -> copy if configured, else refuse).
import type { DevMigrateConfig } from '../config/schema.js';
import { decideDisk, diskPath, type DiskDecision } from './disk-policy.js';
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
  private copier: RsyncDiskMigrator | undefined;

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
    const d = decideDisk(b, info, this.config.disks, this.dev.backendDomid);
    this.decision = d;
    this.policy = d.action === 'copy' ? 'copy:rsync' : d.action;
    if (d.action === 'copy' && this.config.disks.copy !== undefined) {
      this.copier = new RsyncDiskMigrator(
        d.path,
        d.size,
        this.config.disks.copy,
        this.timeoutMs,
        this.config.timeouts.killGraceMs,
      );
    }
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
        return this.copier !== undefined ? this.copier.test(ctx) : { ok: false, reason: 'no copy method' };
    }
  }
  async preSuspend(ctx: OpContext): Promise<void> {
    await (await this.copierOrUndefined())?.preSuspend(ctx);
  }
  async postSuspend(ctx: OpContext): Promise<void> {
    await (await this.copierOrUndefined())?.postSuspend(ctx);
  }
  async sync(ctx: OpContext): Promise<void> {
    await (await this.copierOrUndefined())?.sync(ctx);
  }
  async recover(ctx: OpContext, lastPhase: Phase): Promise<void> {
    await this.copier?.recover(ctx, lastPhase);
  }
  private async copierOrUndefined(): Promise<RsyncDiskMigrator | undefined> {
    await this.decide();
    return this.copier;
  }
}
