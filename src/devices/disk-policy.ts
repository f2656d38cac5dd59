// The vbd/qdisk policy as a pure decision: from the backend's type, params, mode and dev and what
// the storage probe saw, decide shared (nothing to do), mirror (a file image served by QEMU, when
// disks.mirror is configured), copy (a file image + disks.copy) or refuse.
import type { DisksConfig } from '../config/schema.js';
import { qdiskFormat, vdevOk, type MirrorFormat } from './mirror-plan.js';
import type { StorageInfo } from './storage.js';

export type DiskDecision =
  | { action: 'shared'; path: string; why: string }
  | { action: 'nothing'; why: string }
  | { action: 'copy'; path: string; size: number; allocated: number }
  | { action: 'mirror'; path: string; size: number; allocated: number; format: MirrorFormat; vdev: string }
  | { action: 'refuse'; reason: string };

/** Format prefixes blktap/qdisk put before the path in `params` ("aio:/x.img", "raw:/x.img"). */
const FORMAT_PREFIX = /^(aio|raw|qcow|qcow2|qed|vhd|vhdx|tapdisk|tap|tap2|file|phy):(?=\/)/;

/** The path a disk's params name, or undefined for non-path targets (iSCSI/NBD/RBD URLs...). */
export function diskPath(params: string): string | undefined {
  const p = params.replace(FORMAT_PREFIX, '');
  return p.startsWith('/') ? p : undefined;
}

export function isSharedPath(path: string, cfg: DisksConfig): boolean {
  return cfg.sharedPathPrefixes.some((pre) => path.startsWith(pre));
}

/**
 * Decides what to do with one disk. `info` is undefined when the path was not probed.
 * `servedByQemu`: the backend directory is `qdisk` (QEMU's xen-block serves it, libxl gave QEMU a
 * QMP socket): only such disks can be mirrored by QEMU.
 */
export function decideDisk(
  backend: { type?: string; params?: string; mode?: string; dev?: string },
  info: StorageInfo | undefined,
  cfg: DisksConfig,
  backendDomid: number,
  servedByQemu = false,
): DiskDecision {
  const params = backend.params ?? '';
  if (params === '') return { action: 'nothing', why: 'empty drive (no medium)' };
  const path = diskPath(params);
  if (path === undefined) {
    return {
      action: 'refuse',
      reason: `disk target ${JSON.stringify(params.slice(0, 60))} is not a path; configure an external tool`,
    };
  }
  if (isSharedPath(path, cfg)) return { action: 'shared', path, why: 'under a shared path prefix' };
  if (backendDomid !== 0) {
    return {
      action: 'refuse',
      reason: `disk ${path} is served by driver domain ${backendDomid}; dom0 cannot inspect it`,
    };
  }
  if (info === undefined || info.kind === 'missing')
    return { action: 'refuse', reason: `disk ${path} not found in dom0` };
  if (cfg.sharedFsTypes.includes(info.fsType)) {
    return { action: 'shared', path, why: `on shared filesystem ${info.fsType}` };
  }
  if (info.kind === 'block') {
    return { action: 'refuse', reason: `local block device ${path} is not on shared storage` };
  }
  if (info.kind !== 'file')
    return { action: 'refuse', reason: `disk ${path} is neither a file nor a block device` };
  const allocated = info.allocated ?? info.size;
  const format = qdiskFormat(params);
  const vdev = backend.dev ?? '';
  // A read-only disk never changes: a one-pass copy is all it needs.
  if (
    servedByQemu &&
    cfg.mirror !== undefined &&
    format !== undefined &&
    vdevOk(vdev) &&
    backend.mode === 'w'
  ) {
    return { action: 'mirror', path, size: info.size, allocated, format, vdev };
  }
  if (cfg.copy === undefined) {
    return {
      action: 'refuse',
      reason: `local file-backed image ${path} (${info.fsType}) and no copy method configured (disks.copy${servedByQemu ? ' or disks.mirror' : ''})`,
    };
  }
  return { action: 'copy', path, size: info.size, allocated };
}
