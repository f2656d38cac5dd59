// The job request: its fields, their allowed values, characters and lengths, and the pure
// validation of what a requester wrote under /tool/devmigrate/jobs/<domid>/request/.
import { isIPv4, isIPv6 } from 'node:net';
import { JobValidationError } from './errors.js';
import { REQUEST_FIELDS } from './paths.js';

export type JobMode = 'auto' | 'steps';
export type SuspendBy = 'agent' | 'toolstack';

export interface JobRequest {
  /** Requester's id: 1-64 of [A-Za-z0-9._:-], starting with a letter or digit. */
  id: string;
  /** Destination: RFC 1123 host name, IPv4 or IPv6 address; nothing else. */
  target: string;
  targetKind: 'hostname' | 'ipv4' | 'ipv6';
  mode: JobMode;
  suspend: SuspendBy;
  live: boolean;
  /** Whole-job deadline in seconds from acceptance, if given. */
  deadlineSec?: number;
}

/** Domain ids a job may name: 1..32751 (DOMID_FIRST_RESERVED is 0x7FF0); dom0 never migrates. */
export const DOMID_MAX = 32751;
export const MAX_DEADLINE_SEC = 86_400;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** Parses the job directory's key. Throws JobValidationError('domid', ...). */
export function parseDomid(key: string): number {
  if (!/^[0-9]{1,5}$/.test(key) || (key.length > 1 && key.startsWith('0'))) {
    throw new JobValidationError(
      'domid',
      `job key ${JSON.stringify(key.slice(0, 40))} is not a decimal domain id`,
    );
  }
  const domid = Number(key);
  if (domid === 0) throw new JobValidationError('domid', 'dom0 cannot be migrated');
  if (domid > DOMID_MAX)
    throw new JobValidationError('domid', `domain id ${domid} is reserved (max ${DOMID_MAX})`);
  return domid;
}

/** Classifies a target; undefined when it is none of host name, IPv4, IPv6. */
export function classifyTarget(target: string): JobRequest['targetKind'] | undefined {
  if (target.length === 0 || target.length > 253) return undefined;
  if (target.includes(':')) {
    // Bare IPv6 only: no brackets, no zone id (%eth0), no port.
    return /^[0-9A-Fa-f:.]+$/.test(target) && isIPv6(target) ? 'ipv6' : undefined;
  }
  const labels = target.split('.');
  if (!labels.every((l) => LABEL_RE.test(l))) return undefined;
  // All-numeric dotted names must be real IPv4 addresses ("999.1.1.1" is neither).
  if (labels.every((l) => /^[0-9]+$/.test(l))) return isIPv4(target) ? 'ipv4' : undefined;
  return 'hostname';
}

function printable(v: string): string {
  return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
}

/**
 * Validates the request nodes as read (field -> value; absent fields are missing). Unknown
 * nodes are refused: a typo must not silently change the meaning of a job.
 */
export function validateRequest(fields: ReadonlyMap<string, string>): JobRequest {
  for (const name of fields.keys()) {
    if (!(REQUEST_FIELDS as readonly string[]).includes(name)) {
      throw new JobValidationError(name, `unknown request field (allowed: ${REQUEST_FIELDS.join(', ')})`);
    }
  }
  const get = (f: string): string | undefined => fields.get(f);

  const id = get('id');
  if (id === undefined) throw new JobValidationError('id', 'missing');
  if (!ID_RE.test(id)) {
    throw new JobValidationError(
      'id',
      `${printable(id)} must be 1-64 of [A-Za-z0-9._:-] starting with a letter or digit`,
    );
  }

  const target = get('target');
  if (target === undefined) throw new JobValidationError('target', 'missing');
  const targetKind = classifyTarget(target);
  if (targetKind === undefined) {
    throw new JobValidationError(
      'target',
      `${printable(target)} is not a host name (RFC 1123), an IPv4 or an IPv6 address`,
    );
  }

  const mode = get('mode');
  if (mode === undefined) throw new JobValidationError('mode', 'missing');
  if (mode !== 'auto' && mode !== 'steps') {
    throw new JobValidationError('mode', `${printable(mode)} must be auto or steps`);
  }

  const suspend = get('suspend') ?? 'agent';
  if (suspend !== 'agent' && suspend !== 'toolstack') {
    throw new JobValidationError('suspend', `${printable(suspend)} must be agent or toolstack`);
  }

  const liveRaw = get('live') ?? '1';
  if (liveRaw !== '0' && liveRaw !== '1') {
    throw new JobValidationError('live', `${printable(liveRaw)} must be 1 or 0`);
  }

  const req: JobRequest = { id, target, targetKind, mode, suspend, live: liveRaw === '1' };
  const deadline = get('deadline');
  if (deadline !== undefined) {
    if (!/^[1-9][0-9]{0,5}$/.test(deadline) || Number(deadline) > MAX_DEADLINE_SEC) {
      throw new JobValidationError(
        'deadline',
        `${printable(deadline)} must be whole seconds, 1 to ${MAX_DEADLINE_SEC}`,
      );
    }
    req.deadlineSec = Number(deadline);
  }
  return req;
}
