// Reads the deployment e2e's markers from both hosts' serial consoles and turns them into a
// verdict: per-scenario results, every check line, the metrics (downtimes, blocks verified),
// and for a failure the console lines and journal excerpts that explain it.
import fs from 'node:fs';
import path from 'node:path';
import { PANIC_RE } from './hosts.js';

function markerOf(text) {
  const at = text.indexOf('DEPLOY-');
  return at < 0 ? undefined : text.slice(at);
}

/** Markers of host a (the runner) and host b. */
export function parseMarkers(aLines, bLines) {
  const out = {
    ready: {},
    plan: undefined,
    scenarios: new Map(),
    results: [],
    metrics: {},
    done: undefined,
    panics: [],
    fails: [],
  };
  for (const [host, lines] of [
    ['a', aLines],
    ['b', bLines],
  ]) {
    lines.forEach(({ t, text }, i) => {
      if (PANIC_RE.test(text)) out.panics.push({ host, i, t });
      const m = markerOf(text);
      if (!m) return;
      let r;
      if ((r = /^DEPLOY-READY (\S+) (.*)$/.exec(m))) out.ready[host] = { t, detail: r[2] };
      else if ((r = /^DEPLOY-FAIL (.*)$/.exec(m))) out.fails.push({ host, t, detail: r[1] });
      else if (host !== 'a') return;
      else if ((r = /^DEPLOY-PLAN (.*)$/.exec(m))) out.plan = r[1].trim().split(/\s+/);
      else if ((r = /^DEPLOY-BEGIN (\S+)/.exec(m)))
        out.scenarios.set(r[1], { name: r[1], begin: t, beginLine: i });
      else if ((r = /^DEPLOY-END (\S+) (\S+)/.exec(m))) {
        const s = out.scenarios.get(r[1]) ?? { name: r[1], begin: t, beginLine: i };
        Object.assign(s, { end: t, endLine: i, outcome: r[2] });
        out.scenarios.set(r[1], s);
      } else if ((r = /^DEPLOY-RESULT (\S+) (PASS|FAIL) ?(.*)$/.exec(m)))
        out.results.push({ check: r[1], verdict: r[2], detail: r[3], t, line: i });
      else if ((r = /^DEPLOY-METRIC (\w+)=(\S*)/.exec(m))) out.metrics[r[1]] = r[2];
      else if ((r = /^DEPLOY-DONE rc=(\d+)/.exec(m))) out.done = { t, rc: Number(r[1]) };
    });
  }
  return out;
}

export function judge(p, a, b, planned) {
  const problems = [];
  for (const h of ['a', 'b'])
    if (!p.ready[h]) problems.push(`host ${h} never printed DEPLOY-READY (boot or set-up failed)`);
  for (const f of p.fails) problems.push(`host ${f.host}: ${f.detail}`);
  if (!p.plan) problems.push('host a never printed DEPLOY-PLAN');
  for (const s of planned) {
    const sc = p.scenarios.get(s);
    if (!sc) problems.push(`scenario ${s}: never started`);
    else if (!sc.outcome) problems.push(`scenario ${s}: did not finish`);
  }
  for (const r of p.results) if (r.verdict === 'FAIL') problems.push(`check ${r.check} failed: ${r.detail}`);
  if (!p.done) problems.push(`no DEPLOY-DONE (host a: QEMU ${a.reason}, host b: QEMU ${b.reason})`);
  else if (p.done.rc !== 0) problems.push(`host a's runner ended rc=${p.done.rc}`);
  if (p.panics.length > 0)
    problems.push(
      `panic on the console: ${p.panics.map((x) => `host ${x.host} at ${x.t.toFixed(0)} s`).join(', ')}`,
    );
  for (const q of [a, b])
    if (q.reason === 'timeout')
      problems.push(`host ${q.name}: the QEMU run timed out (${q.seconds.toFixed(0)} s)`);
  return problems;
}

const fmt = (s) => (s === undefined ? '-' : `${s.toFixed(1)}s`);

export function summary(p) {
  const out = [];
  for (const h of ['a', 'b'])
    out.push(`host ${h}: ready at ${fmt(p.ready[h]?.t)} ${p.ready[h]?.detail ?? ''}`);
  out.push('');
  const w = Math.max(10, ...p.results.map((r) => r.check.length));
  for (const name of p.plan ?? [...p.scenarios.keys()]) {
    const s = p.scenarios.get(name);
    out.push(
      `scenario ${name}: ${s?.outcome ?? 'NOT RUN'} (${s?.end !== undefined ? fmt(s.end - s.begin) : '-'})`,
    );
    const inScenario = p.results.filter(
      (r) => s && r.line >= s.beginLine && (s.endLine === undefined || r.line <= s.endLine),
    );
    for (const r of inScenario) out.push(`  ${r.check.padEnd(w)}  ${r.verdict}  ${r.detail}`);
  }
  const metrics = Object.entries(p.metrics);
  if (metrics.length > 0) {
    out.push('');
    out.push('metrics:');
    for (const [k, v] of metrics) out.push(`  ${k} = ${v}`);
  }
  return out;
}

function tail(file, n) {
  if (!fs.existsSync(file)) return [];
  const lines = fs.readFileSync(file, 'latin1').split('\n').filter(Boolean);
  return [
    `----- ${file} (last ${Math.min(n, lines.length)} of ${lines.length} lines) -----`,
    ...lines.slice(-n),
  ];
}

/** What explains a failure: failing checks' console context on a, both consoles' ends, journals. */
export function excerpts(p, aLines, bLines, runDir, max = 350) {
  const out = [];
  const show = (host, lines, from, to, title) => {
    out.push(`----- host ${host}: ${title} (serial lines ${from + 1}-${to + 1}) -----`);
    for (let i = Math.max(0, from); i <= Math.min(lines.length - 1, to); i++)
      out.push(`[${lines[i].t.toFixed(1).padStart(6)}] ${lines[i].text}`);
  };
  const failed = p.results.filter((r) => r.verdict === 'FAIL').slice(0, 3);
  for (const r of failed) show('a', aLines, r.line - 60, r.line + 2, `check ${r.check}`);
  for (const x of p.panics.slice(0, 2))
    show(x.host, x.host === 'a' ? aLines : bLines, x.i - 30, x.i + 30, 'panic');
  if (failed.length === 0) show('a', aLines, aLines.length - 80, aLines.length - 1, 'end of the console');
  show('b', bLines, bLines.length - 40, bLines.length - 1, 'end of the console');
  for (const h of ['a', 'b']) {
    out.push(...tail(path.join(runDir, h, 'journal-devmigrate.log'), 40));
    out.push(...tail(path.join(runDir, h, 'xen-hotplug.log'), 15));
  }
  return out.slice(0, max + 40).join('\n');
}
