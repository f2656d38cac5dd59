// The job's timeline as an SVG picture (`devmigrate report --svg FILE`): the same rows as the
// terminal chart, a coloured bar per phase and device operation (failed ones outlined in red), a
// shaded band over the whole height where the guest was stopped, the time axis, the figures in
// the title and a legend. Pure: chart in, SVG text out; every text is escaped.
import { TIMELINE_PHASES, type TimelinePhase } from '../migration/timeline.js';
import { formatBytes, formatDuration } from './format.js';
import { tickLabel, ticks, tickStep, type Chart, type ChartSpan } from './report-chart.js';

export const PHASE_COLOUR: Readonly<Record<TimelinePhase, string>> = {
  test: '#8da0cb',
  'pre-suspend': '#66c2a5',
  'post-suspend': '#fc8d62',
  sync: '#e78ac3',
  recover: '#a6d854',
};
const XL_COLOUR = '#b3b3b3';
const RUNNING_COLOUR = '#4daf4a';
const STOPPED_COLOUR = '#e41a1c';

export function escapeXml(s: string): string {
  return s.replace(
    /[<>&"']/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c,
  );
}

function colour(s: ChartSpan): string {
  if (s.kind === 'xl') return XL_COLOUR;
  if (s.kind === 'running') return RUNNING_COLOUR;
  if (s.kind === 'stopped') return STOPPED_COLOUR;
  return PHASE_COLOUR[s.kind];
}

const W = 960;
const LABEL_W = 130;
const RIGHT = 20;
const ROW_H = 24;
const BAR_H = 14;
const TOP = 74;

function summary(chart: Chart): string {
  const f = chart.figures;
  const parts: string[] = [];
  if (f.totalMs !== undefined) parts.push(`total ${formatDuration(f.totalMs)}`);
  if (f.downtimeMs !== undefined) parts.push(`downtime ${formatDuration(f.downtimeMs)}`);
  else if (chart.stopped?.open === true) parts.push('downtime: open (waits for the toolstack)');
  if (f.devicesDowntimeMs !== undefined)
    parts.push(`devices ready ${formatDuration(f.devicesDowntimeMs)} after the stop`);
  if (f.bytes > 0) parts.push(`copied ${formatBytes(f.bytes)}`);
  return parts.join(' · ');
}

/** One chart (rows, axis, stopped band) drawn from y = top; returns its elements and height. */
function panel(chart: Chart, top: number, caption: string): { parts: string[]; height: number } {
  const barW = W - LABEL_W - RIGHT;
  const span = Math.max(1, chart.t1 - chart.t0);
  const x = (t: number): number => LABEL_W + ((t - chart.t0) / span) * barW;
  const o: string[] = [];
  const rowsTop = top + 22;
  const rowsBottom = rowsTop + chart.rows.length * ROW_H;
  if (caption !== '') o.push(`<text x="10" y="${top + 4}" font-weight="bold">${escapeXml(caption)}</text>`);
  if (chart.stopped !== undefined) {
    const a = x(chart.stopped.start);
    const b = Math.max(a + 1, x(chart.stopped.end));
    o.push(
      `<rect class="stopped-window" x="${a.toFixed(1)}" y="${rowsTop - 6}" width="${(b - a).toFixed(1)}" height="${rowsBottom - rowsTop + 6}" fill="${STOPPED_COLOUR}" fill-opacity="0.10" stroke="${STOPPED_COLOUR}" stroke-dasharray="4 3"/>`,
    );
    // The label stays inside the picture: right-aligned to the band when the band is on the right.
    const right = b > LABEL_W + barW * 0.6;
    const label = `guest stopped${chart.stopped.open ? ' (until the toolstack unpauses it)' : ''}`;
    o.push(
      `<text x="${(right ? b : a).toFixed(1)}" y="${rowsTop - 10}" fill="${STOPPED_COLOUR}" text-anchor="${right ? 'end' : 'start'}">${escapeXml(label)}</text>`,
    );
  }
  const step = tickStep(span, 10);
  o.push(
    `<line x1="${LABEL_W}" y1="${rowsBottom + 8}" x2="${LABEL_W + barW}" y2="${rowsBottom + 8}" stroke="#333"/>`,
  );
  for (const at of ticks(chart, step)) {
    const tx = x(at).toFixed(1);
    o.push(`<line x1="${tx}" y1="${rowsTop - 4}" x2="${tx}" y2="${rowsBottom + 12}" stroke="#ddd"/>`);
    o.push(
      `<text x="${tx}" y="${rowsBottom + 26}" text-anchor="middle">${escapeXml(tickLabel(at - chart.origin, step))}</text>`,
    );
  }
  chart.rows.forEach((row, i) => {
    const y = rowsTop + i * ROW_H;
    o.push(`<text x="10" y="${y + BAR_H - 2}">${escapeXml(row.label)}</text>`);
    if (row.idle === true) {
      o.push(
        `<line x1="${LABEL_W}" y1="${y + BAR_H / 2}" x2="${LABEL_W + barW}" y2="${y + BAR_H / 2}" stroke="#ccc" stroke-dasharray="2 4"/>`,
      );
      o.push(`<text x="${LABEL_W + 4}" y="${y + BAR_H - 2}" fill="#999">nothing to do</text>`);
    }
    for (const sp of row.spans) {
      const a = x(sp.start);
      const w = Math.max(2, x(sp.end) - a);
      const failed = sp.failed === true ? ` stroke="${STOPPED_COLOUR}" stroke-width="2"` : '';
      o.push(
        `<rect class="span ${escapeXml(sp.kind)}" x="${a.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${BAR_H}" fill="${colour(sp)}"${failed}><title>${escapeXml(`${row.label} ${sp.kind}${sp.failed === true ? ' (failed)' : ''}: ${formatDuration(sp.end - sp.start)}`)}</title></rect>`,
      );
    }
    for (const [at, mark, what] of row.marks) {
      const mx = x(at);
      o.push(
        `<path d="M${mx.toFixed(1)} ${y - 2} l5 ${BAR_H / 2 + 2} l-5 ${BAR_H / 2 + 2} l-5 ${-BAR_H / 2 - 2} z" fill="#222"><title>${escapeXml(what)}</title></path>`,
      );
      const lx = mx + 7 > LABEL_W + barW - 8 ? mx - 8 : mx + 7;
      o.push(
        `<text x="${lx.toFixed(1)}" y="${y + BAR_H - 2}" text-anchor="${lx < mx ? 'end' : 'start'}" font-weight="bold">${escapeXml(mark)}</text>`,
      );
    }
  });
  return { parts: o, height: rowsBottom + 34 - top };
}

/** The job's picture: the whole job, and a zoom on the stopped window when it is short. */
export function renderSvg(chart: Chart, zoom?: Chart): string {
  const o: string[] = [];
  const whole = panel(chart, TOP - 22, '');
  const z =
    zoom !== undefined
      ? panel(zoom, TOP - 22 + whole.height + 24, 'zoom: the window in which the guest was stopped')
      : undefined;
  const legendTop = TOP - 22 + whole.height + (z !== undefined ? 24 + z.height : 0) + 14;
  const h = legendTop + 48;
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${h}" viewBox="0 0 ${W} ${h}" font-family="sans-serif" font-size="12">`,
  );
  o.push(`<rect x="0" y="0" width="${W}" height="${h}" fill="#ffffff"/>`);
  o.push(`<text x="10" y="20" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`);
  o.push(`<text x="10" y="40">${escapeXml(summary(chart))}</text>`);
  o.push(...whole.parts, ...(z?.parts ?? []));

  // Legend, on two lines so that it fits the width.
  let lx = 10;
  let ly = legendTop;
  const item = (fill: string, text: string, extra = ''): void => {
    o.push(`<rect x="${lx}" y="${ly - 10}" width="12" height="12" fill="${fill}"${extra}/>`);
    o.push(`<text x="${lx + 16}" y="${ly}">${escapeXml(text)}</text>`);
    lx += 24 + text.length * 6.6;
  };
  for (const p of TIMELINE_PHASES) item(PHASE_COLOUR[p], p);
  item(XL_COLOUR, 'xl migrate');
  lx = 10;
  ly += 20;
  item(RUNNING_COLOUR, 'guest running');
  item(STOPPED_COLOUR, 'guest stopped');
  item('#ffffff', 'failed', ` stroke="${STOPPED_COLOUR}" stroke-width="2"`);
  o.push(`<path d="M${lx + 6} ${ly - 12} l5 8 l-5 8 l-5 -8 z" fill="#222"/>`);
  o.push(
    `<text x="${lx + 16}" y="${ly}">xl: ! point of no return, u unpaused at the destination, R running here again</text>`,
  );
  o.push('</svg>');
  return `${o.join('\n')}\n`;
}
