// `status`, `abort`, `step` and `check`: the requester's everyday commands over the job
// protocol. Each waits through watches with a deadline and reports per device.
import { isControl, STEPS } from '../../migration/state-machine.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, withXenStore, type CliContext } from '../context.js';
import {
  agentPresence,
  checkTarget,
  isFinal,
  listJobs,
  newJobId,
  readJob,
  removeJob,
  resolveDomain,
  waitForJob,
  writeControl,
  writeRequest,
  type JobView,
} from '../job-client.js';
import { requireAgent, resolveMigratable } from '../preflight.js';
import { deviceLines, jobSummary, ProgressDisplay } from '../render.js';

function printJob(ctx: CliContext, job: JobView): void {
  for (const l of jobSummary(job)) println(ctx, l);
}

export async function statusCommand(
  ctx: CliContext,
  args: { domain?: string; watch?: boolean; timeoutMs?: number },
): Promise<ExitCodeValue> {
  return withXenStore(ctx, async (xs) => {
    if (args.domain === undefined) {
      const agent = await agentPresence(xs);
      const jobs = await listJobs(xs);
      if (ctx.json) printJson(ctx, { agent, jobs });
      else {
        println(
          ctx,
          `agent: ${agent.alive ? `running (pid ${agent.pid})` : `not running (${agent.state ?? 'never started'})`}`,
        );
        if (jobs.length === 0) println(ctx, 'no jobs');
        for (const j of jobs) printJob(ctx, j);
      }
      return ExitCode.OK;
    }
    const dom = await resolveDomain(xs, args.domain);
    if (args.watch) {
      const display = new ProgressDisplay(ctx.out, !ctx.json);
      const job = await waitForJob(
        xs,
        dom.domid,
        (j) => isFinal(j?.state),
        args.timeoutMs ?? 24 * 3600_000,
        (j) => (ctx.json ? j && printJson(ctx, j) : display.update(j)),
      );
      display.end();
      if (job && !ctx.json) printJob(ctx, job);
      return ExitCode.OK;
    }
    const job = await readJob(xs, dom.domid);
    if (!job) {
      if (ctx.json) printJson(ctx, { domid: dom.domid, name: dom.name, job: null });
      else println(ctx, `domain ${dom.name} (id ${dom.domid}): no job`);
      return ExitCode.OK;
    }
    if (ctx.json) printJson(ctx, job);
    else printJob(ctx, job);
    return ExitCode.OK;
  });
}

export async function abortCommand(
  ctx: CliContext,
  args: { domain: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveDomain(xs, args.domain);
    const before = await readJob(xs, dom.domid);
    if (!before) throw new CliError(`domain ${dom.name} has no job to abort`, ExitCode.FAILURE);
    if (isFinal(before.state) && before.state !== 'done') {
      if (ctx.json) printJson(ctx, before);
      else println(ctx, `job already ended: ${before.state}`);
      return ExitCode.OK;
    }
    await requireAgent(xs);
    await writeControl(xs, dom.domid, 'abort');
    const display = new ProgressDisplay(ctx.out, !ctx.json);
    const job = await waitForJob(
      xs,
      dom.domid,
      (j) => j?.state === 'aborted' || j?.state === 'failed' || j?.state === 'refused',
      args.timeoutMs,
      (j) => display.update(j),
    );
    display.end();
    if (ctx.json) printJson(ctx, job ?? null);
    else if (job) printJob(ctx, job);
    return job?.state === 'aborted' || job?.state === 'refused' ? ExitCode.OK : ExitCode.FAILURE;
  });
}

/** Where a step comes to rest when it worked. */
const STEP_REST: Record<string, readonly string[]> = {
  test: ['tested'],
  'pre-suspend': ['pre-suspended'],
  'post-suspend': ['post-suspended'],
  sync: ['done'],
  recover: ['aborted', 'failed'],
  abort: ['aborted', 'failed'],
};

export async function stepCommand(
  ctx: CliContext,
  args: { domain: string; step: string; host?: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  if (!isControl(args.step)) {
    throw new CliError(
      `unknown step ${JSON.stringify(args.step)} (one of ${[...STEPS, 'recover', 'abort'].join(', ')})`,
      ExitCode.USAGE,
    );
  }
  const step = args.step;
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    let job = await readJob(xs, dom.domid);
    if (!job || isFinal(job.state)) {
      // xend-style: the first step of a new migration names the destination.
      if (step !== 'test')
        throw new CliError(
          `domain ${dom.name} has no steps job: start with \`step ${args.domain} test --host H\``,
          ExitCode.USAGE,
        );
      if (args.host === undefined)
        throw new CliError('the first step needs --host <destination>', ExitCode.USAGE);
      checkTarget(args.host);
      await writeRequest(xs, dom.domid, {
        id: newJobId(),
        target: args.host,
        mode: 'steps',
        suspend: 'agent',
      });
      job = await waitForJob(xs, dom.domid, (j) => j?.state !== undefined, args.timeoutMs);
    } else if (job.mode !== 'steps' && step !== 'abort' && step !== 'recover') {
      throw new CliError(
        `the job of ${dom.name} runs in ${job.mode ?? '?'} mode; steps are for mode=steps jobs`,
        ExitCode.BUSY,
      );
    }
    if (job?.state === 'refused' || job?.state === 'failed') {
      if (ctx.json) printJson(ctx, job);
      else printJob(ctx, job);
      return ExitCode.REFUSED;
    }
    await writeControl(xs, dom.domid, step);
    const rest = STEP_REST[step] ?? [];
    const display = new ProgressDisplay(ctx.out, !ctx.json);
    const end = await waitForJob(
      xs,
      dom.domid,
      (j) =>
        (j?.state !== undefined && rest.includes(j.state)) ||
        ['refused', 'aborted', 'failed'].includes(j?.state ?? '') ||
        j?.controlError !== undefined,
      args.timeoutMs,
      (j) => display.update(j),
    );
    display.end();
    if (ctx.json) printJson(ctx, end ?? null);
    else if (end) printJob(ctx, end);
    if (end?.state !== undefined && rest.includes(end.state)) return ExitCode.OK;
    return end?.state === 'refused' ? ExitCode.REFUSED : ExitCode.FAILURE;
  });
}

/** `check`: the test phase only. Exit 0 = would be accepted, 3 = refused, reasons per device. */
export async function checkCommand(
  ctx: CliContext,
  args: { domain: string; host?: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  const host = args.host ?? 'localhost';
  checkTarget(host);
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    await writeRequest(xs, dom.domid, { id: newJobId(), target: host, mode: 'steps', suspend: 'agent' });
    let job: JobView | undefined;
    try {
      await waitForJob(xs, dom.domid, (j) => j?.state !== undefined, args.timeoutMs);
      await writeControl(xs, dom.domid, 'test');
      job = await waitForJob(
        xs,
        dom.domid,
        (j) => ['tested', 'refused', 'failed', 'aborted'].includes(j?.state ?? ''),
        args.timeoutMs,
      );
      // Nothing was changed by the test phase; release the domain so a real job may follow.
      if (job?.state === 'tested') {
        await writeControl(xs, dom.domid, 'abort');
        await waitForJob(xs, dom.domid, (j) => isFinal(j?.state), args.timeoutMs);
      }
    } finally {
      await removeJob(xs, dom.domid);
    }
    const verdict = job?.state === 'tested' ? 'accepted' : 'refused';
    // A device may accept with a warning (the rsync final pass outlasting timeouts.syncMs).
    const warnings = (job?.devices ?? []).filter((d) => /^WARNING: /.test(d.reason ?? ''));
    if (ctx.json)
      printJson(ctx, {
        domid: dom.domid,
        name: dom.name,
        target: host,
        verdict,
        error: job?.error,
        devices: job?.devices ?? [],
        warnings: warnings.map((d) => `${d.type}/${d.devid}: ${d.reason ?? ''}`),
      });
    else {
      println(
        ctx,
        `${dom.name} (id ${dom.domid}) -> ${host}: ${verdict === 'accepted' ? 'can migrate' : 'REFUSED'}`,
      );
      if (job?.error) println(ctx, `  ${job.error}`);
      for (const l of job ? deviceLines(job) : []) println(ctx, l);
      for (const d of warnings) ctx.err.write(`warning: ${d.type}/${d.devid}: ${d.reason ?? ''}\n`);
    }
    return verdict === 'accepted' ? ExitCode.OK : ExitCode.REFUSED;
  });
}
