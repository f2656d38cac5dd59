// The DeviceMigrator interface: one ops table per device, every op optional (as libxl's
// checkpoint device ops), each returning an outcome to the engine. Device modules never write
// job state to XenStore: the engine does, from what they return or throw.
import type { Phase } from '../migration/state-machine.js';

export type { Phase };

/** One device of the guest, found from its BACKEND directory (owned by the backend domain). */
export interface DeviceRef {
  domid: number;
  backendDomid: number;
  /** Backend type directory name: vbd, qdisk, vif, vtpm, pci, ... */
  type: string;
  devid: string;
  backendPath: string;
  /** The backend nodes the type's factory asked for (absent nodes are missing). */
  backend: Readonly<Record<string, string>>;
  /** The domain's uuid, for factories that ask for it (needsDomainUuid), when it can be trusted. */
  domainUuid?: string;
}

/** What a job tells its devices; every value here has been validated by the engine. */
export interface JobContext {
  jobId: string;
  domid: number;
  target: string;
  live: boolean;
  /** Validated domain name (strict charset), or undefined when none could be trusted. */
  domainName?: string;
}

export interface Logger {
  error(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
  info(message: string, meta?: Record<string, unknown>): void;
  debug(message: string, meta?: Record<string, unknown>): void;
}

export interface OpContext {
  job: JobContext;
  /** Aborted on timeout, job abort or phase timeout: stop and return promptly. */
  signal: AbortSignal;
  log: Logger;
  /** Progress of this operation in its own units (bytes for a copy). Cheap: the engine coalesces. */
  progress(done: number, total: number): void;
  /**
   * Called before a tool process is spawned for this device: the engine records the tool in the
   * job (so that an agent restarted after a crash can stop it before recovering the device) and
   * returns the environment to give it and what to call when spawned and when ended.
   */
  toolProcess?(): Promise<ToolTracking>;
}

export interface ToolTracking {
  /** Added to the tool's environment (it marks the tool's processes). */
  env: Record<string, string>;
  /** The tool runs, leading its own process group. */
  spawned(pid: number): void;
  /** The tool has ended (or never started). */
  ended(): void;
}

export type TestOutcome = { ok: true; note?: string } | { ok: false; reason: string };

export interface DeviceMigrator {
  /** Short name of the policy chosen for the device (logged, written as devices/.../policy). */
  readonly policy: string;
  /** Step 0: may veto with a reason. Must not change anything. */
  test?(ctx: OpContext): Promise<TestOutcome>;
  /** Step 1, guest running (bulk copies). Throw DeviceOpError to fail. */
  preSuspend?(ctx: OpContext): Promise<void>;
  /** Step 2, guest suspended: keep it short (downtime). */
  postSuspend?(ctx: OpContext): Promise<void>;
  /** Step 3, guest suspended: wait until everything started is complete at the target. */
  sync?(ctx: OpContext): Promise<void>;
  /** Undo what phases up to and including lastPhase did; must be idempotent. */
  recover?(ctx: OpContext, lastPhase: Phase): Promise<void>;
}

/** A device op failed with a reason fit for one line in XenStore. */
export class DeviceOpError extends Error {
  override readonly name = 'DeviceOpError';
  constructor(
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(reason, options);
  }
}

/** Reads one backend node of the device (undefined when absent). */
export type BackendReader = (key: string) => Promise<string | undefined>;

export interface DeviceMigratorFactory {
  /** Reads what the policy needs from the backend (each read costs one XenStore op). */
  inspect(read: BackendReader): Promise<Record<string, string>>;
  /** The migrator needs the domain's uuid (read once per job from dom0-owned nodes). */
  needsDomainUuid?: boolean;
  create(dev: DeviceRef): DeviceMigrator;
}
