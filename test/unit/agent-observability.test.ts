// What the agent tells monitoring and the journal: the Prometheus textfile (exposition format
// checked line by line, histograms cumulative, written atomically), journald's native protocol
// (encoded as sd_journal_send does, field names as journald accepts them), and the one summary
// line per job (domain, outcome, downtime, at a level that says whether to look).
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentMetrics, writeTextfile } from '../../src/agent/metrics.js';
import { decodeEntry, encodeEntry, fieldName, stdoutIsJournal } from '../../src/agent/journald.js';
import { summaryLine } from '../../src/agent/engine-adapter.js';
import { journalFields } from '../../src/agent/logger.js';
import { figures, TimelineRecorder } from '../../src/migration/timeline.js';
import type { JobEndReport } from '../../src/migration/timeline-recorder.js';
import { parseExposition } from './exposition-format.js';

const T0 = 1_764_400_000_000;

function report(outcome: string, marks: [string, number][], name?: string): JobEndReport {
  const rec = new TimelineRecorder();
  for (const [m, at] of marks) rec.apply(m, T0 + at);
  const r: JobEndReport = {
    domid: 5,
    jobId: 'j-5',
    outcome,
    timeline: rec.timeline,
    figures: figures(rec.timeline),
  };
  if (name !== undefined) r.name = name;
  return r;
}

const DONE: [string, number][] = [
  ['start:new', 0],
  ['phase-start:test', 1],
  ['phase-end:test', 10],
  ['phase-start:preSuspend', 11],
  ['device-start:vbd/51712 pre-suspend', 12],
  ['device-end:vbd/51712 pre-suspend:ok:1048576', 4000],
  ['phase-end:preSuspend', 4001],
  ['suspended', 4100],
  ['phase-start:sync', 4101],
  ['device-start:vif/0 sync', 4101],
  ['device-end:vif/0 sync:failed:', 4200],
  ['phase-end:sync', 4430],
  ['end:done', 4430],
];

describe('metrics textfile', () => {
  it('renders the exposition format: families, labels, cumulative histograms, +Inf equal to the count', () => {
    const m = new AgentMetrics();
    m.started('1.2.3', T0);
    m.jobEnded(report('done', DONE));
    m.jobEnded(
      report('refused', [
        ['start:new', 0],
        ['phase-start:test', 1],
        ['phase-end:test', 5],
        ['end:refused', 6],
      ]),
    );
    m.reconnected();
    m.setRunning(2);
    const fams = parseExposition(m.render());
    const value = (family: string, sample: string): number | undefined =>
      fams.get(family)?.samples.find(([n]) => n === sample)?.[1];
    expect(value('devmigrate_agent_up', 'devmigrate_agent_up')).toBe(1);
    expect(value('devmigrate_agent_info', 'devmigrate_agent_info{version="1.2.3"}')).toBe(1);
    expect(value('devmigrate_jobs_total', 'devmigrate_jobs_total{outcome="done"}')).toBe(1);
    expect(value('devmigrate_jobs_total', 'devmigrate_jobs_total{outcome="refused"}')).toBe(1);
    expect(value('devmigrate_jobs_total', 'devmigrate_jobs_total{outcome="failed"}')).toBe(0);
    expect(value('devmigrate_jobs_running', 'devmigrate_jobs_running')).toBe(2);
    expect(value('devmigrate_xenstore_reconnects_total', 'devmigrate_xenstore_reconnects_total')).toBe(1);
    expect(
      value('devmigrate_device_failures_total', 'devmigrate_device_failures_total{type="vif",phase="sync"}'),
    ).toBe(1);
    // The downtime (0.33 s, suspended to done) lands in the 0.5 s bucket and above.
    const d = fams.get('devmigrate_job_downtime_seconds');
    expect(d?.type).toBe('histogram');
    expect(
      value('devmigrate_job_downtime_seconds', 'devmigrate_job_downtime_seconds_bucket{le="0.25"}'),
    ).toBe(0);
    expect(value('devmigrate_job_downtime_seconds', 'devmigrate_job_downtime_seconds_bucket{le="0.5"}')).toBe(
      1,
    );
    expect(value('devmigrate_job_downtime_seconds', 'devmigrate_job_downtime_seconds_sum')).toBeCloseTo(
      0.33,
      5,
    );
    for (const [name, f] of fams) {
      if (f.type !== 'histogram') continue;
      // Per label set: buckets never decrease, and +Inf equals _count.
      const byLabels = new Map<string, [string, number][]>();
      for (const [n, v] of f.samples) {
        const [, metric = '', lbls = ''] = /^([^{]*)(\{.*\})?$/.exec(n) ?? [];
        const rest = lbls
          .replace(/(^\{|\}$)/g, '')
          .split(',')
          .filter((l) => l !== '' && !l.startsWith('le='));
        const key = `${metric.replace(/_(bucket|sum|count)$/, '')}{${rest.join(',')}}`;
        byLabels.set(key, [...(byLabels.get(key) ?? []), [n, v]]);
      }
      for (const samples of byLabels.values()) {
        const buckets = samples.filter(([n]) => n.includes('_bucket')).map(([, v]) => v);
        expect(
          [...buckets].sort((a, b) => a - b),
          name,
        ).toEqual(buckets);
        expect(buckets[buckets.length - 1], name).toBe(samples.find(([n]) => n.includes('_count'))?.[1]);
      }
    }
    expect(
      value(
        'devmigrate_phase_duration_seconds',
        'devmigrate_phase_duration_seconds_count{phase="pre-suspend"}',
      ),
    ).toBe(1);
    m.stopped();
    expect(parseExposition(m.render()).get('devmigrate_agent_up')?.samples[0]?.[1]).toBe(0);
  });

  it('is written atomically: a temp file in the same folder, renamed; none left behind; no folder, no file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'metrics-'));
    try {
      const path = join(dir, 'xen-devmigrate.prom');
      const texts = Array.from({ length: 20 }, (_, i) => `devmigrate_agent_up ${i % 2}\n`);
      await Promise.all(texts.map((t) => writeTextfile(path, t)));
      expect(texts).toContain(readFileSync(path, 'utf8'));
      expect(readdirSync(dir)).toEqual(['xen-devmigrate.prom']);
      expect(await writeTextfile(join(dir, 'missing', 'x.prom'), 'x\n')).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('journald native protocol', () => {
  it('encodes KEY=value lines, and a value with a newline with its 64-bit length', () => {
    const e = encodeEntry([
      ['MESSAGE', 'first\nsecond'],
      ['PRIORITY', '5'],
      ['DOMID', '7'],
    ]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(12n);
    expect(e).toEqual(
      Buffer.concat([Buffer.from('MESSAGE\n'), len, Buffer.from('first\nsecond\nPRIORITY=5\nDOMID=7\n')]),
    );
    expect([...decodeEntry(e)]).toEqual([
      ['MESSAGE', 'first\nsecond'],
      ['PRIORITY', '5'],
      ['DOMID', '7'],
    ]);
  });

  it('names fields as journald accepts them, the job context first', () => {
    expect(fieldName('domid')).toBe('DOMID');
    expect(fieldName('downtime_ms')).toBe('DOWNTIME_MS');
    expect(fieldName('ready-ms')).toBe('READY_MS');
    expect(fieldName('_private')).toBeUndefined();
    expect(fieldName('9lives')).toBeUndefined();
    expect(
      journalFields({
        level: 'info',
        message: 'x',
        device: 'vbd/1',
        domid: 5,
        domain: 'web01',
        job: 'j',
        phase: 'syncing',
        event: 'step',
      }),
    ).toEqual([
      ['DOMID', '5'],
      ['DOMAIN', 'web01'],
      ['JOB', 'j'],
      ['PHASE', 'syncing'],
      ['DEVICE', 'vbd/1'],
      ['EVENT', 'step'],
    ]);
  });

  it('uses the journal only when JOURNAL_STREAM names stdout itself (a redirected stdout keeps the variable)', () => {
    const st = () => ({ dev: 23, ino: 4567 });
    expect(stdoutIsJournal({ JOURNAL_STREAM: '23:4567' }, st)).toBe(true);
    expect(stdoutIsJournal({ JOURNAL_STREAM: '23:4568' }, st)).toBe(false);
    expect(stdoutIsJournal({ INVOCATION_ID: 'x' }, st)).toBe(false);
  });
});

describe('the summary line of a job', () => {
  it('names the domain, the outcome, the times and the downtime, at a level that says whether to look', () => {
    const done = summaryLine(report('done', DONE, 'web01'));
    expect(done.level).toBe('notice');
    expect(done.text).toBe(
      'job web01 done: total 4.43 s, downtime 0.33 s until the devices were synced, copied 1.0 MiB, not completed: vif/0 sync',
    );
    expect(done.fields).toMatchObject({
      domid: 5,
      domain: 'web01',
      job: 'j-5',
      outcome: 'done',
      downtime_ms: 330,
    });
    const check = summaryLine(
      report('aborted', [
        ['start:new', 0],
        ['phase-start:test', 1],
        ['phase-end:test', 3],
        ['end:aborted', 4],
      ]),
    );
    expect(check.level).toBe('info'); // a check: nothing was changed
    expect(check.text).toBe('job domain 5 aborted: total 0.00 s');
    const aborted = summaryLine(
      report('aborted', [
        ['start:new', 0],
        ['phase-start:preSuspend', 1],
        ['end:aborted', 9],
      ]),
    );
    expect(aborted.level).toBe('warn');
    expect(
      summaryLine(
        report('failed', [
          ['start:new', 0],
          ['end:failed', 9],
        ]),
      ).level,
    ).toBe('error');
    expect(
      summaryLine(
        report('refused', [
          ['start:new', 0],
          ['end:refused', 9],
        ]),
      ).level,
    ).toBe('warn');
  });
});

describe('tool output in the log', () => {
  it('keeps what a tool says at info and its progress ticker (lines the caller consumed) at debug', async () => {
    const { runTool } = await import('../../src/devices/external-tool.js');
    const lines: string[] = [];
    const at =
      (level: string) =>
      (m: string): void =>
        void lines.push(`${level} ${m}`);
    const log = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
    const r = await runTool(
      '/bin/sh',
      ['-c', 'echo "  1,048,576  50%  1.00MB/s  0:00:01"; echo "done, 1 file"'],
      {
        timeoutMs: 10_000,
        killGraceMs: 500,
        log,
        argOk: () => true,
        onLine: (l) => /%/.test(l),
      },
    );
    expect(r.code).toBe(0);
    expect(lines).toEqual([
      'debug [/bin/sh]   1,048,576  50%  1.00MB/s  0:00:01',
      'info [/bin/sh] done, 1 file',
    ]);
  });
});
