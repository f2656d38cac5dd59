// Where a disk's bytes live: block device or file, and on which filesystem type. The probe is
// an interface so policies stay pure and testable; the real one uses stat(2) and statfs(2).
import { stat, statfs } from 'node:fs/promises';

export interface StorageInfo {
  kind: 'block' | 'file' | 'missing' | 'other';
  /** Filesystem type name as `stat -f -c %T` prints it ("nfs", "ext2/ext3", "tmpfs", ...). */
  fsType: string;
  size: number;
  /** Bytes allocated on disk (st_blocks * 512): less than size for a thin image. */
  allocated?: number;
}

export interface StorageProbe {
  probe(path: string): Promise<StorageInfo>;
}

/** statfs f_type magic numbers (linux/magic.h) -> the names coreutils' stat -f prints. */
const FS_MAGIC: ReadonlyMap<number, string> = new Map([
  [0x6969, 'nfs'],
  [0xff534d42, 'cifs'],
  [0xfe534d42, 'smb2'],
  [0x00c36400, 'ceph'],
  [0x01161970, 'gfs2'],
  [0x7461636f, 'ocfs2'],
  [0x0bd00bd0, 'lustre'],
  [0x65735546, 'fuseblk'],
  [0x65735543, 'fusectl'],
  [0xef53, 'ext2/ext3'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [0x01021994, 'tmpfs'],
  [0x794c7630, 'overlayfs'],
  [0x1373, 'devfs'],
  [0x2fc12fc1, 'zfs'],
  [0x01021997, 'v9fs'],
]);

export function fsTypeName(magic: number): string {
  return FS_MAGIC.get(magic >>> 0) ?? `unknown(0x${(magic >>> 0).toString(16)})`;
}

export const realStorageProbe: StorageProbe = {
  async probe(path: string): Promise<StorageInfo> {
    let st;
    try {
      st = await stat(path);
    } catch {
      return { kind: 'missing', fsType: 'none', size: 0 };
    }
    const fs = await statfs(path);
    const fsType = fsTypeName(Number(fs.type));
    if (st.isBlockDevice()) return { kind: 'block', fsType, size: st.size };
    if (st.isFile()) return { kind: 'file', fsType, size: st.size, allocated: st.blocks * 512 };
    return { kind: 'other', fsType, size: st.size };
  },
};
