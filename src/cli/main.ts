#!/usr/bin/env node
// The `devmigrate` command. The parser is built from the command definitions (command-spec.ts,
// also the source of the man page and bash completion); each command returns an exit code from
// exit-codes.ts (docs/operations.md). Every failure prints one message in one style (plus hints)
// on stderr, or JSON with --json; a bad command line is always exit 64.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Argv } from 'yargs';
import { isLogFormat, isLogLevel, type LogFormat, type LogLevel } from '../agent/log-options.js';
import { PROTOCOL_VERSION } from '../migration/paths.js';
import { packageVersion } from '../version.js';
import {
  COMMANDS,
  commandOf,
  GLOBAL_OPTIONS,
  GROUPS,
  LOG_FORMATS,
  LOG_LEVEL_NAMES,
  type CommandSpec,
  type OptionSpec,
} from './command-spec.js';
import type { CliContext } from './context.js';
import { CliError, ExitCode, type ExitCodeValue } from './exit-codes.js';
import { Interrupt } from './interrupt.js';
import { parseCommand, parseSshCommand } from './target.js';
import { fromParserMessage, usageError } from './usage-errors.js';

const SEC = 1000;
/** Set when the command was `agent`: the process then exits explicitly when the daemon is done. */
let ranAgent = false;

type Args = Record<string, unknown>;
type Handler = (ctx: CliContext, a: Args, cmd: CommandSpec) => Promise<ExitCodeValue>;

function str(a: Args, k: string): string | undefined {
  const v = a[k];
  return v === undefined || v === null ? undefined : String(v);
}

function secs(cmd: CommandSpec | undefined, v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw usageError(cmd, `--${name} must be a positive number of seconds, got ${JSON.stringify(v)}`);
  return v * SEC;
}

function logOptions(
  cmd: CommandSpec | undefined,
  format: unknown,
  levelRaw: unknown,
): { format: LogFormat; level: LogLevel | undefined } {
  const fmt = String(format ?? 'auto');
  if (!isLogFormat(fmt))
    throw usageError(cmd, `--log-format "${fmt}" is not one of ${LOG_FORMATS.join(', ')}`);
  if (levelRaw === undefined) return { format: fmt, level: undefined };
  if (typeof levelRaw !== 'string' || !isLogLevel(levelRaw))
    throw usageError(cmd, `--log-level "${String(levelRaw)}" is not one of ${LOG_LEVEL_NAMES.join(', ')}`);
  return { format: fmt, level: levelRaw };
}

/** The configuration file: --config, else $DEVMIGRATE_CONFIG (the simulated host sets it), else the default. */
function configPathOf(given: unknown): string | undefined {
  if (typeof given === 'string' && given !== '') return given;
  const env = process.env['DEVMIGRATE_CONFIG'];
  return env !== undefined && env !== '' ? env : undefined;
}

const AGENT = COMMANDS.find((c) => c.path[0] === 'agent');

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
  const { format, level } = logOptions(AGENT, values['log-format'], values['log-level']);
  const drain = values['drain-timeout'] === undefined ? 30 : Number(values['drain-timeout']);
  const { runAgent } = await import('../agent/run.js');
  ranAgent = true;
  return runAgent({
    configPath: configPathOf(values['config']),
    logFormat: format,
    logLevel: level,
    drainTimeoutMs: secs(AGENT, drain, 'drain-timeout'),
  });
}

const HANDLERS: Readonly<Record<string, Handler>> = {
  agent: async (ctx, a, cmd) => {
    const { format, level } = logOptions(cmd, a['log-format'], a['log-level']);
    const { runAgent } = await import('../agent/run.js');
    ranAgent = true;
    return runAgent({
      configPath: ctx.configPath,
      logFormat: format,
      logLevel: level,
      drainTimeoutMs: secs(cmd, a['drain-timeout'], 'drain-timeout'),
    });
  },
  migrate: async (ctx, a, cmd) => {
    const { migrateCommand } = await import('./commands/migrate.js');
    const ssh = str(a, 'ssh-command');
    const unpause = str(a, 'unpause-command');
    return migrateCommand(ctx, {
      domain: String(a['domain']),
      destination: String(a['host']),
      ...(ssh !== undefined ? { sshCommand: parseSshCommand(ssh) } : {}),
      migrateCommand: parseCommand(String(a['migrate-command']), '--migrate-command'),
      ...(unpause !== undefined ? { unpauseCommand: parseCommand(unpause, '--unpause-command') } : {}),
      live: a['live'] !== false,
      timeoutMs: secs(cmd, a['timeout'], 'timeout'),
      keepJob: a['keep-job'] !== false,
    });
  },
  check: async (ctx, a, cmd) => {
    const { checkCommand } = await import('./commands/jobs.js');
    return checkCommand(ctx, {
      domain: String(a['domain']),
      host: str(a, 'host'),
      timeoutMs: secs(cmd, a['timeout'], 'timeout'),
    });
  },
  status: async (ctx, a, cmd) => {
    const { statusCommand } = await import('./commands/jobs.js');
    return statusCommand(ctx, {
      domain: str(a, 'domain'),
      watch: a['watch'] === true,
      timeoutMs: secs(cmd, a['timeout'], 'timeout'),
    });
  },
  report: async (ctx, a, cmd) => {
    const { reportCommand } = await import('./commands/report.js');
    const width = a['width'];
    if (
      width !== undefined &&
      (typeof width !== 'number' || !Number.isInteger(width) || width < 40 || width > 400)
    )
      throw usageError(
        cmd,
        `--width must be a whole number of columns from 40 to 400, got ${JSON.stringify(width)}`,
      );
    return reportCommand(ctx, {
      spec: String(a['domain']),
      svg: str(a, 'svg'),
      ...(typeof width === 'number' ? { width } : {}),
    });
  },
  abort: async (ctx, a, cmd) => {
    const { abortCommand } = await import('./commands/jobs.js');
    return abortCommand(ctx, { domain: String(a['domain']), timeoutMs: secs(cmd, a['timeout'], 'timeout') });
  },
  step: async (ctx, a, cmd) => {
    const { stepCommand } = await import('./commands/jobs.js');
    return stepCommand(ctx, {
      domain: String(a['domain']),
      step: String(a['step']),
      host: str(a, 'host'),
      timeoutMs: secs(cmd, a['timeout'], 'timeout'),
    });
  },
  'config check': async (ctx) => (await import('./commands/config.js')).configCheckCommand(ctx),
  'sim up': async (ctx, a) => {
    const { simUpCommand } = await import('./commands/sim.js');
    return simUpCommand(ctx, { dir: String(a['dir']), host: str(a, 'host'), agent: a['agent'] === true });
  },
  'sim down': async (ctx, a) => {
    const { simDownCommand } = await import('./commands/sim.js');
    return simDownCommand(ctx, { dir: String(a['dir']) });
  },
  'sim serve': async (_ctx, a) => {
    const { simServeCommand } = await import('./commands/sim.js');
    return simServeCommand({ dir: String(a['dir']), host: str(a, 'host'), agent: a['agent'] === true });
  },
  demo: async (ctx, a) => {
    const { demoCommand } = await import('./commands/demo.js');
    return demoCommand(ctx, { dir: str(a, 'dir') });
  },
};

function addOption(y: Argv, o: OptionSpec): Argv {
  return y.option(o.name, {
    type: o.type,
    describe: o.describe,
    ...(o.alias !== undefined ? { alias: o.alias } : {}),
    ...(o.default !== undefined ? { default: o.default } : {}),
    ...(o.defaultText !== undefined ? { defaultDescription: o.defaultText } : {}),
    ...(o.choices !== undefined ? { choices: [...o.choices] } : {}),
    ...(o.required === true ? { demandOption: true } : {}),
    // A value-taking option given without one is an error, not a silent default.
    ...(o.type !== 'boolean' ? { requiresArg: true } : {}),
  });
}

function commandString(c: CommandSpec): string {
  const leaf = c.path[c.path.length - 1] ?? '';
  const pos = c.positionals.map((p) => (p.optional === true ? `[${p.name}]` : `<${p.name}>`));
  return [leaf, ...pos].join(' ');
}

/** Parses argv and runs one command; resolves with the exit code (never calls process.exit). */
export async function main(argv: string[], ctxOverride?: Partial<CliContext>): Promise<ExitCodeValue> {
  const out = ctxOverride?.out ?? process.stdout;
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    out.write(`devmigrate ${packageVersion()} (job protocol ${PROTOCOL_VERSION})\n`);
    return ExitCode.OK;
  }
  try {
    const fast = await agentFastPath(argv);
    if (fast !== undefined) return fast;
  } catch (err) {
    return report(err, false, ctxOverride);
  }
  const { default: yargs } = await import('yargs');
  let code: ExitCodeValue = ExitCode.OK;
  const jsonMode = argv.includes('--json');
  const ctxOf = (a: Args): CliContext => ({
    json: a['json'] === true,
    out,
    err: ctxOverride?.err ?? process.stderr,
    configPath: configPathOf(a['config']),
    ...(ctxOverride?.interrupt !== undefined ? { interrupt: ctxOverride.interrupt } : {}),
    ...ctxOverride,
  });
  const run = (c: CommandSpec) => async (a: Args) => {
    const h = HANDLERS[c.path.join(' ')];
    if (h === undefined) throw new CliError(`no handler for ${c.path.join(' ')}`, ExitCode.SOFTWARE);
    code = await h(ctxOf(a), a, c);
  };
  const build = (y: Argv, c: CommandSpec): Argv => {
    let b = y;
    for (const p of c.positionals) {
      b = b.positional(p.name, {
        type: 'string',
        describe: p.describe,
        ...(p.choices !== undefined ? { choices: [...p.choices] } : {}),
      });
    }
    for (const o of c.options) b = addOption(b, o);
    for (const [ex, what] of c.examples ?? []) b = b.example(ex, what);
    return b;
  };

  let parser = yargs(argv)
    .scriptName('devmigrate')
    .usage(
      '$0 <command> [options]\n\nMigrate a Xen domain together with its devices (an agent in dom0 drives them through XenStore). The manual: man devmigrate.',
    )
    .wrap(Math.min(100, (out as { columns?: number }).columns ?? 80));
  for (const o of GLOBAL_OPTIONS) parser = addOption(parser, o);
  for (const c of COMMANDS.filter((x) => x.path.length === 1)) {
    parser = parser.command({
      command: commandString(c),
      describe: c.hidden === true ? false : c.summary,
      builder: (y: Argv) => build(y, c),
      handler: run(c),
    });
  }
  for (const [group, describe] of Object.entries(GROUPS)) {
    const subs = COMMANDS.filter((c) => c.path.length === 2 && c.path[0] === group);
    parser = parser.command(group, describe, (y) => {
      let g = y;
      for (const c of subs) {
        g = g.command({
          command: commandString(c),
          describe: c.hidden === true ? false : c.summary,
          builder: (yy: Argv) => build(yy, c),
          handler: run(c),
        });
      }
      const names = subs.filter((c) => c.hidden !== true).map((c) => c.path[1]);
      return g.demandCommand(1, `give a subcommand (${names.join(', ')})`);
    });
  }
  parser = parser
    .demandCommand(1, 'give a command (devmigrate --help lists them)')
    .strict()
    .help()
    .alias('help', 'h')
    .version(false)
    .exitProcess(false)
    .fail((msg: string | undefined, err: Error | undefined) => {
      // The parser's own complaints (YError) are usage errors too; our handlers' errors pass.
      if (err !== undefined && err.name !== 'YError') throw err;
      throw fromParserMessage(msg ?? err?.message ?? '', argv);
    });

  try {
    let helpText = '';
    await parser.parseAsync(argv, {}, (_err: Error | undefined, _a: unknown, output: string) => {
      helpText = output;
    });
    if (helpText !== '') out.write(`${helpText}\n`);
    return code;
  } catch (err) {
    if (err instanceof Error && err.name === 'YError')
      return report(fromParserMessage(err.message, argv), jsonMode, ctxOverride);
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
  // The agent (drain) and the simulated host's supervisor (sim down) handle their own signals;
  // every other command stops what it started.
  const own = commandOf(args)?.path.join(' ');
  const interrupt =
    args[0] === 'agent' || own === 'agent' || own === 'sim serve' ? undefined : new Interrupt();
  interrupt?.install((code) => process.exit(code));
  main(args, interrupt !== undefined ? { interrupt } : undefined).then(
    (rc) => {
      interrupt?.uninstall();
      process.exitCode = rc;
      // The daemon may leave timers of jobs it gave up on (after its bounded drain); a CLI
      // command may leave a watch of a job it stopped following: exit once the output is out.
      if (ranAgent || interrupt?.received !== undefined) setTimeout(() => process.exit(rc), 50);
    },
    (err: unknown) => {
      process.stderr.write(`devmigrate: ${String(err)}\n`);
      process.exitCode = ExitCode.SOFTWARE;
    },
  );
}
