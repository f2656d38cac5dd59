// The job's timeline drawn with characters, for any terminal (ASCII only): a time axis, a row per
// phase, device, xl and the guest; a letter per phase, capitals where an operation failed, and
// the window in which the guest was stopped drawn as `#` on the guest row and marked on the axis.
import { PHASE_LETTER, tickLabel, ticks, tickStep, type Chart, type ChartSpan } from './report-chart.js';

const LABEL_W = 14;

function letter(s: ChartSpan): string {
  switch (s.kind) {
    case 'xl':
      return 'x';
    case 'running':
      return '=';
    case 'stopped':
      return '#';
    default: {
      const l = PHASE_LETTER[s.kind];
      return s.failed === true ? l.toUpperCase() : l;
    }
  }
}

/** Draws a chart `width` columns wide (labels included). */
export function chartLines(chart: Chart, width: number): string[] {
  const barW = Math.max(20, width - LABEL_W - 1);
  const span = Math.max(1, chart.t1 - chart.t0);
  const col = (t: number): number =>
    Math.min(barW - 1, Math.max(0, Math.floor(((t - chart.t0) / span) * barW)));
  const lines: string[] = [chart.title];

  // Axis: tick labels over '|' marks, at least 9 columns apart.
  const step = tickStep(span, Math.max(1, Math.floor(barW / 10)));
  const labels = Array<string>(barW).fill(' ');
  const axis = Array<string>(barW).fill('-');
  for (const at of ticks(chart, step)) {
    const c = col(at);
    axis[c] = '|';
    const text = tickLabel(at - chart.origin, step);
    if (c + text.length <= barW && labels.slice(c, c + text.length).every((x) => x === ' '))
      for (let i = 0; i < text.length; i++) labels[c + i] = text[i] ?? ' ';
  }
  if (chart.stopped !== undefined) {
    const a = col(chart.stopped.start);
    const b = col(chart.stopped.end);
    for (let c = a; c <= b; c++) axis[c] = '#';
  }
  lines.push(`${''.padEnd(LABEL_W)} ${labels.join('').trimEnd()}`);
  lines.push(`${''.padEnd(LABEL_W)} ${axis.join('')}`);

  for (const row of chart.rows) {
    const cells = Array<string>(barW).fill(row.idle === true ? '.' : ' ');
    for (const s of row.spans) {
      const a = col(s.start);
      const b = Math.max(a, col(s.end) - (s.end > s.start && col(s.end) > a ? 1 : 0));
      for (let c = a; c <= b; c++) cells[c] = letter(s);
    }
    for (const [at, mark] of row.marks) cells[col(at)] = mark;
    const label =
      row.label.length > LABEL_W ? `${row.label.slice(0, LABEL_W - 1)}~` : row.label.padEnd(LABEL_W);
    lines.push(`${label} ${cells.join('').trimEnd()}`);
  }
  return lines;
}

export const LEGEND = [
  't test  p pre-suspend  s post-suspend  y sync  r recover  (capital: failed)  . nothing to do',
  'x xl migrate  ! xl past its point of no return  u unpaused at the destination  R running here again',
  '= guest running  # guest stopped (the downtime; also marked on the axis)',
];
