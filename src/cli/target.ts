// xl's ways of naming the destination, checked before anything runs: the target `[user@]host`
// (xl hands it to the remote shell as is; the job's `target` is the host alone) and `-s <ssh
// command>` (xl runs "exec <ssh command> <target> xl migrate-receive" through sh -c, so every
// word must be plain). The same remote shell then runs every later step at the destination.
import { classifyTarget } from '../migration/job-schema.js';
import { CliError, ExitCode } from './exit-codes.js';

/** A word that means the same to sh and to us: no spaces, quotes, $, ;, |, &, globs, ... */
export const PLAIN_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/;
/** POSIX portable user names (with `.` as Debian's adduser allows). */
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/;

export interface Destination {
  /** As given: what xl and the remote shell get (`root@host-b`). */
  spec: string;
  /** The host alone: the job's request/target (tools get it as -host, rsync as host:path). */
  host: string;
  user?: string;
}

/** Parses `[user@]host`; the host is a host name, an IPv4 or a bare IPv6 address. */
export function parseDestination(spec: string): Destination {
  const at = spec.lastIndexOf('@');
  const user = at < 0 ? undefined : spec.slice(0, at);
  const host = at < 0 ? spec : spec.slice(at + 1);
  if (user !== undefined && !USER_RE.test(user)) {
    throw new CliError(
      `destination ${JSON.stringify(spec)}: ${JSON.stringify(user)} is not a user name ([A-Za-z0-9_.-], up to 32)`,
      ExitCode.USAGE,
    );
  }
  if (classifyTarget(host) === undefined) {
    throw new CliError(
      `destination ${JSON.stringify(spec)}: ${JSON.stringify(host)} is not a host name, an IPv4 or an IPv6 address (xl's form: [user@]host)`,
      ExitCode.USAGE,
    );
  }
  return user === undefined ? { spec, host } : { spec, host, user };
}

/**
 * A command given as one string (`-s "ssh -p 2222"`, `--migrate-command "xl migrate -p"`): words
 * separated by blanks, each plain. We run it without a shell, but xl gives its -s to sh -c.
 */
export function parseCommand(text: string, what: string): string[] {
  const words = text.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) throw new CliError(`${what} is empty`, ExitCode.USAGE);
  for (const w of words) {
    if (!PLAIN_WORD.test(w.split('{host}').join('h'))) {
      throw new CliError(
        `${what}: ${JSON.stringify(w)} has characters that are not allowed (only [A-Za-z0-9_@%+=:,./-]; no shell syntax)`,
        ExitCode.USAGE,
      );
    }
  }
  return words;
}

/** xl's -s: empty would make xl run the target itself as the command, which we cannot check. */
export function parseSshCommand(text: string): string[] {
  if (text.trim() === '') {
    throw new CliError(
      '-s "": xl would run the destination itself as the transport command; give the remote shell (e.g. -s "ssh -p 2222")',
      ExitCode.USAGE,
    );
  }
  return parseCommand(text, '-s (ssh command)');
}

/** {host} in a command word becomes the destination as given ([user@]host). */
export function expand(words: readonly string[], destination: string): string[] {
  return words.map((w) => w.split('{host}').join(destination));
}
