// The operator's pictures of a job, as specifications of pure functions: the chart model (rows,
// the stopped window, the zoom), the terminal chart (letters per phase, capitals for failures,
// the window on the axis, never wider than asked), the SVG (a bar per operation at its time, the
// window band, escaped text), the live view (fits 80 columns, names the devices waited for, rate
// and ETA from progress samples) and xl's stages read from its own words.
import { describe, it, expect } from 'vitest';
import { TimelineRecorder } from '../../src/migration/timeline.js';
import type { JobView } from '../../src/cli/job-client.js';
import { buildChart, tickStep, zoomChart } from '../../src/cli/report-chart.js';
import { chartLines } from '../../src/cli/report-text.js';
import { escapeXml, renderSvg } from '../../src/cli/report-svg.js';
import { liveLines, parseProgress, RateTracker, waitingOn } from '../../src/cli/live-view.js';
import { timelineTable } from '../../src/cli/render.js';
import { failureOfOutput, stageOfLine } from '../../src/cli/xl-run.js';

const T0 = 1_764_400_000_000;

function job(marks: [string, number][], extra: Partial<JobView> = {}): JobView {
  const rec = new TimelineRecorder();
  for (const [m, at] of marks) rec.apply(m, T0 + at);
  return {
    domid: 1,
    name: 'web01',
    id: 'cli-1',
    target: 'host-b',
    state: 'done',
    devices: [
      { type: 'qdisk', devid: '51728', state: 'synced' },
      { type: 'vif', devid: '0', state: 'synced' },
    ],
    timeline: rec.timeline,
    ...extra,
  };
}

const MIGRATION: [string, number][] = [
  ['start:new', 0],
  ['phase-start:test', 0],
  ['device-start:qdisk/51728 test', 1],
  ['device-end:qdisk/51728 test:ok:', 20],
  ['phase-end:test', 20],
  ['phase-start:preSuspend', 21],
  ['device-start:qdisk/51728 pre-suspend', 22],
  ['device-end:qdisk/51728 pre-suspend:ok:134217728', 9000],
  ['phase-end:preSuspend', 9001],
  ['suspended', 9800],
  ['phase-start:postSuspend', 9801],
  ['device-start:qdisk/51728 post-suspend', 9802],
  ['device-end:qdisk/51728 post-suspend:ok:', 9803],
  ['phase-end:postSuspend', 9804],
  ['phase-start:sync', 9805],
  ['device-start:qdisk/51728 sync', 9806],
  ['device-end:qdisk/51728 sync:ok:134217728', 10_000],
  ['phase-end:sync', 10_001],
  ['end:done', 10_002],
];

function withXl(j: JobView): JobView {
  if (j.timeline !== undefined)
    j.timeline.toolstack = {
      migrateStart: T0 + 9050,
      pointOfNoReturn: T0 + 9950,
      migrateEnd: T0 + 10_050,
      unpaused: T0 + 10_200,
    };
  return j;
}

describe('the chart of a job', () => {
  it('has a row for the phases, one per device (idle ones marked), one for xl and one for the guest', () => {
    const c = buildChart(withXl(job(MIGRATION)));
    expect(c?.rows.map((r) => r.label)).toEqual(['phases', 'qdisk/51728', 'vif/0', 'xl migrate', 'guest']);
    expect(c?.rows[2]?.idle).toBe(true);
    expect(c?.stopped).toEqual({ start: T0 + 9800, end: T0 + 10_200, open: false });
    expect(c?.rows[4]?.spans.map((s) => s.kind)).toEqual(['running', 'stopped']);
    expect(c?.rows[3]?.marks.map((m) => m[1])).toEqual(['!', 'u']);
  });

  it('a done job without the unpause recorded keeps its window open to the end', () => {
    const c = buildChart(job(MIGRATION));
    expect(c?.stopped).toEqual({ start: T0 + 9800, end: T0 + 10_002, open: true });
  });

  it('zooms on a short stopped window, the axis still counting from the job start', () => {
    const c = buildChart(withXl(job(MIGRATION)));
    if (c === undefined) throw new Error('no chart');
    const z = zoomChart(c);
    expect(z?.t0).toBeLessThanOrEqual(T0 + 9800);
    expect(z?.t1).toBeGreaterThanOrEqual(T0 + 10_200);
    expect(z?.origin).toBe(T0);
    // The bulk copy ended before the window: only the operations around the stop are in the zoom.
    expect(z?.rows[1]?.spans.map((s) => s.kind)).toEqual(['post-suspend', 'sync']);
    expect(zoomChart({ ...c, stopped: { start: T0, end: T0 + 5000, open: false } })).toBeUndefined();
  });

  it('has no chart without a timeline (an older agent)', () => {
    expect(buildChart({ domid: 1, devices: [] })).toBeUndefined();
  });
});

describe('the terminal chart', () => {
  const lines = chartLines(buildChart(withXl(job(MIGRATION))) ?? ({} as never), 80);

  it('is never wider than asked and draws each operation with its phase letter', () => {
    for (const l of lines) expect(l.length, l).toBeLessThanOrEqual(80);
    const row = (label: string): string => lines.find((l) => l.startsWith(label))?.slice(15) ?? '';
    // At 157 ms a column the 20 ms test shares column 0 with the copy; the suspended window's
    // operations sit at the end.
    expect(row('qdisk/51728')).toMatch(/^p{50,} +[sy]+$/);
    expect(row('vif/0')).toMatch(/^\.+$/);
    expect(row('guest')).toMatch(/^=+#+$/);
    expect(row('xl migrate')).toMatch(/x+!x* *u$/);
  });

  it('marks the stopped window on the axis and counts time from the job start', () => {
    expect(lines[1]).toMatch(/^ {15}0 s /);
    expect(lines[2]).toMatch(/#+$/);
  });

  it('writes a failed operation as a capital', () => {
    const failed = job([
      ['start:new', 0],
      ['device-start:vif/0 sync', 10],
      ['device-end:vif/0 sync:failed:', 500],
      ['end:failed', 600],
    ]);
    const l = chartLines(buildChart({ ...failed, state: 'failed' }) ?? ({} as never), 60);
    expect(l.find((x) => x.startsWith('vif/0'))).toMatch(/Y+/);
  });
});

describe('the SVG', () => {
  it('has a bar per operation at its time, the stopped window band and the figures; text is escaped', () => {
    const svg = renderSvg(buildChart(withXl(job(MIGRATION, { name: 'a<b&c' }))) ?? ({} as never));
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="960"/);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('a&lt;b&amp;c (id 1)');
    expect(svg).not.toMatch(/<text[^>]*>[^<]*&(?!lt;|gt;|amp;|quot;|apos;)/);
    expect(svg).toMatch(/class="stopped-window"/);
    expect(svg).toContain('total 10.2 s · downtime 0.40 s');
    // The bulk copy spans most of the width; its x and width follow its times (label column 130 px, 810 px wide).
    const bar = /<rect class="span pre-suspend" x="([0-9.]+)" y="[0-9]+" width="([0-9.]+)"/.exec(
      svg.slice(svg.indexOf('qdisk/51728')),
    );
    const span = 10_200;
    expect(Number(bar?.[1])).toBeCloseTo(130 + (22 / span) * 810, 0);
    expect(Number(bar?.[2])).toBeCloseTo(((9000 - 22) / span) * 810, 0);
    expect(escapeXml(`<"'&>`)).toBe('&lt;&quot;&apos;&amp;&gt;');
  });
});

describe('the timeline table (the demo, migrate)', () => {
  it('lists the moments in a fixed order with their offsets and lengths', () => {
    const t = timelineTable(withXl(job(MIGRATION)));
    expect(t.map((l) => l.trim().split(/\s{2,}/)[0])).toEqual([
      'test',
      'pre-suspend',
      'xl migrate',
      'guest stopped',
      'post-suspend',
      'sync',
      'xl: point of no return',
      'job done',
      'unpaused at the destination',
    ]);
    expect(t[1]).toMatch(/pre-suspend +\+0\.02 s +8\.98 s {2}128\.0 MiB$/);
    expect(t[8]).toMatch(/\+10\.2 s +downtime 0\.40 s$/);
  });
});

describe('the live view', () => {
  const running: JobView = {
    domid: 1,
    name: 'web01',
    target: 'host-b',
    state: 'pre-suspend',
    progress: '4/5',
    devices: [
      { type: 'console', devid: '0', state: 'pre-suspended' },
      { type: 'qdisk', devid: '51728', state: 'tested', progress: '177111040/419430400' },
      { type: 'vif', devid: '0', state: 'pre-suspended' },
    ],
  };

  it('fits 80 columns, names the device the phase waits for, and shows its bytes, rate and ETA', () => {
    const lines = liveLines({
      job: running,
      elapsedMs: 12_300,
      rates: new Map([['qdisk/51728', 20 * 1048576]]),
      width: 79,
    });
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(79);
    expect(lines[0]).toBe('web01 -> host-b  pre-suspend  4/5 devices  12.3 s  waiting for qdisk/51728');
    expect(lines[2]).toMatch(/^> qdisk\/51728 +tested +168\.9\/400\.0 MiB +42% +20\.0 MiB\/s ETA 12 s$/);
    expect(lines[1]).toMatch(/^ {2}console\/0 +pre-suspended$/);
    expect(waitingOn(running).map((d) => d.devid)).toEqual(['51728']);
    // A narrow terminal cuts lines, never wraps them.
    for (const l of liveLines({ job: running, elapsedMs: 0, rates: new Map(), width: 40 }))
      expect(l.length).toBeLessThanOrEqual(40);
  });

  it('rates come from the progress samples of the last seconds; a new pass starts over', () => {
    const r = new RateTracker();
    expect(r.sample('d', 0, 0)).toBeUndefined();
    expect(r.sample('d', 10_000_000, 1000)).toBeCloseTo(10_000_000, -3);
    expect(r.sample('d', 30_000_000, 2000)).toBeCloseTo(15_000_000, -3);
    expect(r.sample('d', 1000, 3000)).toBeUndefined(); // the final pass began again at 0
    expect(parseProgress('5/0')).toBeUndefined();
    expect(parseProgress('9/4')).toEqual({ done: 4, total: 4 });
  });
});

describe("xl's stages from its own words (tools/xl/xl_migrate.c)", () => {
  it('knows the point of no return and how xl failed', () => {
    expect(stageOfLine('migration sender: Target has acknowledged transfer.')).toBe('acknowledged');
    expect(stageOfLine('migration sender: Giving target permission to start.')).toBe('go');
    expect(stageOfLine('migration sender: Target reports successful startup.')).toBe('started-at-target');
    expect(stageOfLine('Savings: ...')).toBeUndefined();
    expect(failureOfOutput('...\nMigration failed, resuming at sender.\n')).toBe('resumed-at-source');
    expect(
      failureOfOutput('** Migration failed during final handshake **\nDomain state is now undefined !'),
    ).toBe('undefined-state');
    expect(tickStep(10_000, 8)).toBe(2000);
  });
});
