// How long the rsync method's final pass will keep the guest suspended, estimated before the
// migration: that pass reads and checksums the whole image on both hosts however little changed,
// so its floor is image size / read rate. Pure: the read rate is measured elsewhere (read-rate.ts).

export interface ReadRate {
  bytesPerSec: number;
  /** True when measured with O_DIRECT (the page cache could not flatter it). */
  direct: boolean;
}

export interface FinalPassEstimate {
  ms: number;
  /** The estimate exceeds the sync phase's timeout: the migration would fail after the suspend. */
  exceedsSync: boolean;
  note: string;
}

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${v >= 10 || u === 0 ? Math.round(v) : v.toFixed(1)} ${units[u]}`;
}

function secs(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Final pass >= size / read rate (both hosts read the whole image in parallel). The note must
 * fit the device's `reason` node (the engine keeps 200 characters): the warning comes first.
 */
export function estimateFinalPass(sizeBytes: number, rate: ReadRate, syncMs: number): FinalPassEstimate {
  const ms =
    rate.bytesPerSec > 0 ? Math.ceil((sizeBytes / rate.bytesPerSec) * 1000) : Number.POSITIVE_INFINITY;
  const exceedsSync = ms > syncMs;
  const how = `${human(rate.bytesPerSec)}/s${rate.direct ? '' : ' (cached: optimistic)'}`;
  const base = `rsync final pass (guest suspended) reads all ${human(sizeBytes)}: at least ${secs(ms)} at ${how}`;
  // Short enough for the reason node even for a huge image on a slow disk (unit-tested).
  const advice = 'mirror (qdisk) or shared storage avoid it';
  const note = exceedsSync ? `WARNING: ${base}, over timeouts.syncMs (${secs(syncMs)}); ${advice}` : base;
  return { ms, exceedsSync, note };
}
