// `devmigrate migrate [-s CMD] <domain> <[user@]host>`: the xl wrapper, in four stages. (1) A job
// with suspend=toolstack; wait until the agent has prepared every device. (2) `xl migrate -p`:
// xl suspends the guest (the agent starts post-suspend at that moment) and leaves it paused at
// the destination. (3) Once the devices are synced (done), unpause it there through the same
// remote shell. (4) Print the summary. Ctrl-C before xl's point of no return aborts everything
// (xl resumes the guest here); past it, the command says where the guest is and goes on.
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { XenStore } from '../../xenstore/types.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, withXenStore, type CliContext } from '../context.js';
import { InterruptedError, SIGNAL_EXIT } from '../interrupt.js';
import {
  isFinal,
  newJobId,
  pruneFinishedJobs,
  readJob,
  removeJob,
  waitForJob,
  writeControl,
  writeRequest,
  writeToolstackMark,
  type DomainRef,
  type JobView,
} from '../job-client.js';
import { LiveDisplay } from '../live-view.js';
import { resolveMigratable } from '../preflight.js';
import { jobSummary } from '../render.js';
import { expand, parseDestination, type Destination } from '../target.js';
import { domainState, resumeIfSuspended } from '../domain-state.js';
import { failureOfOutput, startXl, type XlResult, type XlRun } from '../xl-run.js';
import { figures } from '../../migration/timeline.js';
import { ArmedCommand, armedUnpauseArgv, runBounded, type RunResult } from '../remote-command.js';

export { expand, parseCommand } from '../target.js';

export interface MigrateArgs {
  domain: string;
  /** `[user@]host` as given (xl and the remote shell get it as is). */
  destination: string;
  /** xl's -s: the remote shell's words; undefined = xl's default (ssh), not passed to xl. */
  sshCommand?: string[];
  /** argv before "[-s SSH] <domain> <[user@]host>"; default xl migrate -p. */
  migrateCommand: string[];
  /** argv before "<domain>" run at the destination once synced; default <ssh> {host} xl unpause. */
  unpauseCommand?: string[];
  live: boolean;
  timeoutMs: number;
  /** Keep the finished job for status and report (default); false removes it. */
  keepJob?: boolean;
}

function lastLines(text: string, n = 5): string[] {
  return text.trim().split('\n').slice(-n).filter(Boolean);
}

/** Shows argv as a shell would need it typed (the -s value has spaces). */
function shown(argv: readonly string[]): string {
  return argv.map((w) => (/^[A-Za-z0-9_@%+=:,./{}-]+$/.test(w) ? w : `'${w}'`)).join(' ');
}

const UNPAUSE_TIMEOUT_MS = 60_000;
/** After an abort: how long the devices' recovery may take before we say what we know. */
const RECOVERY_WAIT_MS = 150_000;

export async function migrateCommand(ctx: CliContext, args: MigrateArgs): Promise<ExitCodeValue> {
  const dest = parseDestination(args.destination);
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    // Only a running guest: xl's suspend is what the agent waits for, and one already suspended
    // or paused (by an earlier failure, an administrator) would look like it.
    const state = await domainState(xs, dom.domid);
    if (state !== 'running' && state !== 'unknown') {
      throw new CliError(
        `${dom.name} (id ${dom.domid}) is ${state} here; migrate a running guest`,
        ExitCode.FAILURE,
        [
          `xl list ${dom.name}; a suspended guest left by a failed migration: devmigrate status ${dom.domid} says which`,
        ],
      );
    }
    return new Migration(ctx, xs, dom, dest, args).run();
  });
}

type Outcome = { code: ExitCodeValue; msg: string; hints?: string[]; keep?: boolean };

class Migration {
  private readonly display: LiveDisplay;
  private readonly ssh: string[];
  private xl: XlRun | undefined;
  /** The default unpause, its remote shell started while xl runs (remote-command.ts). */
  private armed: ArmedCommand | undefined;
  /** An interrupt past the point of no return was answered already: later stages do not repeat it. */
  private declined = false;
  /** The job as last seen while xl ran ('done' is final: once seen, it holds). */
  private lastJob: JobView | undefined;
  /** The unpause, when it went out the moment xl reported the target's startup. */
  private earlyUnpause: Promise<RunResult> | undefined;

  constructor(
    private readonly ctx: CliContext,
    private readonly xs: XenStore,
    private readonly dom: DomainRef,
    private readonly dest: Destination,
    private readonly args: MigrateArgs,
  ) {
    this.display = new LiveDisplay(ctx.out, !ctx.json && ctx.live !== false);
    this.ssh = args.sshCommand ?? ['ssh'];
  }

  private say(line: string): void {
    if (this.ctx.json) return;
    this.display.say(line);
  }

  private get interrupt(): AbortSignal | undefined {
    return this.ctx.interrupt?.signal;
  }

  /** The same remote shell xl used, for a command at the destination (hints and the unpause). */
  private remote(...words: string[]): string {
    return shown([...this.ssh, this.dest.spec, ...words]);
  }

  async run(): Promise<ExitCodeValue> {
    let out: Outcome;
    try {
      out = await this.stages();
    } finally {
      this.armed?.disarm();
      this.display.end();
      this.ctx.interrupt?.onRepeat(undefined);
    }
    return this.finish(out);
  }

  private async stages(): Promise<Outcome> {
    const prepared = await this.prepare();
    if (prepared !== undefined) return prepared;
    const xl = await this.runXl();
    if (xl.kind === 'outcome') return xl.outcome;
    return this.syncAndUnpause(xl.xlPending);
  }

  /** Stage 1: the job, tested and prepared; undefined when xl may run. */
  private async prepare(): Promise<Outcome | undefined> {
    await writeRequest(this.xs, this.dom.domid, {
      id: newJobId(),
      target: this.dest.host,
      mode: 'auto',
      suspend: 'toolstack',
      live: this.args.live,
    });
    this.say(`migrating ${this.dom.name} (id ${this.dom.domid}) to ${this.dest.spec}`);
    let ready: JobView | undefined;
    try {
      ready = await waitForJob(
        this.xs,
        this.dom.domid,
        (j) => j?.state === 'suspending' || isFinal(j?.state),
        this.args.timeoutMs,
        (j) => this.display.update(j),
        this.interrupt,
      );
    } catch (err) {
      if (!(err instanceof InterruptedError)) throw err;
      const end = await this.abortJob();
      const recovered =
        end?.state === 'aborted' || end?.state === 'failed'
          ? 'devices recovered'
          : `job ${end?.state ?? 'state unknown'}`;
      return {
        code: SIGNAL_EXIT[err.signalName],
        msg: `interrupted before xl ran: job aborted, ${recovered}; ${this.dom.name} keeps running here`,
      };
    }
    if (ready?.state === 'suspending') return undefined;
    const state = await domainState(this.xs, this.dom.domid);
    return {
      code:
        ready?.state === 'refused'
          ? ExitCode.REFUSED
          : state === 'running'
            ? ExitCode.ABORTED
            : ExitCode.UNCERTAIN,
      msg: `not migrated: the job ended ${ready?.state ?? '?'} before xl ran; ${this.dom.name} is ${state} here`,
      ...(state !== 'running'
        ? { keep: true, hints: [`devmigrate status ${this.dom.domid}`, `xl list ${this.dom.name}`] }
        : {}),
    };
  }

  /** Writes abort and waits (bounded) for the job to settle; the last view of it. */
  private async abortJob(): Promise<JobView | undefined> {
    const now = await readJob(this.xs, this.dom.domid);
    if (now !== undefined && !isFinal(now.state))
      await writeControl(this.xs, this.dom.domid, 'abort').catch(() => undefined);
    if (now !== undefined && isFinal(now.state) && now.state !== 'done') return now;
    this.say('waiting for the agent to recover the devices (Ctrl-C again leaves now)');
    const leave = new AbortController();
    this.ctx.interrupt?.onRepeat(() => leave.abort(new InterruptedError('SIGINT')));
    try {
      return await waitForJob(
        this.xs,
        this.dom.domid,
        (j) => j === undefined || (isFinal(j.state) && j.state !== 'done'),
        RECOVERY_WAIT_MS,
        (j) => this.display.update(j),
        leave.signal,
      );
    } catch {
      return readJob(this.xs, this.dom.domid);
    }
  }

  private xlArgv(): string[] {
    const s = this.args.sshCommand !== undefined ? ['-s', this.args.sshCommand.join(' ')] : [];
    return [...expand(this.args.migrateCommand, this.dest.spec), ...s, this.dom.name, this.dest.spec];
  }

  /** Stage 2: xl migrate; 'synced-next' when xl succeeded. */
  private async runXl(): Promise<
    { kind: 'outcome'; outcome: Outcome } | { kind: 'synced-next'; xlPending?: Promise<XlResult> }
  > {
    const argv = this.xlArgv();
    this.say(`devices ready; running: ${shown(argv)}`);
    await writeToolstackMark(this.xs, this.dom.domid, 'migrateStart');
    // The default unpause goes through the remote shell xl uses: started now, it is connected
    // and waiting by the time the guest is paused at the destination. A custom
    // --unpause-command runs at the moment, as given.
    if (this.args.unpauseCommand === undefined)
      this.armed = new ArmedCommand(armedUnpauseArgv(this.args.sshCommand, this.dest.spec, this.dom.name));
    const xl = startXl(
      argv,
      this.args.timeoutMs,
      join(tmpdir(), `devmigrate-xl-${this.dom.name}-${process.pid}.log`),
    );
    this.xl = xl;
    xl.onStage((stage, at) => {
      if (stage === 'acknowledged') {
        void writeToolstackMark(this.xs, this.dom.domid, 'pointOfNoReturn', at).catch(() => undefined);
        this.say(`xl: ${this.dest.host} has the memory of ${this.dom.name}: past the point of no return`);
      }
    });

    // The job may be aborted while xl runs (devmigrate abort, a device failing in post-suspend,
    // a deadline): xl must then not finish the move. Before its point of no return it is made to
    // fail, and resumes the guest here.
    let abortedBy: string | undefined;
    const stopWatching = new AbortController();
    const jobWatch = waitForJob(
      this.xs,
      this.dom.domid,
      (j) => j === undefined || j.state === 'recovering' || (isFinal(j.state) && j.state !== 'done'),
      this.args.timeoutMs + 60_000,
      (j) => {
        this.lastJob = j;
        this.display.update(j);
      },
      stopWatching.signal,
    ).then(
      (j) => {
        abortedBy =
          j === undefined ? 'the job was removed' : `the job went ${j.state}${j.error ? `: ${j.error}` : ''}`;
        const what = xl.cancel();
        if (what === 'transport-stopped' || what === 'xl-stopped')
          this.say(`${abortedBy}; stopping xl before its point of no return`);
      },
      () => undefined,
    );

    // Ctrl-C: before the point of no return, the same; past it, say where the guest is.
    let interrupted: InterruptedError | undefined;
    let stopped = false;
    let leaveNow: (() => void) | undefined;
    const left = new Promise<'left'>((resolve) => (leaveNow = () => resolve('left')));
    const onInterrupt = (): void => {
      const reason = this.interrupt?.reason;
      interrupted = reason instanceof InterruptedError ? reason : new InterruptedError('SIGINT');
      const what = xl.cancel();
      if (what === 'transport-stopped' || what === 'xl-stopped') {
        stopped = true;
        this.say(
          what === 'transport-stopped'
            ? 'interrupted: stopping xl before its point of no return; xl resumes the guest here'
            : 'interrupted: stopping xl before it began to send',
        );
        void writeControl(this.xs, this.dom.domid, 'abort').catch(() => undefined);
        return;
      }
      this.declined = true;
      this.say(`interrupted, but ${this.whereNow()}`);
      this.say('going on to the unpause at the destination; Ctrl-C again leaves now');
      this.ctx.interrupt?.onRepeat(() => leaveNow?.());
    };
    if (this.interrupt?.aborted) onInterrupt();
    else this.interrupt?.addEventListener('abort', onInterrupt, { once: true });

    // xl prints "Target reports successful startup" once the destination holds the whole domain
    // (paused, with -p) and only then destroys the source, which takes seconds more (device
    // teardown, hotplug scripts; xl_migrate.c). The guest may run again once the devices are
    // synced AND the target started it: waiting for xl's exit would add that teardown to the
    // guest's downtime. xl's exit is still awaited, after the unpause.
    const startedAtTarget = new Promise<'started'>((resolve) => {
      if (xl.stage === 'started-at-target') resolve('started');
      xl.onStage((stage) => {
        if (stage === 'started-at-target') resolve('started');
      });
    });
    const res = await Promise.race([xl.result, left, startedAtTarget]);
    if (res === 'started' && this.lastJob?.state === 'done') {
      // Devices synced, the guest paused at the target: from here every moment is downtime. The
      // unpause goes out before anything else (no new watch, no re-read of the job), and xl's
      // removal of the source, seconds of dom0 CPU that the guest does not wait for, yields to
      // it (measured on one-vCPU dom0s: the unpause waited behind that removal, docs/deploy-e2e.md).
      this.earlyUnpause = this.unpause();
      // Awaited in syncAndUnpause; a failure meanwhile must not count as unhandled.
      this.earlyUnpause.catch(() => undefined);
      xl.yieldCpu();
    }
    this.interrupt?.removeEventListener('abort', onInterrupt);
    stopWatching.abort();
    await jobWatch;
    if (res === 'left') return { kind: 'outcome', outcome: this.leftEarly() };
    if (res === 'started') {
      const rest = xl.result.then(async (r) => {
        await rm(xl.logFile, { force: true });
        await writeToolstackMark(this.xs, this.dom.domid, 'migrateEnd', Date.now()).catch(() => undefined);
        return r;
      });
      return { kind: 'synced-next', xlPending: rest };
    }
    // Its output is in hand (the last lines are shown on failure); xl is done with the file.
    await rm(xl.logFile, { force: true });
    const xlEnded = Date.now();
    if (res.code === 0) {
      await writeToolstackMark(this.xs, this.dom.domid, 'migrateEnd', xlEnded).catch(() => undefined);
      // Stopped just as xl passed its point of no return: it finished; say so before going on.
      if (stopped && !res.cancelled)
        this.say(`xl finished before it could be stopped: ${this.dom.name} moved`);
      return { kind: 'synced-next' };
    }
    const outcome = await this.afterXlFailure(res, interrupted, abortedBy, xlEnded);
    // Written once the source is settled (devices recovered, guest checked): `devmigrate abort`
    // waits for it before it says where the guest is.
    await writeToolstackMark(this.xs, this.dom.domid, 'migrateEnd', xlEnded).catch(() => undefined);
    return { kind: 'outcome', outcome };
  }

  /** Where the guest is once xl is past its point of no return (for a Ctrl-C and early exits). */
  private whereNow(): string {
    const stage = this.xl?.stage;
    if (stage === 'started-at-target')
      return `xl has started ${this.dom.name} paused on ${this.dest.host} and removes it here`;
    return `xl is past its point of no return: ${this.dom.name} is suspended here (renamed ${this.dom.name}--migratedaway) and ${this.dest.host} holds its memory, to start it paused`;
  }

  private leftEarly(): Outcome {
    return {
      code: ExitCode.UNCERTAIN,
      msg: `left before the end: ${this.whereNow()}`,
      keep: true,
      hints: [
        `on ${this.dest.host}: \`${this.remote('xl', 'list', this.dom.name)}\` shows it paused once xl is done`,
        `when \`devmigrate status ${this.dom.domid}\` says done (devices synced): ${this.remote('xl', 'unpause', this.dom.name)}`,
        'do not unpause it before: its disks may not be in sync at the destination',
        ...(this.xl !== undefined ? [`xl goes on without this command; its output: ${this.xl.logFile}`] : []),
      ],
    };
  }

  private async afterXlFailure(
    xl: XlResult,
    interrupted: InterruptedError | undefined,
    abortedBy: string | undefined,
    xlEnded: number,
  ): Promise<Outcome> {
    const said = lastLines(xl.output).map((l) => `xl said: ${l}`);
    const how = xl.timedOut
      ? `timed out after ${Math.round(this.args.timeoutMs / 1000)} s`
      : `exit ${xl.code ?? xl.signal ?? '?'}`;
    // The agent recovers the devices first; xl's failure path resumed the guest, or meant to
    // (it ignores the result): the guest's real state decides, and a guest xl left suspended
    // here is resumed now, the devices recovered.
    const end = await this.abortJob();
    const name = await this.xs.tryRead(`/local/domain/${this.dom.domid}/name`);
    const stillHere = name === this.dom.name;
    const failure = failureOfOutput(xl.output);
    const settled = end === undefined || end.state === 'aborted' || end.state === 'failed';
    const guest =
      stillHere && failure !== 'undefined-state' && settled
        ? await resumeIfSuspended(this.xs, this.dom.domid)
        : { state: 'unknown' as const, resumed: false };
    if (guest.state === 'running') {
      // The window the guest stood still closes here (when xl resumed it, or we did).
      const at = guest.resumed ? Date.now() : xlEnded;
      await writeToolstackMark(this.xs, this.dom.domid, 'resumedHere', at).catch(() => undefined);
    }
    if (
      stillHere &&
      failure !== 'undefined-state' &&
      settled &&
      (guest.state === 'running' || guest.state === 'unknown')
    ) {
      const why = interrupted
        ? `interrupted: xl migrate was stopped before its point of no return`
        : abortedBy !== undefined
          ? `aborted (${abortedBy}): xl migrate was stopped before its point of no return`
          : `aborted: xl migrate failed (${how})`;
      const state =
        guest.state === 'unknown'
          ? 'xl says it resumed it here (its state could not be read)'
          : guest.resumed
            ? 'xl left it suspended: resumed here, it is running'
            : 'it is running here';
      return {
        code: interrupted ? SIGNAL_EXIT[interrupted.signalName] : ExitCode.ABORTED,
        msg: `${why}; ${this.dom.name}: ${state}; its devices ${end?.recovered === '0' ? 'NOT all recovered (see the error)' : 'recovered'}`,
        hints: interrupted ? [] : said,
      };
    }
    return {
      code: ExitCode.UNCERTAIN,
      msg: `UNCERTAIN: xl migrate failed (${how}) and where ${this.dom.name} runs is not clear${stillHere && guest.state !== 'unknown' ? ` (here it is ${guest.state})` : ''}`,
      keep: true,
      hints: [
        stillHere
          ? `on this host: \`xl list ${this.dom.name}\` (is it paused or suspended?) and \`devmigrate status ${this.dom.domid}\``
          : `${this.dom.name} is no longer named so here (xl renames it ${this.dom.name}--migratedaway past its point of no return): \`xl list\` here, \`${this.remote('xl', 'list')}\` there; run at most one`,
        ...said,
      ],
    };
  }

  /**
   * Stage 3: wait for the devices, then unpause at the destination. xlPending: xl's exit when
   * the unpause may come before it (xl reported the target's startup and is removing the source).
   */
  private async syncAndUnpause(xlPending?: Promise<XlResult>): Promise<Outcome> {
    let up: RunResult;
    if (this.earlyUnpause !== undefined) {
      up = await this.earlyUnpause;
    } else {
      const synced = await this.waitForSync();
      if (synced.kind === 'outcome') return synced.outcome;
      up = await this.unpause();
    }
    if (up.code === 0) await writeToolstackMark(this.xs, this.dom.domid, 'unpaused').catch(() => undefined);
    const xlEnd = await xlPending;
    if (xlEnd !== undefined && xlEnd.code !== 0) {
      return {
        code: ExitCode.UNCERTAIN,
        keep: true,
        msg: `UNCERTAIN: ${this.dom.name} started on ${this.dest.host} but xl migrate then exited ${xlEnd.code ?? xlEnd.signal ?? '?'}`,
        hints: [
          `on this host: \`xl list\` should not show ${this.dom.name}--migratedaway; destroy it if it does`,
          ...(up.code !== 0 ? [`on ${this.dest.host}: ${this.remote('xl', 'unpause', this.dom.name)}`] : []),
          ...lastLines(xlEnd.output).map((l) => `xl said: ${l}`),
        ],
      };
    }
    if (up.code !== 0) {
      return {
        code: ExitCode.UNCERTAIN,
        keep: true,
        msg: `UNCERTAIN: ${this.dom.name} migrated and synced but is still PAUSED on ${this.dest.host}`,
        hints: [
          `on ${this.dest.host}: ${this.remote('xl', 'unpause', this.dom.name)}`,
          ...lastLines(up.output).map((l) => `unpause said: ${l}`),
        ],
      };
    }
    return { code: ExitCode.OK, msg: `migrated ${this.dom.name} to ${this.dest.spec}; it is running there` };
  }

  /** Waits for the job to end; 'synced' when it is done. */
  private async waitForSync(): Promise<{ kind: 'synced' } | { kind: 'outcome'; outcome: Outcome }> {
    // Past xl's point of no return: Ctrl-C only says where the guest is; a second one leaves.
    const leave = new AbortController();
    const onInterrupt = (): void => {
      this.say(
        `interrupted, but ${this.whereNow()}; waiting for the devices, then unpausing it there (Ctrl-C again leaves now)`,
      );
      this.ctx.interrupt?.onRepeat(() => leave.abort(new InterruptedError('SIGINT')));
    };
    if (this.interrupt?.aborted) onInterrupt();
    else this.interrupt?.addEventListener('abort', onInterrupt, { once: true });
    let end: JobView | undefined;
    try {
      end = await waitForJob(
        this.xs,
        this.dom.domid,
        (j) => isFinal(j?.state) || j === undefined,
        this.args.timeoutMs,
        (j) => this.display.update(j),
        leave.signal,
      );
    } catch (err) {
      if (err instanceof InterruptedError) return { kind: 'outcome', outcome: this.leftEarly() };
      if (!(err instanceof CliError) || err.code !== ExitCode.TIMEOUT) throw err;
      end = await readJob(this.xs, this.dom.domid);
    } finally {
      this.interrupt?.removeEventListener('abort', onInterrupt);
    }
    if (end?.state !== 'done') {
      const outcome: Outcome = {
        code: ExitCode.UNCERTAIN,
        keep: true,
        msg: `UNCERTAIN: xl moved ${this.dom.name} to ${this.dest.host} (left paused there) but the devices did not sync (job ${end?.state ?? 'unknown'})`,
        hints: [
          `on ${this.dest.host}: \`${this.remote('xl', 'list', this.dom.name)}\` shows the guest paused; do NOT unpause it until its disks are verified`,
          `on this host: \`devmigrate status ${this.dom.domid}\` and the agent log (journalctl -u xen-devmigrate) name the failing device`,
        ],
      };
      return { kind: 'outcome', outcome };
    }
    return { kind: 'synced' };
  }

  /** The unpause at the destination: the armed remote shell if it is still waiting, else run now. */
  private async unpause(): Promise<RunResult> {
    const armed = this.armed;
    if (armed?.ready) {
      this.say(
        `devices synced; unpausing at the destination (remote shell connected while xl ran): ${this.remote('xl', 'unpause', this.dom.name)}`,
      );
      const up = await armed.fire(UNPAUSE_TIMEOUT_MS);
      if (up.code === 0) return up;
      // Its remote side may not be a POSIX shell, or the connection dropped after the word:
      // one ordinary run decides (xl refuses to unpause a guest that runs already: said so).
      this.say(
        `the connected unpause failed (${lastLines(up.output, 1)[0] ?? `exit ${up.code ?? up.signal}`}); running it again`,
      );
    } else if (armed !== undefined) {
      const early = await armed.endedEarly();
      const why = lastLines(early?.output ?? '', 1)[0] ?? `exit ${early?.code ?? early?.signal ?? '?'}`;
      this.say(`the remote shell started for the unpause ended early (${why}); starting it now`);
    }
    const unpause = [
      ...expand(this.args.unpauseCommand ?? [...this.ssh, '{host}', 'xl', 'unpause'], this.dest.spec),
      this.dom.name,
    ];
    this.say(`devices synced; unpausing at the destination: ${shown(unpause)}`);
    return runBounded(unpause, UNPAUSE_TIMEOUT_MS);
  }

  /** Stage 4: the summary, then the job kept (pruned) or removed. */
  private async finish(out: Outcome): Promise<ExitCodeValue> {
    const job = await readJob(this.xs, this.dom.domid, { timeline: true }).catch(() => undefined);
    // Once xl moved it, the source's name is gone: show the one resolved at the start.
    const shownJob = job !== undefined ? { ...job, name: job.name ?? this.dom.name } : undefined;
    const hints = out.hints ?? [];
    if (this.ctx.json) {
      printJson(this.ctx, {
        domid: this.dom.domid,
        name: this.dom.name,
        target: this.dest.host,
        destination: this.dest.spec,
        result: out.msg,
        exit: out.code,
        job: shownJob ?? null,
        figures: shownJob?.timeline !== undefined ? figures(shownJob.timeline) : null,
        hints,
      });
    } else {
      if (shownJob) for (const l of jobSummary(shownJob)) println(this.ctx, l);
      println(this.ctx, out.msg);
      for (const h of hints) println(this.ctx, `  - ${h}`);
    }
    if (job !== undefined && isFinal(job.state)) {
      if (this.args.keepJob === false && out.keep !== true)
        await removeJob(this.xs, this.dom.domid).catch(() => undefined);
      else await pruneFinishedJobs(this.xs).catch(() => undefined);
    }
    return out.code;
  }
}
