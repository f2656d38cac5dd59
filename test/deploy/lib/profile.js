// The deployment e2e's --profile: where each host's CPU went during a guest's downtime.
// dom0/record.sh (procs) leaves, per host and migration, the kernel's process accounting (every process
// that ended: ssh sessions, rsync's server, hotplug scripts, xl) and a once-a-second sample of
// /proc/<pid>/stat (the ones that ran on: the agent, sshd connections, xenstored, kernel threads).
// Both are summed per command name over a window on host a's clock. Usage (also run by run.js
// after a --profile run):  node test/deploy/lib/profile.js <run folder>
import fs from 'node:fs';
import path from 'node:path';

const AHZ = 100; // process accounting's tick (linux/acct.h)

/** comp_t: 13-bit mantissa, 3-bit base-8 exponent (linux/acct.h). */
const compT = (v) => (v & 0x1fff) << (3 * ((v >> 13) & 7));

/** struct acct_v3 records (64 bytes each). */
export function parsePacct(buf) {
  const out = [];
  for (let o = 0; o + 64 <= buf.length; o += 64) {
    if (buf[o + 1] !== 3) continue;
    const comm = buf
      .subarray(o + 48, o + 64)
      .toString('latin1')
      .replace(/\0.*$/s, '')
      .replace(/^kworker\/.*/, 'kworker');
    out.push({
      pid: buf.readUInt32LE(o + 16),
      ppid: buf.readUInt32LE(o + 20),
      btime: buf.readUInt32LE(o + 24),
      etime: buf.readFloatLE(o + 28) / AHZ,
      cpu: (compT(buf.readUInt16LE(o + 32)) + compT(buf.readUInt16LE(o + 34))) / AHZ,
      comm,
    });
  }
  return out;
}

/** procs-<tag>.log: "epoch <wall> <uptime> <CLK_TCK>", then "@ <uptime>" + /proc/<pid>/stat lines. */
export function parseStat(text) {
  const lines = text.split('\n');
  const [, wall, up0, hz] = lines[0].split(' ');
  const toWall = (up) => Number(wall) + (Number(up) - Number(up0));
  const samples = [];
  let cur;
  for (const l of lines.slice(1)) {
    if (l.startsWith('@ ')) {
      cur = { t: toWall(l.slice(2)), procs: new Map() };
      samples.push(cur);
      continue;
    }
    const close = l.lastIndexOf(')');
    if (!cur || close < 0) continue;
    const pid = Number(l.slice(0, l.indexOf(' ')));
    // Kernel workers rename themselves after their current queue: one name for all.
    const comm = l.slice(l.indexOf('(') + 1, close).replace(/^kworker\/.*/, 'kworker');
    const f = l.slice(close + 2).split(' ');
    cur.procs.set(pid, { comm, cpu: (Number(f[11]) + Number(f[12])) / Number(hz) });
  }
  return samples;
}

/** CPU seconds per command name inside [t0, t1] (wall seconds on the host's own clock). */
export function cpuByCommand(samples, pacct, t0, t1, { perProcess = false } = {}) {
  const by = new Map();
  const add = (comm, s, pid) => {
    const k = perProcess ? `${comm}[${pid}]` : comm;
    if (s > 0) by.set(k, (by.get(k) ?? 0) + s);
  };
  const lastSeen = new Map();
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    const overlap = Math.max(0, Math.min(b.t, t1) - Math.max(a.t, t0)) / (b.t - a.t || 1);
    for (const [pid, p] of b.procs) {
      // A process not in the previous sample started since (the first sample holds every
      // process that ran before): all of its CPU is this interval's.
      const before = a.procs.get(pid);
      const d = before ? p.cpu - before.cpu : p.cpu;
      add(p.comm, d * overlap, pid);
      lastSeen.set(pid, p);
    }
  }
  // Ended processes: what the samples did not already count, at their end.
  for (const r of pacct) {
    const end = r.btime + r.etime;
    if (end < t0 || end > t1 + 1) continue;
    const seen = lastSeen.get(r.pid);
    const counted = seen && seen.comm.startsWith(r.comm.slice(0, 15)) ? seen.cpu : 0;
    add(r.comm, r.cpu - counted, r.pid);
  }
  return [...by.entries()].sort((x, y) => y[1] - x[1]);
}

function readSerialMetrics(runDir) {
  const text = fs.readFileSync(path.join(runDir, 'a/serial.log'), 'utf8');
  const metric = (n) => Number(new RegExp(`DEPLOY-METRIC ${n}=(-?[0-9]+)`).exec(text)?.[1]);
  const unpaused = Number(/timeline: unpaused ([0-9.]+)/.exec(text)?.[1]);
  const started = Number(/xl-line xl-ba ([0-9.]+) migration target: Domain started/.exec(text)?.[1]);
  return {
    offsetMs: metric('clock_offset_b_minus_a_ms') || 0,
    windows: {
      'dm-ab': { end: unpaused, downtimeMs: metric('downtime_ms') },
      'xl-ba': { end: started, downtimeMs: metric('xl_downtime_ms') },
    },
  };
}

export function profileReport(runDir) {
  const out = [];
  const { offsetMs, windows } = readSerialMetrics(runDir);
  for (const [tag, w] of Object.entries(windows)) {
    if (!Number.isFinite(w.end) || !Number.isFinite(w.downtimeMs)) {
      out.push(`profile ${tag}: no window (the migration's end or downtime is missing)`);
      continue;
    }
    const t1 = w.end;
    const t0 = t1 - w.downtimeMs / 1000;
    out.push(
      `profile ${tag}: CPU seconds per command during the guest's downtime (${(t1 - t0).toFixed(1)} s, host a's clock)`,
    );
    for (const h of ['a', 'b']) {
      const stat = path.join(runDir, h, `procs-${tag}.log`);
      const acct = path.join(runDir, h, `procs-${tag}.pacct`);
      if (!fs.existsSync(stat) || !fs.existsSync(acct)) {
        out.push(`  host ${h}: no profile files`);
        continue;
      }
      // Host b's clock runs offsetMs ahead of a's: its window is shifted by as much.
      const shift = h === 'b' ? offsetMs / 1000 : 0;
      const samples = parseStat(fs.readFileSync(stat, 'utf8'));
      const records = parsePacct(fs.readFileSync(acct));
      const rows = cpuByCommand(samples, records, t0 + shift, t1 + shift);
      const procs = cpuByCommand(samples, records, t0 + shift, t1 + shift, { perProcess: true });
      const total = rows.reduce((s, [, v]) => s + v, 0);
      const list = (r, n) =>
        r
          .filter(([, v]) => v >= 0.1)
          .slice(0, n)
          .map(([c, v]) => `${c} ${v.toFixed(1)}`)
          .join(', ');
      out.push(`  host ${h}: ${total.toFixed(1)} s: ${list(rows, 14)}`);
      out.push(`    largest processes: ${list(procs, 6)}`);
    }
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node test/deploy/lib/profile.js <run folder>');
    process.exit(2);
  }
  for (const l of profileReport(dir)) console.log(l);
}
