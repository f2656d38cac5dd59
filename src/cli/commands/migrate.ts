// `devmigrate migrate <domain> <host>`: the xl wrapper. A job with suspend=toolstack lets the
// agent start post-suspend the moment xl suspends the guest; xl runs with -p (paused at the
// destination) and the guest is unpaused there only once the devices are synced.
import { spawn } from 'node:child_process';
import type { XenStore } from '../../xenstore/types.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, withXenStore, type CliContext } from '../context.js';
import {
  checkTarget,
  isFinal,
  newJobId,
  readJob,
  removeJob,
  waitForJob,
  writeControl,
  writeRequest,
  type JobView,
} from '../job-client.js';
import { resolveMigratable } from '../preflight.js';
import { jobSummary, ProgressDisplay } from '../render.js';

export interface MigrateArgs {
  domain: string;
  host: string;
  /** argv before "<domain> <host>"; default xl migrate -p. */
  migrateCommand: string[];
  /** argv before "<domain>", run to unpause at the destination; default ssh <host> xl unpause. */
  unpauseCommand: string[];
  live: boolean;
  timeoutMs: number;
  /** Keep the finished job in XenStore (default: removed once reported). */
  keepJob?: boolean;
}

/** Words only: the commands run without a shell, and odd characters are refused up front. */
export function parseCommand(text: string, what: string): string[] {
  const words = text.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) throw new CliError(`${what} is empty`, ExitCode.USAGE);
  for (const w of words) {
    if (!/^[A-Za-z0-9_@%+=:,./{}-]+$/.test(w)) {
      throw new CliError(`${what}: ${JSON.stringify(w)} has characters that are not allowed`, ExitCode.USAGE);
    }
  }
  return words;
}

/** {host} in a command word becomes the destination host (e.g. "ssh {host} xl unpause"). */
export function expand(words: readonly string[], host: string): string[] {
  return words.map((w) => w.split('{host}').join(host));
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/**
 * What xl migrate prints once the destination holds the complete domain (renamed, paused with
 * -p) and before it destroys the source, which takes seconds more (device teardown, hotplug
 * scripts): from this line on the guest may be unpaused at the destination (xl_migrate.c).
 */
export const TARGET_STARTED = /migration sender: Target reports successful startup/;

function run(
  argv: readonly string[],
  timeoutMs: number,
  onOutput?: (text: string) => void,
): Promise<RunResult> {
  return new Promise((resolve) => {
    const [cmd, ...rest] = argv;
    if (cmd === undefined) return resolve({ code: 127, signal: null, output: 'empty command' });
    const child = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (b: Buffer): void => {
      output = (output + b.toString()).slice(-16_384);
      onOutput?.(output);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: 127, signal: null, output: `${output}${err.message}` });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

function lastLines(text: string, n = 5): string[] {
  return text.trim().split('\n').slice(-n).filter(Boolean);
}

export async function migrateCommand(ctx: CliContext, args: MigrateArgs): Promise<ExitCodeValue> {
  checkTarget(args.host);
  return withXenStore(ctx, async (xs) => {
    const dom = await resolveMigratable(xs, args.domain);
    const display = new ProgressDisplay(ctx.out, !ctx.json);
    const say = (l: string): void => {
      display.end();
      if (!ctx.json) println(ctx, l);
    };
    const finish = async (
      code: ExitCodeValue,
      job: JobView | undefined,
      msg: string,
      hints: string[] = [],
    ): Promise<ExitCodeValue> => {
      display.end();
      // Once xl moved it, the source's name is gone from XenStore: show the one resolved at the start.
      const shown = job !== undefined ? { ...job, name: job.name ?? dom.name } : undefined;
      if (ctx.json)
        printJson(ctx, {
          domid: dom.domid,
          name: dom.name,
          target: args.host,
          result: msg,
          exit: code,
          job: shown ?? null,
          hints,
        });
      else {
        if (shown) for (const l of jobSummary(shown)) println(ctx, l);
        println(ctx, msg);
        for (const h of hints) println(ctx, `  - ${h}`);
      }
      if (!args.keepJob && isFinal(job?.state)) await removeJob(xs, dom.domid).catch(() => undefined);
      return code;
    };

    await writeRequest(xs, dom.domid, {
      id: newJobId(),
      target: args.host,
      mode: 'auto',
      suspend: 'toolstack',
      live: args.live,
    });
    say(`migrating ${dom.name} (id ${dom.domid}) to ${args.host}`);
    const onChange = (j: JobView | undefined): void => display.update(j);

    // 1. test + pre-suspend; the agent then waits to see the toolstack suspend the domain.
    const ready = await waitForJob(
      xs,
      dom.domid,
      (j) => j?.state === 'suspending' || isFinal(j?.state),
      args.timeoutMs,
      onChange,
    );
    if (ready?.state !== 'suspending') {
      const code = ready?.state === 'refused' ? ExitCode.REFUSED : ExitCode.ABORTED;
      return finish(
        code,
        ready,
        `not migrated: the job ended in state ${ready?.state ?? '?'}; ${dom.name} keeps running here`,
      );
    }

    // 2. xl migrate -p: xl suspends the guest (the agent sees it and runs post-suspend meanwhile).
    // The guest may run again once BOTH the devices are synced and xl's target holds the domain:
    // xl says so before it destroys the source, so the unpause need not wait for xl's exit.
    const argv = [...expand(args.migrateCommand, args.host), dom.name, args.host];
    say(`devices ready; running: ${argv.join(' ')}`);
    let targetStarted: () => void = () => undefined;
    const started = new Promise<'started'>((resolve) => (targetStarted = () => resolve('started')));
    const xlDone = run(argv, args.timeoutMs, (out) => {
      if (TARGET_STARTED.test(out)) targetStarted();
    });
    const first = await Promise.race([started, xlDone]);
    if (first !== 'started' && first.code !== 0)
      return afterXlFailure(xs, ctx, args, dom, first, finish, onChange);

    // 3. wait for sync (usually over by now: it ran beside xl's last memory round), then unpause.
    const end = await waitForJob(
      xs,
      dom.domid,
      (j) => isFinal(j?.state) || j === undefined,
      args.timeoutMs,
      onChange,
    ).catch((err: unknown) => {
      if (err instanceof CliError && err.code === ExitCode.TIMEOUT) return readJob(xs, dom.domid);
      throw err;
    });
    if (end?.state !== 'done') {
      await xlDone;
      return finish(
        ExitCode.UNCERTAIN,
        end,
        `UNCERTAIN: xl moved ${dom.name} to ${args.host} (left paused there) but the devices did not sync (state ${end?.state ?? 'unknown'})`,
        [
          `on ${args.host}: \`xl list ${dom.name}\` shows the guest paused; do NOT unpause it until its disks are verified`,
          `on this host: \`devmigrate status ${dom.domid}\` and the agent log (journalctl -u xen-devmigrate) name the failing device`,
        ],
      );
    }
    const unpause = [...expand(args.unpauseCommand, args.host), dom.name];
    say(`devices synced; unpausing at the destination: ${unpause.join(' ')}`);
    const up = await run(unpause, 60_000);
    // xl only destroys the source after its target's startup; its exit is awaited all the same.
    const xl = await xlDone;
    if (xl.code !== 0) {
      return finish(
        ExitCode.UNCERTAIN,
        end,
        `UNCERTAIN: ${dom.name} started on ${args.host} but xl migrate then exited ${xl.code ?? xl.signal}`,
        [
          `on this host: \`xl list\` should not show ${dom.name}--migratedaway; destroy it if it does`,
          ...lastLines(xl.output).map((l) => `xl said: ${l}`),
        ],
      );
    }
    if (up.code !== 0) {
      return finish(
        ExitCode.UNCERTAIN,
        end,
        `UNCERTAIN: ${dom.name} migrated and synced but is still PAUSED on ${args.host}`,
        [`on ${args.host}: xl unpause ${dom.name}`, ...lastLines(up.output).map((l) => `unpause said: ${l}`)],
      );
    }
    return finish(ExitCode.OK, end, `migrated ${dom.name} to ${args.host}; it is running there`);
  });
}

type Finish = (
  code: ExitCodeValue,
  job: JobView | undefined,
  msg: string,
  hints?: string[],
) => Promise<ExitCodeValue>;

async function afterXlFailure(
  xs: XenStore,
  _ctx: CliContext,
  args: MigrateArgs,
  dom: { domid: number; name: string },
  xl: RunResult,
  finish: Finish,
  onChange: (j: JobView | undefined) => void,
): Promise<ExitCodeValue> {
  const said = lastLines(xl.output).map((l) => `xl said: ${l}`);
  // Abort the job: the agent recovers the devices; xl itself resumes a guest it suspended.
  const now = await readJob(xs, dom.domid);
  if (now && !isFinal(now.state)) await writeControl(xs, dom.domid, 'abort').catch(() => undefined);
  const end = await waitForJob(
    xs,
    dom.domid,
    (j) => j === undefined || (isFinal(j.state) && j.state !== 'done'),
    120_000,
    onChange,
  ).catch(() => readJob(xs, dom.domid));
  const stillHere = (await xs.tryRead(`/local/domain/${dom.domid}/name`)) === dom.name;
  if (stillHere && end?.state === 'aborted') {
    return finish(
      ExitCode.ABORTED,
      end,
      `aborted: xl migrate failed (exit ${xl.code ?? xl.signal}); ${dom.name} is running here`,
      said,
    );
  }
  return finish(
    ExitCode.UNCERTAIN,
    end,
    `UNCERTAIN: xl migrate failed (exit ${xl.code ?? xl.signal}) and the state of ${dom.name} is not clear`,
    [
      stillHere
        ? `on this host: \`xl list ${dom.name}\` (is it paused or shut down?) and \`devmigrate status ${dom.domid}\``
        : `${dom.name} is no longer on this host: on ${args.host}, \`xl list ${dom.name}\``,
      ...said,
    ],
  );
}
