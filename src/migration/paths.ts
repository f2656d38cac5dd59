// The XenStore layout of the job protocol (docs/protocol.md is the contract). Every path the
// agent reads or writes is built here, so the protocol has one source.

export const PROTOCOL_VERSION = 1;
export const ROOT = '/tool/devmigrate';
export const PROTOCOL_VERSION_PATH = `${ROOT}/protocol-version`;
export const JOBS = `${ROOT}/jobs`;
/**
 * The agent's own record of the jobs that changed something (a device's pre-suspend, a suspend):
 * holding/<domid> = "<job id>:<agent|toolstack|->" (who suspends the domain, once known), and
 * holding/<domid>/tools/<type>/<devid> = the device's running tool, from the first mutating step
 * to the job's end. Apart from the job's directory, which its requester may remove at any time,
 * even while no agent runs.
 */
export const HOLDING = `${ROOT}/holding`;
export function holdingPath(domid: number): string {
  return `${HOLDING}/${domid}`;
}
/** A device's running tool (tool-processes.ts) in the job's holding record. */
export function holdingToolPath(domid: number, type: string, devid: string): string {
  return `${HOLDING}/${domid}/tools/${type}/${devid}`;
}
export function formatHolding(jobId: string, suspendedBy: 'agent' | 'toolstack' | undefined): string {
  return `${jobId}:${suspendedBy ?? '-'}`;
}
export function parseHolding(
  value: string,
): { jobId: string; suspendedBy: 'agent' | 'toolstack' | undefined } | undefined {
  const m = /^([A-Za-z0-9][A-Za-z0-9._:-]{0,63}):(agent|toolstack|-)$/.exec(value);
  if (m === null) return undefined;
  return { jobId: m[1] ?? '', suspendedBy: m[2] === '-' ? undefined : (m[2] as 'agent' | 'toolstack') };
}

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
