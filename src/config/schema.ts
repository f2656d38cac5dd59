// The agent's configuration file (/etc/xen/devmigrate.json): types, safe defaults and a
// hand-written validator whose errors name the key path and the reason (no schema package).

/** What an external tool is and how it is called. */
export interface ToolConfig {
  /** Absolute path of the executable; run with execFile-style argv, never through a shell. */
  path: string;
  /** Contract of the argv: Xen's external-device-migrate (-step N -host H -domname D -type T ...). */
  contract: 'external-device-migrate';
  /** Per-call timeout (SIGTERM, then SIGKILL after killGraceMs). */
  timeoutMs: number;
  /** Pass the backend's `type` node (vbd: phy/file/...) as -subtype when it is a safe word. */
  passSubtype: boolean;
}

export interface DeviceTypeConfig {
  /** When set, this tool drives every phase of the type (it replaces the built-in policy). */
  tool?: ToolConfig;
  /** Per-device timeout of each phase, overriding timeouts.device. */
  timeoutMs?: number;
}

export interface RsyncCopyConfig {
  method: 'rsync';
  /** rsync executable. */
  rsync: string;
  /** Remote shell as an argv array (joined for rsync -e; each element is a plain word). */
  rsh: string[];
  /** Destination path at the target = remoteRoot + source path ("/" = the same path). */
  remoteRoot: string;
  /** Extra rsync options (each validated as a plain option word). */
  extraArgs: string[];
  /** Write over a file already at the destination path (validated default false: refuse at test). */
  reuseExisting?: boolean;
  /** Copy holes as holes (`--sparse`; validated default true): thin images stay thin. */
  sparse?: boolean;
}

/**
 * Live mirroring of QEMU-served (qdisk) disks: the source QEMU runs blockdev-mirror to an NBD
 * export of the target image that qemu-nbd serves on the destination, reached through a unix
 * socket forwarded by the remote shell (ssh -L). See docs/config.md "Disk methods".
 */
export interface MirrorConfig {
  /** Remote shell argv; the tunnel adds `-o ExitOnForwardFailure=yes -o StreamLocalBindUnlink=yes -L`. */
  rsh: string[];
  /** Destination path at the target = remoteRoot + source path ("/" = the same path). */
  remoteRoot: string;
  /** The guest QEMU's QMP socket; `%d` is replaced by the domid (libxl's is qmp-libxl-<domid>). */
  qmpPath: string;
  /** Where libxl keeps its per-domain QMP lock (userdata-l.<domid>.<uuid>.qmp-socket-lock); "" = no lock. */
  qmpLockDir: string;
  /** Local folder (created 0700) of the forwarded sockets. */
  runDir: string;
  /** Folder on the destination (created 0700) of qemu-nbd's socket. */
  remoteRunDir: string;
  /** Programs on the destination. */
  qemuNbd: string;
  qemuImg: string;
  /** write-blocking: every guest write completes on both sides (in sync once ready); background: the target trails. */
  copyMode: 'write-blocking' | 'background';
  /**
   * qemu-nbd's cache mode for the target. none (O_DIRECT): nothing of the target waits in the
   * destination's page cache, so the flush when the job ends stays as small as the guest's last
   * writes whatever the disk's size; writeback: through the page cache. A destination
   * filesystem that refuses O_DIRECT gets writeback, with a warning.
   */
  targetCache: 'none' | 'writeback';
  /** Write over an image already at the destination path (default: refuse at test). */
  reuseExisting: boolean;
  /** Bound on each QMP exchange (connect + greeting + one command) and on the export's start. */
  qmpTimeoutMs: number;
  /** Bulk copy rate limit (blockdev-mirror `speed`), bytes/s; 0 = unlimited. */
  bandwidthBytesPerSec: number;
}

export interface DisksConfig {
  /** Paths under these prefixes are on shared storage (e.g. "/srv/nfs/", "/dev/mapper/shared-"). */
  sharedPathPrefixes: string[];
  /** Filesystem type names (as `stat -f -c %T` prints them) that count as shared storage. */
  sharedFsTypes: string[];
  /** How to copy local file-backed images; absent -> such disks are refused. */
  copy?: RsyncCopyConfig;
  /** Mirror QEMU-served (qdisk) images live instead of copying them; absent -> they use `copy`. */
  mirror?: MirrorConfig;
}

export interface TimeoutsConfig {
  /** Whole phase (all devices of it), per phase. */
  testMs: number;
  preSuspendMs: number;
  postSuspendMs: number;
  syncMs: number;
  recoverMs: number;
  /** Default per-device timeout of one operation (clamped by the phase timeout). */
  deviceMs: number;
  /** Guest's ack of control/shutdown and the domain reaching shutdown(suspend) (libxl: 60 s each). */
  suspendAckMs: number;
  suspendMs: number;
  /** suspend=toolstack: how long to wait to see the toolstack suspend the domain. */
  toolstackSuspendMs: number;
  /** steps mode: longest wait for the requester's next control before the job is recovered. */
  stepIdleMs: number;
  /** SIGTERM -> SIGKILL grace for external processes. */
  killGraceMs: number;
}

export interface LimitsConfig {
  /** Jobs running phases at once. 6: measured best p99 downtime and throughput (bench c); XAPI uses 10. */
  maxJobs: number;
  /** Device operations in flight over all jobs. */
  maxDeviceOps: number;
  /** Of maxDeviceOps, slots only downtime-critical operations (post-suspend, sync, recover) may use. */
  reservedCriticalOps: number;
}

/** The Prometheus textfile for node_exporter's textfile collector (docs/operations.md, "Metrics"). */
export interface MetricsConfig {
  enabled: boolean;
  /** Absolute path of a `.prom` file; written (temp file + rename) only when its folder exists. */
  textfile: string;
}

export interface DevMigrateConfig {
  /** XenStore socket; undefined -> libxenstore's discovery (XENSTORED_PATH, /run/xenstored/socket). */
  xenstoredPath?: string;
  logLevel: 'error' | 'warn' | 'notice' | 'info' | 'debug';
  /** Devices of unknown backend types: refuse the migration (fail closed) or ignore them. */
  unknownDevices: 'refuse' | 'ignore';
  /** Backend domains to search for the guest's devices; empty -> scan every domain's backend/. */
  backendDomains: number[];
  timeouts: TimeoutsConfig;
  limits: LimitsConfig;
  disks: DisksConfig;
  /** Per backend type settings (vbd, vtpm, vusb, pci, ...). */
  devices: Record<string, DeviceTypeConfig>;
  metrics: MetricsConfig;
}

export const DEFAULT_CONFIG_PATH = '/etc/xen/devmigrate.json';

export const DEFAULT_TOOL_TIMEOUT_MS = 40_000;

export function defaultConfig(): DevMigrateConfig {
  return {
    logLevel: 'info',
    unknownDevices: 'refuse',
    backendDomains: [],
    timeouts: {
      testMs: 60_000,
      preSuspendMs: 3_600_000,
      postSuspendMs: 300_000,
      syncMs: 300_000,
      recoverMs: 120_000,
      deviceMs: 3_600_000,
      suspendAckMs: 60_000,
      suspendMs: 60_000,
      toolstackSuspendMs: 600_000,
      stepIdleMs: 600_000,
      killGraceMs: 2_000,
    },
    limits: { maxJobs: 6, maxDeviceOps: 128, reservedCriticalOps: 32 },
    disks: {
      sharedPathPrefixes: [],
      sharedFsTypes: ['nfs', 'nfs4', 'cifs', 'smb2', 'ceph', 'gfs2', 'ocfs2', 'glusterfs', 'lustre'],
    },
    devices: {},
    // Debian's prometheus-node-exporter reads this folder (--collector.textfile.directory).
    metrics: { enabled: true, textfile: '/var/lib/prometheus/node-exporter/xen-devmigrate.prom' },
  };
}

/** A configuration value was refused: `path` is the key path (e.g. "timeouts.testMs"). */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly keyPath: string,
    readonly reason: string,
  ) {
    super(`${keyPath === '' ? '(root)' : keyPath}: ${reason}`);
  }
}

/** Plain words passed to processes: no spaces, quotes or shell metacharacters. */
export const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]{1,255}$/;
/** Absolute path made of safe characters, no "..", no "//". */
const SAFE_ABS_PATH = /^\/[A-Za-z0-9_.+@%=,:/-]{0,1023}$/;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function join(base: string, key: string): string {
  return base === '' ? key : `${base}.${key}`;
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

function checkKeys(obj: JsonObject, at: string, allowed: readonly string[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      throw new ConfigError(join(at, k), `unknown key (allowed: ${allowed.join(', ')})`);
    }
  }
}

function obj(v: unknown, at: string): JsonObject {
  if (!isObject(v)) throw new ConfigError(at, `must be an object, got ${typeName(v)}`);
  return v;
}

function int(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw new ConfigError(at, `must be an integer, got ${typeName(v)}`);
  }
  if (v < min || v > max) throw new ConfigError(at, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

function bool(v: unknown, at: string): boolean {
  if (typeof v !== 'boolean') throw new ConfigError(at, `must be true or false, got ${typeName(v)}`);
  return v;
}

function oneOf<T extends string>(v: unknown, at: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new ConfigError(at, `must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}

function absPath(v: unknown, at: string): string {
  if (typeof v !== 'string') throw new ConfigError(at, `must be a string, got ${typeName(v)}`);
  if (!SAFE_ABS_PATH.test(v) || v.includes('//') || v.split('/').includes('..')) {
    throw new ConfigError(at, 'must be an absolute path of [A-Za-z0-9_.+@%=,:/-] without ".." or "//"');
  }
  return v;
}

function word(v: unknown, at: string): string {
  if (typeof v !== 'string' || !SAFE_WORD.test(v)) {
    throw new ConfigError(
      at,
      'must be a plain word of [A-Za-z0-9_@%+=:,./-] (no spaces or shell characters)',
    );
  }
  return v;
}

function arrayOf<T>(v: unknown, at: string, item: (x: unknown, at: string) => T, maxLen = 64): T[] {
  if (!Array.isArray(v)) throw new ConfigError(at, `must be an array, got ${typeName(v)}`);
  if (v.length > maxLen) throw new ConfigError(at, `at most ${maxLen} entries`);
  return v.map((x, i) => item(x, `${at}[${i}]`));
}

const DOMID_MAX = 32751; // DOMID_FIRST_RESERVED - 1
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

function validateTool(v: unknown, at: string, defaults: DevMigrateConfig): ToolConfig {
  const o = obj(v, at);
  checkKeys(o, at, ['path', 'contract', 'timeoutMs', 'passSubtype']);
  if (o.path === undefined) throw new ConfigError(join(at, 'path'), 'is required');
  return {
    path: absPath(o.path, join(at, 'path')),
    contract:
      o.contract === undefined
        ? 'external-device-migrate'
        : oneOf(o.contract, join(at, 'contract'), ['external-device-migrate'] as const),
    timeoutMs:
      o.timeoutMs === undefined
        ? Math.min(DEFAULT_TOOL_TIMEOUT_MS, defaults.timeouts.deviceMs)
        : int(o.timeoutMs, join(at, 'timeoutMs'), 100, DAY_MS),
    passSubtype: o.passSubtype === undefined ? true : bool(o.passSubtype, join(at, 'passSubtype')),
  };
}

const DEVICE_TYPE = /^[a-z][a-z0-9_-]{0,31}$/;

export const DEFAULT_RSH = ['ssh', '-o', 'BatchMode=yes'];

function rshOf(v: unknown, at: string): string[] {
  const rsh = v === undefined ? [...DEFAULT_RSH] : arrayOf(v, at, word, 16);
  if (rsh.length === 0) throw new ConfigError(at, 'must name a command');
  return rsh;
}

/** A folder whose sockets must fit sockaddr_un (108 bytes) with a file name added. */
function socketDir(v: unknown, at: string): string {
  const p = absPath(v, at);
  if (p.length > 64) throw new ConfigError(at, 'at most 64 characters (unix socket paths are short)');
  return p;
}

function validateMirror(v: unknown): MirrorConfig {
  const at = 'disks.mirror';
  const m = obj(v, at);
  checkKeys(m, at, [
    'rsh',
    'remoteRoot',
    'qmpPath',
    'qmpLockDir',
    'runDir',
    'remoteRunDir',
    'qemuNbd',
    'qemuImg',
    'copyMode',
    'targetCache',
    'reuseExisting',
    'qmpTimeoutMs',
    'bandwidthBytesPerSec',
  ]);
  const qmpPath = m.qmpPath === undefined ? '/var/run/xen/qmp-libxl-%d' : absPath(m.qmpPath, `${at}.qmpPath`);
  if (qmpPath.split('%d').length !== 2 || qmpPath.replace('%d', '').includes('%')) {
    throw new ConfigError(`${at}.qmpPath`, 'must hold "%d" (the domid) exactly once and no other "%"');
  }
  return {
    rsh: rshOf(m.rsh, `${at}.rsh`),
    remoteRoot: m.remoteRoot === undefined ? '/' : absPath(m.remoteRoot, `${at}.remoteRoot`),
    qmpPath,
    qmpLockDir:
      m.qmpLockDir === undefined
        ? '/var/lib/xen'
        : m.qmpLockDir === ''
          ? ''
          : absPath(m.qmpLockDir, `${at}.qmpLockDir`),
    runDir: m.runDir === undefined ? '/run/devmigrate' : socketDir(m.runDir, `${at}.runDir`),
    remoteRunDir:
      m.remoteRunDir === undefined ? '/run/devmigrate' : socketDir(m.remoteRunDir, `${at}.remoteRunDir`),
    qemuNbd: m.qemuNbd === undefined ? '/usr/bin/qemu-nbd' : absPath(m.qemuNbd, `${at}.qemuNbd`),
    qemuImg: m.qemuImg === undefined ? '/usr/bin/qemu-img' : absPath(m.qemuImg, `${at}.qemuImg`),
    copyMode:
      m.copyMode === undefined
        ? 'write-blocking'
        : oneOf(m.copyMode, `${at}.copyMode`, ['write-blocking', 'background'] as const),
    targetCache:
      m.targetCache === undefined
        ? 'none'
        : oneOf(m.targetCache, `${at}.targetCache`, ['none', 'writeback'] as const),
    reuseExisting: m.reuseExisting === undefined ? false : bool(m.reuseExisting, `${at}.reuseExisting`),
    qmpTimeoutMs:
      m.qmpTimeoutMs === undefined ? 10_000 : int(m.qmpTimeoutMs, `${at}.qmpTimeoutMs`, 100, HOUR_MS),
    bandwidthBytesPerSec:
      m.bandwidthBytesPerSec === undefined
        ? 0
        : int(m.bandwidthBytesPerSec, `${at}.bandwidthBytesPerSec`, 0, Number.MAX_SAFE_INTEGER),
  };
}

/** Validates parsed JSON; unknown keys are errors (a typo must not silently fall back to a default). */
export function validateConfig(raw: unknown): DevMigrateConfig {
  const cfg = defaultConfig();
  const root = obj(raw, '');
  checkKeys(root, '', [
    '$comment',
    'xenstoredPath',
    'logLevel',
    'unknownDevices',
    'backendDomains',
    'timeouts',
    'limits',
    'disks',
    'devices',
    'metrics',
  ]);
  if (root.xenstoredPath !== undefined) cfg.xenstoredPath = absPath(root.xenstoredPath, 'xenstoredPath');
  if (root.logLevel !== undefined) {
    cfg.logLevel = oneOf(root.logLevel, 'logLevel', ['error', 'warn', 'notice', 'info', 'debug'] as const);
  }
  if (root.unknownDevices !== undefined) {
    cfg.unknownDevices = oneOf(root.unknownDevices, 'unknownDevices', ['refuse', 'ignore'] as const);
  }
  if (root.backendDomains !== undefined) {
    cfg.backendDomains = arrayOf(root.backendDomains, 'backendDomains', (x, at) => int(x, at, 0, DOMID_MAX));
  }
  if (root.timeouts !== undefined) {
    const t = obj(root.timeouts, 'timeouts');
    const keys = Object.keys(cfg.timeouts) as (keyof TimeoutsConfig)[];
    checkKeys(t, 'timeouts', keys);
    for (const k of keys) {
      if (t[k] !== undefined) cfg.timeouts[k] = int(t[k], `timeouts.${k}`, 10, DAY_MS);
    }
  }
  if (root.limits !== undefined) {
    const l = obj(root.limits, 'limits');
    checkKeys(l, 'limits', ['maxJobs', 'maxDeviceOps', 'reservedCriticalOps']);
    if (l.maxJobs !== undefined) cfg.limits.maxJobs = int(l.maxJobs, 'limits.maxJobs', 1, 1000);
    if (l.maxDeviceOps !== undefined) {
      cfg.limits.maxDeviceOps = int(l.maxDeviceOps, 'limits.maxDeviceOps', 1, 10_000);
    }
    if (l.reservedCriticalOps !== undefined) {
      cfg.limits.reservedCriticalOps = int(l.reservedCriticalOps, 'limits.reservedCriticalOps', 0, 10_000);
    }
    if (cfg.limits.reservedCriticalOps >= cfg.limits.maxDeviceOps) {
      throw new ConfigError('limits.reservedCriticalOps', 'must be smaller than limits.maxDeviceOps');
    }
  }
  if (root.disks !== undefined) {
    const d = obj(root.disks, 'disks');
    checkKeys(d, 'disks', ['sharedPathPrefixes', 'sharedFsTypes', 'copy', 'mirror']);
    if (d.sharedPathPrefixes !== undefined) {
      cfg.disks.sharedPathPrefixes = arrayOf(d.sharedPathPrefixes, 'disks.sharedPathPrefixes', absPath);
    }
    if (d.sharedFsTypes !== undefined) {
      cfg.disks.sharedFsTypes = arrayOf(d.sharedFsTypes, 'disks.sharedFsTypes', (x, at) => {
        if (typeof x !== 'string' || !/^[a-z0-9._/-]{1,32}$/.test(x)) {
          throw new ConfigError(at, 'must be a filesystem type name such as "nfs" or "fuse.glusterfs"');
        }
        return x;
      });
    }
    if (d.copy !== undefined) {
      const c = obj(d.copy, 'disks.copy');
      checkKeys(c, 'disks.copy', [
        'method',
        'rsync',
        'rsh',
        'remoteRoot',
        'extraArgs',
        'reuseExisting',
        'sparse',
      ]);
      const method = oneOf(c.method, 'disks.copy.method', ['rsync'] as const);
      const rsh = rshOf(c.rsh, 'disks.copy.rsh');
      const extraArgs =
        c.extraArgs === undefined
          ? []
          : arrayOf(c.extraArgs, 'disks.copy.extraArgs', (x, at) => {
              const w = word(x, at);
              if (!w.startsWith('--'))
                throw new ConfigError(at, 'must be a long option such as "--bwlimit=100M"');
              return w;
            });
      cfg.disks.copy = {
        method,
        rsync: c.rsync === undefined ? '/usr/bin/rsync' : absPath(c.rsync, 'disks.copy.rsync'),
        rsh,
        remoteRoot: c.remoteRoot === undefined ? '/' : absPath(c.remoteRoot, 'disks.copy.remoteRoot'),
        extraArgs,
        reuseExisting:
          c.reuseExisting === undefined ? false : bool(c.reuseExisting, 'disks.copy.reuseExisting'),
        sparse: c.sparse === undefined ? true : bool(c.sparse, 'disks.copy.sparse'),
      };
    }
    if (d.mirror !== undefined) cfg.disks.mirror = validateMirror(d.mirror);
  }
  if (root.metrics !== undefined) {
    const m = obj(root.metrics, 'metrics');
    checkKeys(m, 'metrics', ['enabled', 'textfile']);
    if (m.enabled !== undefined) cfg.metrics.enabled = bool(m.enabled, 'metrics.enabled');
    if (m.textfile !== undefined) {
      const f = absPath(m.textfile, 'metrics.textfile');
      if (!f.endsWith('.prom'))
        throw new ConfigError('metrics.textfile', 'must end in .prom (node_exporter reads only those)');
      cfg.metrics.textfile = f;
    }
  }
  if (root.devices !== undefined) {
    const devs = obj(root.devices, 'devices');
    for (const [type, v] of Object.entries(devs)) {
      const at = `devices.${type}`;
      if (!DEVICE_TYPE.test(type)) throw new ConfigError(at, 'device type must match [a-z][a-z0-9_-]{0,31}');
      const o = obj(v, at);
      checkKeys(o, at, ['tool', 'timeoutMs']);
      const dc: DeviceTypeConfig = {};
      if (o.tool !== undefined) dc.tool = validateTool(o.tool, join(at, 'tool'), cfg);
      if (o.timeoutMs !== undefined) dc.timeoutMs = int(o.timeoutMs, join(at, 'timeoutMs'), 10, DAY_MS);
      cfg.devices[type] = dc;
    }
  }
  return cfg;
}
