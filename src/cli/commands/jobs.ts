// `status`, `abort`, `step` and `check`: the requester's everyday commands over the job
// protocol. Each waits through watches with a deadline, follows the job live, and reports per
// device; a finished job gets its summary (outcome, times, downtime, bytes).
import { figures } from '../../migration/timeline.js';
import { isControl } from '../../migration/state-machine.js';
import type { XenStore } from '../../xenstore/types.js';
import { STEP_NAMES } from '../command-spec.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, withXenStore, type CliContext } from '../context.js';
import { InterruptedError, SIGNAL_EXIT } from '../interrupt.js';
import {
  agentPresence,
  findJob,
  isFinal,
  listJobs,
  newJobId,
  readJob,
  removeJob,
  waitForJob,
  waitUntil,
  writeControl,
  writeRequest,
  type JobView,
} from '../job-client.js';
import { LiveDisplay } from '../live-view.js';
import { domainState } from '../domain-state.js';
import { requireAgent, resolveMigratable } from '../preflight.js';
import { deviceLines, jobLine, jobSummary } from '../render.js';
import { parseDestination } from '../target.js';
import { usageError } from '../usage-errors.js';
import { COMMANDS } from '../command-spec.js';

function printJob(ctx: CliContext, job: JobView): void {
  for (const l of jobSummary(job)) println(ctx, l);
}

function jsonJob(job: JobView): unknown {
  return { ...job, figures: job.timeline !== undefined ? figures(job.timeline) : null };
}

export async function statusCommand(
  ctx: CliContext,
  args: { domain?: string; watch?: boolean; timeoutMs?: number },
): Promise<ExitCodeValue> {
  return withXenStore(ctx, async (xs) => {
    if (args.domain === undefined) {
      const agent = await agentPresence(xs);
      const version = await xs.tryRead('/tool/devmigrate/agent/version');
      const jobs = await listJobs(xs, { timeline: true });
      if (ctx.json) printJson(ctx, { agent: { ...agent, version }, jobs: jobs.map(jsonJob) });
      else {
        println(
          ctx,
          `agent: ${agent.alive ? `running (pid ${agent.pid}${version ? `, version ${version}` : ''})` : `not running (${agent.state ?? 'never started'})`}`,
        );
        if (jobs.length === 0) println(ctx, 'no jobs');
        else println(ctx, `jobs (${jobs.length}); details: devmigrate status <domain>`);
        for (const j of jobs) println(ctx, `  ${jobLine(j)}`);
      }
      return ExitCode.OK;
    }
    const dom = await findJob(xs, args.domain);
    if (args.watch) {
      const display = new LiveDisplay(ctx.out, !ctx.json && ctx.live !== false);
      try {
        await waitForJob(
          xs,
          dom.domid,
          (j) => isFinal(j?.state),
          args.timeoutMs ?? 24 * 3600_000,
          (j) => (ctx.json ? j && printJson(ctx, j) : display.update(j)),
          ctx.interrupt?.signal,
        );
      } catch (err) {
        display.end();
        // Ctrl-C on a watch only stops watching: the job is not ours to stop.
        if (err instanceof InterruptedError) return SIGNAL_EXIT[err.signalName];
        throw err;
      }
      display.end();
    }
    const job = await readJob(xs, dom.domid, { timeline: true });
    if (!job) {
      if (ctx.json) printJson(ctx, { domid: dom.domid, name: dom.name, job: null });
      else println(ctx, `domain ${dom.name} (id ${dom.domid}): no job`);
      return ExitCode.OK;
    }
    if (args.watch && ctx.json) return ExitCode.OK;
    if (ctx.json) printJson(ctx, jsonJob({ ...job, name: job.name ?? dom.name }));
    else printJob(ctx, { ...job, name: job.name ?? dom.name });
    return ExitCode.OK;
  });
}

/** Time allowed to a `devmigrate migrate` to report what xl did after an abort of its job. */
const TOOLSTACK_WAIT_MS = 60_000;

/**
 * After an abort of a job whose guest xl had suspended: xl (through `devmigrate migrate`)
 * resumes it here when it had not passed its point of no return. Waits for the wrapper's record
 * of xl's end and says which it was.
 */
async function toolstackVerdict(
  xs: XenStore,
  job: JobView,
  signal: AbortSignal | undefined,
): Promise<{ code: ExitCodeValue; msg: string; hints: string[] }> {
  const base = `/tool/devmigrate/jobs/${job.domid}/toolstack`;
  const name = job.name ?? `domain ${job.domid}`;
  const read = async (): Promise<{ started: boolean; ended: boolean; noReturn: boolean }> => {
    const [s, e, p] = await Promise.all([
      xs.tryRead(`${base}/migrate-start`),
      xs.tryRead(`${base}/migrate-end`),
      xs.tryRead(`${base}/point-of-no-return`),
    ]);
    return { started: s !== undefined, ended: e !== undefined, noReturn: p !== undefined };
  };
  let t = await read();
  if (t.started && !t.ended) {
    await waitUntil(xs, base, async () => (await read()).ended, TOOLSTACK_WAIT_MS, signal);
    t = await read();
  }
  const here = (await xs.tryRead(`/local/domain/${job.domid}/name`)) === job.name;
  if (t.noReturn) {
    return {
      code: ExitCode.UNCERTAIN,
      msg: `aborted: the devices are recovered, but xl had already passed its point of no return: ${name} goes on to ${job.target ?? 'the destination'} (paused there)`,
      hints: [
        'see the output of the `devmigrate migrate` that ran xl',
        `on ${job.target ?? 'the destination'}: xl list ${name}; do not unpause it before its disks are verified`,
      ],
    };
  }
  const state = here ? await domainState(xs, job.domid) : 'gone';
  if (t.ended && here && (state === 'running' || state === 'unknown')) {
    return {
      code: ExitCode.OK,
      msg: `aborted: devices recovered; xl stopped before its point of no return and ${name} runs here${state === 'unknown' ? ' (as xl says; its state could not be read)' : ''}`,
      hints: [],
    };
  }
  return {
    code: ExitCode.UNCERTAIN,
    msg: `aborted: the devices are recovered, but ${name} was suspended by the toolstack (xl) and is ${state === 'unknown' ? 'in a state that could not be read' : state} here`,
    hints: [
      `on this host: xl list ${name} (state s: still suspended)`,
      'the toolstack that suspended it resumes it (devmigrate migrate does when xl fails before its point of no return)',
    ],
  };
}

export async function abortCommand(
  ctx: CliContext,
  args: { domain: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  return withXenStore(ctx, async (xs) => {
    const dom = await findJob(xs, args.domain);
    const before = await readJob(xs, dom.domid);
    if (!before) throw new CliError(`domain ${dom.name} has no job to abort`, ExitCode.FAILURE);
    if (isFinal(before.state) && before.state !== 'done') {
      if (ctx.json) printJson(ctx, before);
      else println(ctx, `job already ended: ${before.state}`);
      return ExitCode.OK;
    }
    await requireAgent(xs);
    await writeControl(xs, dom.domid, 'abort');
    const display = new LiveDisplay(ctx.out, !ctx.json && ctx.live !== false);
    let job: JobView | undefined;
    try {
      job = await waitForJob(
        xs,
        dom.domid,
        // A job its requester removed (devmigrate migrate does, once it reported), or replaced,
        // has ended for us too: never wait out the timeout for it.
        (j) =>
          j === undefined ||
          j.id !== before.id ||
          j.state === 'aborted' ||
          j.state === 'failed' ||
          j.state === 'refused',
        args.timeoutMs,
        (j) => display.update(j),
        ctx.interrupt?.signal,
      );
    } catch (err) {
      display.end();
      if (err instanceof InterruptedError) {
        println(
          ctx,
          `interrupted: the abort was requested; the agent goes on recovering (devmigrate status ${dom.domid})`,
        );
        return SIGNAL_EXIT[err.signalName];
      }
      throw err;
    }
    display.end();
    if (job === undefined || job.id !== before.id) {
      // No request left: removed (the agent, still recovering, may write its state into the
      // removed directory again); another request: replaced.
      const replaced = job?.id !== undefined;
      const msg = `the job ${before.id ?? ''} was ${replaced ? 'replaced' : 'removed'} by its requester before it reported the abort`;
      if (ctx.json)
        printJson(ctx, { domid: dom.domid, name: dom.name, result: msg, exit: ExitCode.UNCERTAIN });
      else {
        println(ctx, msg);
        println(ctx, `  - on this host: xl list ${dom.name}; the requester's output says how it ended`);
      }
      return ExitCode.UNCERTAIN;
    }
    const full = (await readJob(xs, dom.domid, { timeline: true })) ?? job;
    const shownJob = { ...full, name: full.name ?? dom.name };
    const ok = full.state === 'aborted' || full.state === 'refused';
    let verdict: { code: ExitCodeValue; msg: string; hints: string[] } = {
      code: ok ? ExitCode.OK : ExitCode.FAILURE,
      msg: ok
        ? `aborted: devices recovered; ${shownJob.name} ${full.timeline?.resumed !== undefined ? 'resumed and ' : ''}running here`
        : `the job ended ${full.state ?? '?'}: ${full.error ?? 'see devmigrate status'}`,
      hints: [],
    };
    if (full.suspendedBy === 'toolstack' && full.timeline?.suspended !== undefined)
      verdict = await toolstackVerdict(xs, shownJob, ctx.interrupt?.signal);
    if (ctx.json)
      printJson(ctx, { ...(jsonJob(shownJob) as object), result: verdict.msg, exit: verdict.code });
    else {
      printJob(ctx, shownJob);
      if (verdict.msg) println(ctx, verdict.msg);
      for (const h of verdict.hints) println(ctx, `  - ${h}`);
    }
    return verdict.code;
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

const STEP_CMD = COMMANDS.find((c) => c.path[0] === 'step');

export async function stepCommand(
  ctx: CliContext,
  args: { domain: string; step: string; host?: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  if (!isControl(args.step)) {
    throw usageError(STEP_CMD, `<step> ${JSON.stringify(args.step)} is not one of ${STEP_NAMES.join(', ')}`);
  }
  const step = args.step;
  const target = args.host !== undefined ? parseDestination(args.host).host : undefined;
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    let job = await readJob(xs, dom.domid);
    if (!job || isFinal(job.state)) {
      // xend-style: the first step of a new migration names the destination.
      if (step !== 'test')
        throw usageError(
          STEP_CMD,
          `domain ${dom.name} has no steps job: start with \`step ${args.domain} test --host H\``,
        );
      if (target === undefined)
        throw usageError(STEP_CMD, 'the first step (test) needs --host <destination>');
      await writeRequest(xs, dom.domid, { id: newJobId(), target, mode: 'steps', suspend: 'agent' });
      job = await waitForJob(
        xs,
        dom.domid,
        (j) => j?.state !== undefined,
        args.timeoutMs,
        undefined,
        ctx.interrupt?.signal,
      );
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
    const display = new LiveDisplay(ctx.out, !ctx.json && ctx.live !== false);
    let end: JobView | undefined;
    try {
      end = await waitForJob(
        xs,
        dom.domid,
        (j) =>
          (j?.state !== undefined && rest.includes(j.state)) ||
          ['refused', 'aborted', 'failed'].includes(j?.state ?? '') ||
          j?.controlError !== undefined,
        args.timeoutMs,
        (j) => display.update(j),
        ctx.interrupt?.signal,
      );
    } catch (err) {
      display.end();
      if (err instanceof InterruptedError) {
        // A steps job outlives the command by design (xend's way): stopping it is a step too.
        println(
          ctx,
          `interrupted: the ${step} step goes on in the agent; the job stays (devmigrate step ${args.domain} abort stops it)`,
        );
        return SIGNAL_EXIT[err.signalName];
      }
      throw err;
    }
    display.end();
    const full = end !== undefined ? ((await readJob(xs, dom.domid, { timeline: true })) ?? end) : undefined;
    if (ctx.json) printJson(ctx, full ?? null);
    else if (full) printJob(ctx, { ...full, name: full.name ?? dom.name });
    if (end?.state !== undefined && rest.includes(end.state)) return ExitCode.OK;
    return end?.state === 'refused' ? ExitCode.REFUSED : ExitCode.FAILURE;
  });
}

/** `check`: the test phase only. Exit 0 = would be accepted, 3 = refused, reasons per device. */
export async function checkCommand(
  ctx: CliContext,
  args: { domain: string; host?: string; timeoutMs: number },
): Promise<ExitCodeValue> {
  const host = parseDestination(args.host ?? 'localhost').host;
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    await writeRequest(xs, dom.domid, { id: newJobId(), target: host, mode: 'steps', suspend: 'agent' });
    let job: JobView | undefined;
    const signal = ctx.interrupt?.signal;
    try {
      await waitForJob(xs, dom.domid, (j) => j?.state !== undefined, args.timeoutMs, undefined, signal);
      await writeControl(xs, dom.domid, 'test');
      job = await waitForJob(
        xs,
        dom.domid,
        (j) => ['tested', 'refused', 'failed', 'aborted'].includes(j?.state ?? ''),
        args.timeoutMs,
        undefined,
        signal,
      );
      // Nothing was changed by the test phase; release the domain so a real job may follow.
      if (job?.state === 'tested') {
        await writeControl(xs, dom.domid, 'abort');
        await waitForJob(xs, dom.domid, (j) => isFinal(j?.state), args.timeoutMs);
      }
    } catch (err) {
      if (!(err instanceof InterruptedError)) throw err;
      // Only checks ran: abort (bounded) and remove, so the domain is free again.
      const now = await readJob(xs, dom.domid);
      if (now !== undefined && !isFinal(now.state)) {
        await writeControl(xs, dom.domid, 'abort').catch(() => undefined);
        await waitForJob(xs, dom.domid, (j) => j === undefined || isFinal(j.state), 30_000).catch(
          () => undefined,
        );
      }
      println(ctx, `interrupted: the check of ${dom.name} was stopped; nothing was changed`);
      return SIGNAL_EXIT[err.signalName];
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
