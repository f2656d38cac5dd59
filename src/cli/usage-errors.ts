// One style for every bad command line, whatever part found it: "devmigrate <command>: <what is
// wrong>" with the command's synopsis as a hint, exit 64. The parser's own messages ("Not enough
// non-option arguments: got 1, need at least 2", "Unknown arguments: bogus-flag, bogusFlag") are
// turned into that style here, from the command definitions (pure: message + argv in, error out).
import {
  COMMANDS,
  commandOf,
  GROUPS,
  plainWords,
  synopsis,
  visibleCommands,
  type CommandSpec,
} from './command-spec.js';
import { CliError, ExitCode } from './exit-codes.js';

function camelToKebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

function hintsFor(cmd: CommandSpec | undefined): string[] {
  if (cmd === undefined) return ['devmigrate --help lists the commands; man devmigrate explains them'];
  return [`usage: ${synopsis(cmd)}`, `devmigrate ${cmd.path.join(' ')} --help for its options`];
}

function topLevelCommands(): string {
  const names = new Set(visibleCommands().map((c) => c.path[0] ?? ''));
  return [...names].join(', ');
}

/** A usage error in our style for a command (or the program when cmd is undefined). */
export function usageError(cmd: CommandSpec | undefined, what: string): CliError {
  const where = cmd === undefined ? '' : `${cmd.path.join(' ')}: `;
  return new CliError(`${where}${what}`, ExitCode.USAGE, hintsFor(cmd));
}

/** Turns the parser's message about `argv` into our style. */
export function fromParserMessage(msg: string, argv: readonly string[]): CliError {
  const cmd = commandOf(argv);
  const words = plainWords(argv);
  let m: RegExpExecArray | null;

  if ((m = /^Not enough non-option arguments: got (\d+), need at least (\d+)/.exec(msg)) !== null) {
    // yargs counts the command's own positionals given (not the command words).
    const got = Number(m[1]);
    const missing = (cmd?.positionals ?? [])
      .filter((p) => p.optional !== true)
      .slice(Math.max(0, got))
      .map((p) => `<${p.display ?? p.name}>`);
    return usageError(cmd, `missing ${missing.length > 0 ? missing.join(' ') : 'arguments'}`);
  }
  if ((m = /^Unknown arguments?: (.*)$/s.exec(msg)) !== null) {
    const given = (m[1] ?? '').split(', ').map((a) => a.trim());
    // yargs names an unknown --bogus-flag twice (bogus-flag, bogusFlag): report the flag once.
    const flags = new Set<string>();
    const extra: string[] = [];
    for (const a of given) {
      const asFlag = camelToKebab(a);
      if (argv.some((x) => x === `--${asFlag}` || x.startsWith(`--${asFlag}=`) || x === `-${a}`)) {
        flags.add(a.length === 1 ? `-${a}` : `--${asFlag}`);
      } else if (words.includes(a)) extra.push(a);
    }
    if (cmd === undefined && extra.length > 0 && words[0] === extra[0]) {
      return usageError(
        undefined,
        `unknown command ${JSON.stringify(extra[0])} (one of ${topLevelCommands()})`,
      );
    }
    if (flags.size > 0) return usageError(cmd, `unknown option ${[...flags].join(', ')}`);
    if (extra.length > 0) {
      const group = words[0] !== undefined ? GROUPS[words[0]] : undefined;
      if (group !== undefined && words[1] === extra[0]) {
        const subs = COMMANDS.filter((c) => c.path[0] === words[0] && c.hidden !== true).map(
          (c) => c.path[1],
        );
        return usageError(
          undefined,
          `${words[0]}: unknown subcommand ${JSON.stringify(extra[0])} (one of ${subs.join(', ')})`,
        );
      }
      return usageError(
        cmd,
        `unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((e) => JSON.stringify(e)).join(' ')}`,
      );
    }
    return usageError(cmd, `unknown argument ${given.join(', ')}`);
  }
  if ((m = /^Invalid values:\s*Argument: ([^,]+), Given: (.*), Choices: (.*)$/s.exec(msg)) !== null) {
    const name = (m[1] ?? '').trim();
    const isPositional = cmd?.positionals.some((p) => p.name === name) === true;
    const choices = (m[3] ?? '').replace(/"/g, '').trim();
    return usageError(
      cmd,
      `${isPositional ? `<${name}>` : `--${name}`} ${m[2] ?? ''} is not one of ${choices}`,
    );
  }
  if ((m = /^Missing required arguments?: (.*)$/.exec(msg)) !== null) {
    return usageError(
      cmd,
      `missing ${(m[1] ?? '')
        .split(', ')
        .map((o) => `--${o}`)
        .join(', ')}`,
    );
  }
  if ((m = /^Not enough arguments following: (.*)$/.exec(msg)) !== null) {
    return usageError(cmd, `--${m[1] ?? ''} needs a value`);
  }
  if (/^Too many non-option arguments/.test(msg)) return usageError(cmd, 'too many arguments');
  // Our own demandCommand messages ("give a command", "sim: give a subcommand (up, down)").
  return usageError(cmd, msg.trim() === '' ? 'bad command line' : msg.trim());
}
