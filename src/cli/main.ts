#!/usr/bin/env node
// The `devmigrate` command (yargs): agent, migrate, check, status, abort, step, config check,
// sim up/down and demo. Every command returns an exit code from exit-codes.ts (documented in
// docs/operations.md); failures print one clear message (plus hints) on stderr, or JSON with --json.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { isLogFormat, isLogLevel, type LogFormat, type LogLevel } from '../agent/log-options.js';
import { CliError, ExitCode, type ExitCodeValue } from './exit-codes.js';
import type { CliContext } from './context.js';

const SEC = 1000;
/** Set when the command was `agent`: the process then exits explicitly when the daemon is done. */
let ranAgent = false;

interface Globals {
  json: boolean;
  config?: string;
}

function ctxOf(argv: Globals): CliContext {
  return { json: argv.json, out: process.stdout, err: process.stderr, configPath: argv.config };
}

function secs(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new CliError(`--${name} must be a positive number of seconds`, ExitCode.USAGE);
  return v * SEC;
}

function logOptions(format: unknown, levelRaw: unknown): { format: LogFormat; level: LogLevel | undefined } {
  const fmt = String(format ?? 'auto');
  if (!isLogFormat(fmt))
    throw new CliError(`--log-format ${fmt}: one of auto, journal, human, json`, ExitCode.USAGE);
  if (levelRaw === undefined) return { format: fmt, level: undefined };
  if (typeof levelRaw !== 'string' || !isLogLevel(levelRaw)) {
    throw new CliError(
      `--log-level ${String(levelRaw)}: one of error, warn, notice, info, debug`,
      ExitCode.USAGE,
    );
  }
  return { format: fmt, level: levelRaw };
}

/**
 * `devmigrate agent [options]` is what systemd starts: parsed without loading yargs (a fifth of
 * the start-up time). Anything unusual (--help, unknown options) goes through yargs instead.
 */
async function agentFastPath(argv: string[]): Promise<ExitCodeValue | undefined> {
  if (argv[0] !== 'agent') return undefined;
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv.slice(1),
      strict: true,
      options: {
        config: { type: 'string' },
        'log-format': { type: 'string' },
        'log-level': { type: 'string' },
        'drain-timeout': { type: 'string' },
        json: { type: 'boolean' },
      },
    }).values;
  } catch {
    return undefined;
  }
  const { format, level } = logOptions(values['log-format'], values['log-level']);
  const drain = values['drain-timeout'] === undefined ? 30 : Number(values['drain-timeout']);
  const { runAgent } = await import('../agent/run.js');
  ranAgent = true;
  const config = values['config'];
  return runAgent({
    configPath: typeof config === 'string' ? config : undefined,
    logFormat: format,
    logLevel: level,
    drainTimeoutMs: secs(drain, 'drain-timeout'),
  });
}

/** Parses argv and runs one command; resolves with the exit code (never calls process.exit). */
export async function main(argv: string[], ctxOverride?: Partial<CliContext>): Promise<ExitCodeValue> {
  try {
    const fast = await agentFastPath(argv);
    if (fast !== undefined) return fast;
  } catch (err) {
    return report(err, false, ctxOverride);
  }
  const { default: yargs } = await import('yargs');
  let code: ExitCodeValue = ExitCode.OK;
  let jsonMode = argv.includes('--json');
  const wrap = (fn: (ctx: CliContext) => Promise<ExitCodeValue>) => async (a: Globals) => {
    jsonMode = a.json;
    code = await fn({ ...ctxOf(a), ...ctxOverride });
  };
  const parser = yargs(argv)
    .scriptName('devmigrate')
    .usage(
      '$0 <command> [options]\n\nMigrate a Xen domain together with its devices; see docs/operations.md.',
    )
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'Machine-readable output (one JSON document per line)',
    })
    .option('config', { type: 'string', describe: 'Configuration file (default /etc/xen/devmigrate.json)' })
    .command(
      'agent',
      'Run the agent daemon (what xen-devmigrate.service starts)',
      (y) =>
        y
          .option('log-format', {
            type: 'string',
            default: 'auto',
            describe: 'auto | journal | human | json',
          })
          .option('log-level', {
            type: 'string',
            describe: 'error | warn | notice | info | debug (overrides the config)',
          })
          .option('drain-timeout', {
            type: 'number',
            default: 30,
            describe:
              'SIGTERM: seconds to bring running jobs to a safe end (jobs past the suspension may finish, others are aborted)',
          }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const fmt = String(a['log-format'] ?? 'auto');
        if (!isLogFormat(fmt))
          throw new CliError(`--log-format ${fmt}: one of auto, journal, human, json`, ExitCode.USAGE);
        const lvlRaw = a['log-level'];
        let level: LogLevel | undefined;
        if (lvlRaw !== undefined) {
          if (typeof lvlRaw !== 'string' || !isLogLevel(lvlRaw))
            throw new CliError(
              `--log-level ${String(lvlRaw)}: one of error, warn, notice, info, debug`,
              ExitCode.USAGE,
            );
          level = lvlRaw;
        }
        const { runAgent } = await import('../agent/run.js');
        ranAgent = true;
        return runAgent({
          configPath: ctx.configPath,
          logFormat: fmt as LogFormat,
          logLevel: level,
          drainTimeoutMs: secs(a['drain-timeout'], 'drain-timeout'),
        });
      }),
    )
    .command(
      'migrate <domain> <host>',
      'Migrate a domain with xl, its devices driven by the agent (xl migrate -p, then unpause at the destination)',
      (y) =>
        y
          .positional('domain', { type: 'string', describe: 'Domain name or id' })
          .positional('host', { type: 'string', describe: 'Destination host name or address' })
          .option('migrate-command', {
            type: 'string',
            default: 'xl migrate -p',
            describe: 'Command run as: <command> <domain> <host>',
          })
          .option('unpause-command', {
            type: 'string',
            default: 'ssh {host} xl unpause',
            describe: 'Command run as: <command> <domain> ({host} = destination)',
          })
          .option('live', {
            type: 'boolean',
            default: true,
            describe: 'Live migration (--no-live: suspend first)',
          })
          .option('timeout', { type: 'number', default: 3600, describe: 'Seconds to wait for each stage' })
          .option('keep-job', {
            type: 'boolean',
            default: false,
            describe: 'Leave the finished job in XenStore',
          }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const { migrateCommand, parseCommand } = await import('./commands/migrate.js');
        return migrateCommand(ctx, {
          domain: String(a['domain']),
          host: String(a['host']),
          migrateCommand: parseCommand(String(a['migrate-command']), '--migrate-command'),
          unpauseCommand: parseCommand(String(a['unpause-command']), '--unpause-command'),
          live: a['live'] !== false,
          timeoutMs: secs(a['timeout'], 'timeout'),
          keepJob: a['keep-job'] === true,
        });
      }),
    )
    .command(
      'check <domain> [host]',
      'Run the test phase only: would the devices let this domain migrate? (exit 0 yes, 3 no)',
      (y) =>
        y
          .positional('domain', { type: 'string' })
          .positional('host', { type: 'string' })
          .option('timeout', { type: 'number', default: 120 }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const { checkCommand } = await import('./commands/jobs.js');
        return checkCommand(ctx, {
          domain: String(a['domain']),
          host: a['host'] === undefined ? undefined : String(a['host']),
          timeoutMs: secs(a['timeout'], 'timeout'),
        });
      }),
    )
    .command(
      'status [domain]',
      "Show the agent and the jobs (or one domain's job); --watch follows it live",
      (y) =>
        y
          .positional('domain', { type: 'string' })
          .option('watch', { type: 'boolean', default: false })
          .option('timeout', {
            type: 'number',
            default: 86400,
            describe: 'With --watch: give up after this many seconds',
          }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const { statusCommand } = await import('./commands/jobs.js');
        return statusCommand(ctx, {
          domain: a['domain'] === undefined ? undefined : String(a['domain']),
          watch: a['watch'] === true,
          timeoutMs: secs(a['timeout'], 'timeout'),
        });
      }),
    )
    .command(
      'abort <domain>',
      "Abort the domain's job: devices recovered, the guest resumed at the source",
      (y) => y.positional('domain', { type: 'string' }).option('timeout', { type: 'number', default: 300 }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const { abortCommand } = await import('./commands/jobs.js');
        return abortCommand(ctx, { domain: String(a['domain']), timeoutMs: secs(a['timeout'], 'timeout') });
      }),
    )
    .command(
      'step <domain> <step>',
      'Drive a steps-mode job one step (test, pre-suspend, post-suspend, sync, recover, abort), as xend did',
      (y) =>
        y
          .positional('domain', { type: 'string' })
          .positional('step', { type: 'string' })
          .option('host', { type: 'string', describe: 'Destination; needed by the first step (test)' })
          .option('timeout', { type: 'number', default: 3600 }),
      wrap(async (ctx) => {
        const a = parsedArgs;
        const { stepCommand } = await import('./commands/jobs.js');
        return stepCommand(ctx, {
          domain: String(a['domain']),
          step: String(a['step']),
          host: a['host'] === undefined ? undefined : String(a['host']),
          timeoutMs: secs(a['timeout'], 'timeout'),
        });
      }),
    )
    .command('config', 'Configuration commands', (y) =>
      y
        .command(
          'check',
          'Validate the configuration file (exit 78 names the bad key)',
          () => undefined,
          wrap(async (ctx) => (await import('./commands/config.js')).configCheckCommand(ctx)),
        )
        .demandCommand(1, 'config: give a subcommand (check)'),
    )
    .command('sim', 'A simulated Xen host (real xenstored, simulated hypervisor and guests)', (y) =>
      y
        .command(
          'up',
          'Start a simulated host in the background and print its environment',
          (yy) =>
            yy
              .option('dir', { type: 'string', demandOption: true, describe: "Folder for the host's files" })
              .option('host', {
                type: 'string',
                describe: 'Host description (JSON); default xen-mocks/hosts/example-host.json',
              }),
          wrap(async (ctx) => {
            const a = parsedArgs;
            const { simUpCommand } = await import('./commands/sim.js');
            return simUpCommand(ctx, {
              dir: String(a['dir']),
              host: a['host'] === undefined ? undefined : String(a['host']),
            });
          }),
        )
        .command(
          'down',
          'Stop the simulated host of a folder',
          (yy) => yy.option('dir', { type: 'string', demandOption: true }),
          wrap(async (ctx) => {
            const { simDownCommand } = await import('./commands/sim.js');
            return simDownCommand(ctx, { dir: String(parsedArgs['dir']) });
          }),
        )
        .command(
          'serve',
          false,
          (yy) => yy.option('dir', { type: 'string', demandOption: true }).option('host', { type: 'string' }),
          wrap(async () => {
            const { simServe } = await import('./commands/sim-serve.js');
            const a = parsedArgs;
            const rc = await simServe({
              dir: String(a['dir']),
              host: a['host'] === undefined ? undefined : String(a['host']),
            });
            return rc === 0 ? ExitCode.OK : ExitCode.FAILURE;
          }),
        )
        .demandCommand(1, 'sim: give a subcommand (up, down)'),
    )
    .command(
      'demo',
      'Show the product on a simulated host: a migration, a refusal and an abort (no Xen needed)',
      (y) =>
        y.option('dir', {
          type: 'string',
          describe: "Keep the demo's files here (default: a temp folder, removed)",
        }),
      wrap(async (ctx) => {
        const { demoCommand } = await import('./commands/demo.js');
        return demoCommand(ctx, {
          dir: parsedArgs['dir'] === undefined ? undefined : String(parsedArgs['dir']),
        });
      }),
    )
    .demandCommand(1, 'give a command (devmigrate --help lists them)')
    .strict()
    .help()
    .version(false)
    .exitProcess(false)
    .fail((msg: string | undefined, err: Error | undefined) => {
      if (err) throw err;
      throw new CliError(msg ?? 'bad command line', ExitCode.USAGE);
    });

  let parsedArgs: Record<string, unknown> = {};
  // yargs calls the handler during parse; the handler reads the parsed values through this.
  parser.middleware((a) => {
    parsedArgs = a as Record<string, unknown>;
  });
  try {
    await parser.parseAsync();
    return code;
  } catch (err) {
    return report(err, jsonMode, ctxOverride);
  }
}

function report(err: unknown, json: boolean, ctx?: Partial<CliContext>): ExitCodeValue {
  const out = ctx?.out ?? process.stdout;
  const errOut = ctx?.err ?? process.stderr;
  if (err instanceof CliError) {
    if (json)
      out.write(`${JSON.stringify({ ok: false, error: err.message, exit: err.code, hints: err.hints })}\n`);
    else {
      errOut.write(`devmigrate: ${err.message}\n`);
      for (const h of err.hints) errOut.write(`  - ${h}\n`);
    }
    return err.code;
  }
  const msg = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  if (json) out.write(`${JSON.stringify({ ok: false, error: msg, exit: ExitCode.SOFTWARE })}\n`);
  else errOut.write(`devmigrate: unexpected error: ${msg}\n`);
  return ExitCode.SOFTWARE;
}

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  const args = process.argv.slice(2);
  main(args).then(
    (rc) => {
      process.exitCode = rc;
      // The daemon may leave timers of jobs it gave up on (after its bounded drain): exit
      // explicitly once the last log lines are out, rather than hang on them.
      if (ranAgent) setTimeout(() => process.exit(rc), 50);
    },
    (err: unknown) => {
      process.stderr.write(`devmigrate: ${String(err)}\n`);
      process.exitCode = ExitCode.SOFTWARE;
    },
  );
}
