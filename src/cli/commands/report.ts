// `devmigrate report <domain|job> [--svg FILE]`: a job's timeline as a chart in the terminal
// (and a zoom on the downtime when it is short), and as an SVG picture on request. The job is
// found by domain name or id, also of a domain that has left this host, or by job id.
import { writeFile } from 'node:fs/promises';
import { figures } from '../../migration/timeline.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, withXenStore, type CliContext } from '../context.js';
import { findJob, readJob } from '../job-client.js';
import { figureLines, outcomeText } from '../render.js';
import { buildChart, zoomChart } from '../report-chart.js';
import { renderSvg } from '../report-svg.js';
import { chartLines, LEGEND } from '../report-text.js';

export async function reportCommand(
  ctx: CliContext,
  args: { spec: string; svg?: string; width?: number },
): Promise<ExitCodeValue> {
  return withXenStore(ctx, async (xs) => {
    const ref = await findJob(xs, args.spec);
    const job = await readJob(xs, ref.domid, { timeline: true });
    if (job === undefined)
      throw new CliError(`domain ${ref.name} (id ${ref.domid}) has no job`, ExitCode.FAILURE);
    const view = { ...job, name: job.name ?? ref.name };
    const chart = buildChart(view);
    if (chart === undefined) {
      throw new CliError(
        `the job of ${view.name} has no timeline (written by agents from version 0.2; or not started yet)`,
        ExitCode.FAILURE,
      );
    }
    if (args.svg !== undefined) await writeFile(args.svg, renderSvg(chart, zoomChart(chart)));
    if (ctx.json) {
      printJson(ctx, {
        ...view,
        figures: view.timeline !== undefined ? figures(view.timeline) : null,
        svg: args.svg ?? null,
      });
      return ExitCode.OK;
    }
    const width =
      args.width ?? (typeof ctx.out.columns === 'number' ? Math.max(60, ctx.out.columns - 1) : 80);
    for (const l of chartLines(chart, width)) println(ctx, l);
    const zoom = zoomChart(chart);
    if (zoom !== undefined) {
      println(ctx);
      for (const l of chartLines(zoom, width)) println(ctx, l);
    }
    println(ctx);
    for (const l of LEGEND) println(ctx, l);
    println(ctx);
    println(ctx, `outcome: ${view.state ?? '?'} (${outcomeText(view)})`);
    for (const l of figureLines(view)) println(ctx, l.trimStart());
    if (args.svg !== undefined) println(ctx, `picture: ${args.svg}`);
    return ExitCode.OK;
  });
}
