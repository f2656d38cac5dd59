// Which migrator serves a backend type: an external tool when one is configured for the type,
// else the built-in policy, else the unknown-type policy (refuse = fail closed, by default).
import type { DevMigrateConfig } from '../config/schema.js';
import { ExternalToolMigrator } from './external-tool.js';
import { diskFactory, nothingFactory, pciFactory, readKeys, refuseFactory, NothingToDo } from './policies.js';
import { realStorageProbe, type StorageProbe } from './storage.js';
import type { DeviceMigratorFactory } from './types.js';

export const NOTHING_TO_DO_TYPES = ['vif', 'console', 'vkbd', 'vfb', '9pfs'] as const;
export const DISK_TYPES = ['vbd', 'qdisk', 'vbd3'] as const;

export class DeviceRegistry {
  private readonly factories = new Map<string, DeviceMigratorFactory>();

  constructor(
    private readonly config: DevMigrateConfig,
    storage: StorageProbe = realStorageProbe,
  ) {
    for (const t of NOTHING_TO_DO_TYPES) this.factories.set(t, nothingFactory);
    const disks = diskFactory(config, storage, (t) => this.deviceTimeoutMs(t));
    for (const t of DISK_TYPES) this.factories.set(t, disks);
    this.factories.set('pci', pciFactory);
    this.factories.set(
      'vtpm',
      refuseFactory(
        () =>
          'vtpm needs an external tool (devices.vtpm.tool) and none is configured; the vTPM packaged with Xen cannot migrate',
      ),
    );
    for (const t of ['vusb', 'qusb']) {
      this.factories.set(
        t,
        refuseFactory(() => `${t} devices cannot migrate without an external tool (devices.${t}.tool)`),
      );
    }
  }

  /** Per-device timeout for one operation of a type. */
  deviceTimeoutMs(type: string): number {
    return this.config.devices[type]?.timeoutMs ?? this.config.timeouts.deviceMs;
  }

  /** Registers (or replaces) the built-in factory of a type; a configured tool still wins. */
  register(type: string, factory: DeviceMigratorFactory): void {
    this.factories.set(type, factory);
  }

  factoryFor(type: string): DeviceMigratorFactory {
    const tool = this.config.devices[type]?.tool;
    if (tool !== undefined) {
      return {
        inspect: tool.passSubtype ? readKeys(['type']) : () => Promise.resolve({}),
        create: (dev) => new ExternalToolMigrator(dev, tool, this.config.timeouts.killGraceMs),
      };
    }
    const f = this.factories.get(type);
    if (f !== undefined) return f;
    if (this.config.unknownDevices === 'ignore') {
      return { inspect: () => Promise.resolve({}), create: () => new NothingToDo('ignored-unknown-type') };
    }
    return refuseFactory((dev) => `unknown device type ${dev.type}: refused (unknownDevices=refuse)`);
  }

  /** True when some device of these types will call an external tool (the domain name is then needed). */
  usesTool(type: string): boolean {
    return this.config.devices[type]?.tool !== undefined;
  }
}
