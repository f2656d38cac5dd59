// Reads the e2e markers out of the serial log and turns them into a verdict: per-check results
// with timings, the boot stages, and for each failure the part of the log that explains it
// (the failing check's own lines, plus any Xen or dom0 panic with its surroundings).
import fs from 'node:fs';
import path from 'node:path';
import { PANIC_RE } from './qemu.js';

/** Parses the markers. Lines: [{t, text}] with t in seconds since QEMU started. */
export function parseSerial(lines) {
  const stages = [];
  const checks = new Map();
  let plan;
  let done;
  let xen;
  lines.forEach(({ t, text }, i) => {
    // Markers may follow other output on the same console line; find them anywhere.
    const at = text.indexOf('E2E-');
    if (at < 0) return;
    const m = text.slice(at);
    let r;
    if ((r = /^E2E-STAGE (\S+)/.exec(m))) stages.push({ name: r[1], t });
    else if ((r = /^E2E-PLAN (.*)$/.exec(m))) plan = r[1].trim().split(/\s+/);
    else if ((r = /^E2E-XEN (\S+)/.exec(m))) xen = r[1];
    else if ((r = /^E2E-BEGIN (\S+)/.exec(m))) checks.set(r[1], { name: r[1], begin: t, beginLine: i });
    else if ((r = /^E2E-RESULT (\S+) (PASS|FAIL|SKIP) ?(.*)$/.exec(m))) {
      const c = checks.get(r[1]) ?? { name: r[1], begin: t, beginLine: i };
      Object.assign(c, { verdict: r[2], detail: r[3], end: t, endLine: i });
      checks.set(r[1], c);
    } else if ((r = /^E2E-DONE(.*)$/.exec(m))) done = { t, rest: r[1].trim() };
  });
  const panics = [];
  lines.forEach(({ text }, i) => {
    if (PANIC_RE.test(text)) panics.push(i);
  });
  return { stages, checks, plan, done, panics, xen };
}

/**
 * The verdict: failures are missing markers, missing planned checks, FAILs, panics, and a
 * hypervisor of another version than the host's release ships (expectXen, e.g. "4.20").
 */
export function judge(parsed, qemu, expectXen) {
  const problems = [];
  if (expectXen !== undefined && parsed.plan && parsed.xen !== expectXen)
    problems.push(`dom0 reports Xen ${parsed.xen ?? '(nothing)'}, expected ${expectXen}`);
  if (!parsed.plan) problems.push('dom0 never printed E2E-PLAN (boot or share failed)');
  for (const name of parsed.plan ?? []) {
    const c = parsed.checks.get(name);
    if (!c || !c.verdict) problems.push(`check ${name}: no result`);
  }
  for (const c of parsed.checks.values())
    if (c.verdict === 'FAIL') problems.push(`check ${c.name} failed: ${c.detail}`);
  if (!parsed.done) problems.push(`no E2E-DONE marker (QEMU ${qemu.reason}, exit ${qemu.exit})`);
  if (parsed.panics.length > 0) problems.push(`panic on the console: ${parsed.panics.length} line(s)`);
  if (qemu.reason === 'timeout')
    problems.push(`the whole QEMU run timed out (${qemu.seconds.toFixed(0)} s; --timeout)`);
  return problems;
}

const fmt = (s) => (s === undefined ? '-' : `${s.toFixed(1)}s`);

/** The per-check table (with boot stages first). */
export function table(parsed) {
  const rows = [];
  let prev = 0;
  for (const s of parsed.stages) {
    rows.push([`boot: ${s.name}`, 'OK', fmt(s.t - prev), `at ${fmt(s.t)}`]);
    prev = s.t;
  }
  const names = parsed.plan ?? [...parsed.checks.keys()];
  for (const name of names) {
    const c = parsed.checks.get(name);
    if (!c) rows.push([name, 'MISSING', '-', 'never started']);
    else
      rows.push([
        name,
        c.verdict ?? 'NO RESULT',
        c.end !== undefined ? fmt(c.end - c.begin) : '-',
        c.detail ?? '',
      ]);
  }
  const w0 = Math.max(5, ...rows.map((r) => r[0].length));
  const w1 = Math.max(7, ...rows.map((r) => r[1].length));
  const w2 = Math.max(6, ...rows.map((r) => r[2].length));
  const line = (r) => `${r[0].padEnd(w0)}  ${r[1].padEnd(w1)}  ${r[2].padStart(w2)}  ${r[3]}`;
  return [
    line(['check', 'verdict', 'time', 'detail']),
    line(['-'.repeat(w0), '-'.repeat(w1), '-'.repeat(w2), '------']),
  ]
    .concat(rows.map(line))
    .join('\n');
}

/** The log lines that explain the failures; at most maxLines in all. */
export function excerpts(lines, parsed, maxLines = 400) {
  const ranges = [];
  const add = (from, to, title) =>
    ranges.push({ from: Math.max(0, from), to: Math.min(lines.length - 1, to), title });
  for (const c of parsed.checks.values()) {
    if (c.verdict === 'FAIL' || !c.verdict) {
      const end = c.endLine ?? lines.length - 1;
      // The check's own output, trimmed to its last 120 lines, plus what Xen/dom0 said meanwhile.
      add(Math.max(c.beginLine, end - 120), end + 3, `check ${c.name}`);
    }
  }
  for (const p of parsed.panics) add(p - 40, p + 40, 'panic');
  if (!parsed.plan)
    add(lines.length - 150, lines.length - 1, 'end of the serial log (dom0 never reached the checks)');
  else if (!parsed.done && ranges.length === 0)
    add(lines.length - 80, lines.length - 1, 'end of the serial log');
  ranges.sort((a, b) => a.from - b.from);
  const out = [];
  let shown = 0;
  let lastTo = -1;
  for (const r of ranges) {
    const from = Math.max(r.from, lastTo + 1);
    if (from > r.to) continue;
    out.push(`----- ${r.title} (serial lines ${from + 1}-${r.to + 1}) -----`);
    for (let i = from; i <= r.to && shown < maxLines; i++, shown++) {
      const l = lines[i];
      out.push(`[${l.t.toFixed(1).padStart(6)}] ${l.text}`);
    }
    lastTo = r.to;
  }
  return out.join('\n');
}

/**
 * dom0 copies its Xen logs to the results share at the end; when a guest check failed, the
 * hotplug log (block/vif scripts) and the guests' consoles usually say why.
 */
export function resultTails(resultsDir, parsed) {
  const guestFailed = [...parsed.checks.values()].some(
    (c) => c.verdict !== 'PASS' && /^(guest|domain|agent)/.test(c.name),
  );
  if (!guestFailed) return '';
  const out = [];
  const tail = (file, n) => {
    if (!fs.existsSync(file)) return;
    const lines = fs.readFileSync(file, 'latin1').split('\n').filter(Boolean);
    if (lines.length === 0) return;
    out.push(
      `----- ${path.relative(resultsDir, file)} (last ${Math.min(n, lines.length)} of ${lines.length} lines) -----`,
    );
    out.push(...lines.slice(-n));
  };
  tail(path.join(resultsDir, 'xen-logs/xen-hotplug.log'), 30);
  const consoles = path.join(resultsDir, 'xen-logs/console');
  if (fs.existsSync(consoles)) for (const f of fs.readdirSync(consoles)) tail(path.join(consoles, f), 15);
  return out.join('\n');
}

/**
 * The one closing line of a host: "e2e: <host> Xen <major.minor>: PASS (<n> checks)", or FAIL with
 * the failed checks (or the first problem when no check failed, e.g. dom0 did not boot).
 */
export function hostLine(name, xen, parsed, problems) {
  const planned = parsed.plan ?? [];
  if (problems.length === 0) return `e2e: ${name} Xen ${xen}: PASS (${planned.length} checks)`;
  const failed = planned.filter(
    (c) => parsed.checks.get(c)?.verdict !== 'PASS' && parsed.checks.get(c)?.verdict !== 'SKIP',
  );
  const what = failed.length > 0 ? `failed checks: ${failed.join(', ')}` : problems[0];
  return `e2e: ${name} Xen ${xen}: FAIL (${what})`;
}
