// The pure half of the mirror method: which QEMU block node serves a qdisk (xen-block names it
// "<vdev>-<driver>", hw/block/xen-block.c), the names of what we create (job, NBD node, sockets),
// the QMP arguments, and how to read query-block-jobs / query-named-block-nodes answers.
import type { MirrorConfig } from '../config/schema.js';

export type MirrorFormat = 'raw' | 'qcow2';

/**
 * The QEMU driver xen-block opens for a qdisk `params` value: "<format>:<path>" (libxl writes
 * the format first; "aio" means raw), or a bare path (raw). Formats other than raw and qcow2
 * (vhd -> vpc, qcow, qed) are not mirrored: they keep the file copy.
 */
export function qdiskFormat(params: string): MirrorFormat | undefined {
  const i = params.indexOf(':');
  if (params.startsWith('/')) return 'raw';
  if (i < 0) return undefined;
  const fmt = params.slice(0, i);
  if (fmt === 'raw' || fmt === 'aio') return 'raw';
  if (fmt === 'qcow2') return 'qcow2';
  return undefined;
}

/** Xen vdev names xen-block accepts (xvdX, hdX, sdX with a partition, or dNpM). */
const VDEV = /^(?:(?:xvd|hd|sd)[a-z]{1,4}[0-9]{0,3}|d[0-9]{1,7}(?:p[0-9]{1,3})?)$/;

export function vdevOk(vdev: string): boolean {
  return VDEV.test(vdev);
}

/** xen_block_blockdev_add(): node_name = "<id>-<driver>" with id = the backend's `dev`. */
export function xenBlockNodeName(vdev: string, format: MirrorFormat): string {
  return `${vdev}-${format}`;
}

export interface MirrorNames {
  /** Block job id on the source QEMU. */
  jobId: string;
  /** The NBD client node we add on the source QEMU (the mirror's target). */
  targetNode: string;
  /** Socket on this host (the forward's listening end) and on the destination (qemu-nbd's). */
  localSocket: string;
  remoteSocket: string;
  exportName: string;
}

/** Deterministic per disk (not per job), so a fresh agent can find and remove leftovers. */
export function mirrorNames(domid: number, devid: string, cfg: MirrorConfig): MirrorNames {
  const tag = `${domid}-${devid}`;
  return {
    jobId: `devmigrate-${devid}`,
    targetNode: `devmigrate-nbd-${devid}`,
    localSocket: `${cfg.runDir.replace(/\/$/, '')}/nbd-${tag}.sock`,
    remoteSocket: `${cfg.remoteRunDir.replace(/\/$/, '')}/nbd-${tag}.sock`,
    exportName: 'devmigrate',
  };
}

export function qmpSocketPath(cfg: MirrorConfig, domid: number): string {
  return cfg.qmpPath.replace('%d', String(domid));
}

export function nbdNodeArgs(names: MirrorNames): Record<string, unknown> {
  return {
    driver: 'nbd',
    'node-name': names.targetNode,
    server: { type: 'unix', path: names.localSocket },
    export: names.exportName,
  };
}

export function mirrorArgs(
  names: MirrorNames,
  sourceNode: string,
  copyMode: MirrorConfig['copyMode'],
  bandwidthBytesPerSec = 0,
): Record<string, unknown> {
  return {
    ...(bandwidthBytesPerSec > 0 ? { speed: bandwidthBytesPerSec } : {}),
    'job-id': names.jobId,
    device: sourceNode,
    target: names.targetNode,
    sync: 'full',
    'copy-mode': copyMode,
    // Keep the concluded job until we read how it ended (our connections are short).
    'auto-dismiss': false,
    'auto-finalize': true,
    'on-source-error': 'report',
    'on-target-error': 'report',
  };
}

/** The fields of one query-block-jobs entry we decide on. */
export interface BlockJobView {
  id: string;
  status: string;
  ready: boolean;
  offset: number;
  len: number;
  error: string | undefined;
}

function rec(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}

/** Our job in a query-block-jobs answer (malformed entries are skipped: QEMU is not trusted). */
export function findBlockJob(answer: unknown, jobId: string): BlockJobView | undefined {
  if (!Array.isArray(answer)) return undefined;
  for (const e of answer) {
    const o = rec(e);
    if (o === undefined || o['device'] !== jobId) continue;
    const num = (x: unknown): number => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : 0);
    return {
      id: jobId,
      status: typeof o['status'] === 'string' ? o['status'] : 'unknown',
      ready: o['ready'] === true,
      offset: num(o['offset']),
      len: num(o['len']),
      error: typeof o['error'] === 'string' ? o['error'].slice(0, 200) : undefined,
    };
  }
  return undefined;
}

export type JobPhase =
  | { kind: 'copying'; offset: number; len: number }
  | { kind: 'ready'; offset: number; len: number }
  | { kind: 'completed' }
  | { kind: 'failed'; why: string };

/**
 * What a job entry means. `ready` (status "ready" and the ready flag) is the only state in which
 * ending the job leaves a consistent target. A job that concluded with an error, or was cancelled
 * under us (concluded without error, but not by us), has failed.
 */
export function jobPhase(job: BlockJobView | undefined, endedByUs: boolean): JobPhase {
  if (job === undefined) return { kind: 'failed', why: 'the mirror job is gone from the source QEMU' };
  if (job.error !== undefined) return { kind: 'failed', why: `mirror job failed: ${job.error}` };
  switch (job.status) {
    case 'created':
    case 'running':
    case 'paused':
      return { kind: 'copying', offset: job.offset, len: job.len };
    case 'ready':
    case 'standby':
      return job.ready
        ? { kind: 'ready', offset: job.offset, len: job.len }
        : { kind: 'copying', offset: job.offset, len: job.len };
    case 'waiting':
    case 'pending':
    case 'aborting':
      return endedByUs
        ? { kind: 'copying', offset: job.offset, len: job.len }
        : { kind: 'failed', why: `mirror job is ${job.status}` };
    case 'concluded':
    case 'null':
      return endedByUs
        ? { kind: 'completed' }
        : { kind: 'failed', why: 'mirror job ended before it was completed' };
    default:
      return { kind: 'failed', why: `mirror job in unknown status ${job.status}` };
  }
}

export interface BlockNodeView {
  nodeName: string;
  driver: string;
  file: string;
  virtualSize: number;
}

/** A node of a query-named-block-nodes answer (flat). */
export function findBlockNode(answer: unknown, nodeName: string): BlockNodeView | undefined {
  if (!Array.isArray(answer)) return undefined;
  for (const e of answer) {
    const o = rec(e);
    if (o === undefined || o['node-name'] !== nodeName) continue;
    const image = rec(o['image']);
    const vs = image?.['virtual-size'];
    return {
      nodeName,
      driver: typeof o['drv'] === 'string' ? o['drv'] : '',
      file: typeof o['file'] === 'string' ? o['file'] : '',
      virtualSize: typeof vs === 'number' && Number.isSafeInteger(vs) && vs >= 0 ? vs : -1,
    };
  }
  return undefined;
}

/** Why the node xen-block should have made for this disk cannot be mirrored, or undefined if it can. */
export function sourceNodeProblem(
  node: BlockNodeView | undefined,
  want: { nodeName: string; path: string; format: MirrorFormat },
): string | undefined {
  if (node === undefined) return `the guest's QEMU has no block node ${want.nodeName}`;
  if (node.driver !== want.format) return `block node ${want.nodeName} is ${node.driver}, not ${want.format}`;
  if (node.file !== want.path) return `block node ${want.nodeName} serves ${node.file}, not ${want.path}`;
  if (node.virtualSize <= 0) return `block node ${want.nodeName} reports no size`;
  return undefined;
}
