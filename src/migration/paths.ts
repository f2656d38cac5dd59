// The XenStore layout of the job protocol (docs/protocol.md is the contract). Every path the
// agent reads or writes is built here, so the protocol has one source.

export const PROTOCOL_VERSION = 1;
export const ROOT = '/tool/devmigrate';
export const PROTOCOL_VERSION_PATH = `${ROOT}/protocol-version`;
export const JOBS = `${ROOT}/jobs`;

export const REQUEST_FIELDS = ['id', 'target', 'mode', 'suspend', 'live', 'deadline'] as const;
export type RequestField = (typeof REQUEST_FIELDS)[number];

export function jobPath(domid: number | string): string {
  return `${JOBS}/${domid}`;
}

export const jobNode = {
  request: (d: number | string) => `${jobPath(d)}/request`,
  requestField: (d: number | string, f: string) => `${jobPath(d)}/request/${f}`,
  control: (d: number | string) => `${jobPath(d)}/control`,
  state: (d: number | string) => `${jobPath(d)}/state`,
  error: (d: number | string) => `${jobPath(d)}/error`,
  progress: (d: number | string) => `${jobPath(d)}/progress`,
  acceptedId: (d: number | string) => `${jobPath(d)}/accepted-id`,
  mode: (d: number | string) => `${jobPath(d)}/accepted-mode`,
  suspendedBy: (d: number | string) => `${jobPath(d)}/suspended-by`,
  recovered: (d: number | string) => `${jobPath(d)}/recovered`,
  controlError: (d: number | string) => `${jobPath(d)}/control-error`,
  refusedRequest: (d: number | string) => `${jobPath(d)}/refused-request`,
  devices: (d: number | string) => `${jobPath(d)}/devices`,
  device: (d: number | string, type: string, devid: string) => `${jobPath(d)}/devices/${type}/${devid}`,
};

/** What a path under JOBS is about, for the watch dispatcher. */
export type JobPathKind =
  { kind: 'jobs-root' } | { kind: 'job'; key: string; node: 'request' | 'control' | 'dir' | 'agent' };

export function classifyJobPath(path: string): JobPathKind | undefined {
  if (path === JOBS) return { kind: 'jobs-root' };
  if (!path.startsWith(`${JOBS}/`)) return undefined;
  const rest = path.slice(JOBS.length + 1).split('/');
  const key = rest[0];
  if (key === undefined || key === '') return undefined;
  const first = rest[1];
  if (first === undefined) return { kind: 'job', key, node: 'dir' };
  if (first === 'request') return { kind: 'job', key, node: 'request' };
  if (first === 'control' && rest.length === 2) return { kind: 'job', key, node: 'control' };
  return { kind: 'job', key, node: 'agent' };
}

/** Backend directory of one device kind of one guest in one backend domain. */
export function backendDir(backendDomid: number, type: string, domid: number): string {
  return `/local/domain/${backendDomid}/backend/${type}/${domid}`;
}
