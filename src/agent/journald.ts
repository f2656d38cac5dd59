// Logging to journald with native fields (DOMID, JOB, PHASE, DEVICE, ...), as sd_journal_send
// does: one datagram per entry on journald's native socket, in its native protocol ("KEY=value\n",
// or for a value with a newline "KEY\n" + 64-bit little-endian length + value + "\n"). Used when
// systemd connected our stdout to the journal (JOURNAL_STREAM names stdout's device:inode). If a
// datagram cannot be sent (too large, journald away) the entry goes to stdout as a <N> line.
import { fstatSync } from 'node:fs';
import { Writable } from 'node:stream';
import { UnixDatagramSocket } from './unix-datagram.js';

export const JOURNAL_SOCKET = '/run/systemd/journal/socket';

/** journald field names: A-Z, 0-9 and _, not starting with _ or a digit, at most 64. */
export function fieldName(key: string): string | undefined {
  const n = key.toUpperCase().replace(/[^A-Z0-9_]/g, '_');
  return /^[A-Z][A-Z0-9_]{0,63}$/.test(n) ? n : undefined;
}

/** One entry in the native protocol. */
export function encodeEntry(fields: readonly (readonly [string, string])[]): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of fields) {
    if (!v.includes('\n')) {
      parts.push(Buffer.from(`${k}=${v}\n`));
      continue;
    }
    const value = Buffer.from(v);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(value.length));
    parts.push(Buffer.from(`${k}\n`), len, value, Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** Decodes entries (what journald does): for tests and the fake journald of the test suite. */
export function decodeEntry(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    const nl = data.indexOf(0x0a, i);
    if (nl < 0) break;
    const line = data.subarray(i, nl).toString();
    const eq = line.indexOf('=');
    if (eq >= 0) {
      out.set(line.slice(0, eq), line.slice(eq + 1));
      i = nl + 1;
      continue;
    }
    const len = Number(data.readBigUInt64LE(nl + 1));
    out.set(line, data.subarray(nl + 9, nl + 9 + len).toString());
    i = nl + 9 + len + 1;
  }
  return out;
}

/**
 * True when systemd connected stdout to the journal: JOURNAL_STREAM is "<device>:<inode>" of the
 * stream it gave us (a redirected stdout keeps the variable but not the inode).
 */
export function stdoutIsJournal(
  env: NodeJS.ProcessEnv,
  stat: () => { dev: number; ino: number } = () => fstatSync(1),
): boolean {
  const js = env['JOURNAL_STREAM'];
  const m = js === undefined ? null : /^([0-9]+):([0-9]+)$/.exec(js);
  if (m === null) return false;
  try {
    const st = stat();
    return String(st.dev) === m[1] && String(st.ino) === m[2];
  } catch {
    return false;
  }
}

/** What the logger hands over per entry (one JSON line through winston's stream transport). */
export interface JournalEntry {
  priority: number;
  message: string;
  fields: [string, string][];
}

export interface JournalStreamOptions {
  /** journald's socket; tests give a fake one. */
  socketPath?: string;
  identifier?: string;
  /** Where an entry goes when its datagram cannot be sent, as a <N> line. */
  fallback: Writable;
}

/** Takes JournalEntry lines and sends each to journald as one datagram. */
export class JournalStream extends Writable {
  private socket: UnixDatagramSocket | undefined;
  private readonly path: string;

  constructor(private readonly opts: JournalStreamOptions) {
    super();
    this.path = opts.socketPath ?? JOURNAL_SOCKET;
  }

  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    for (const line of chunk.toString().split('\n')) {
      if (line === '') continue;
      let e: JournalEntry;
      try {
        e = JSON.parse(line) as JournalEntry;
      } catch {
        this.opts.fallback.write(`${line}\n`);
        continue;
      }
      this.send(e);
    }
    cb();
  }

  private send(e: JournalEntry): void {
    const fields: [string, string][] = [
      ['MESSAGE', e.message],
      ['PRIORITY', String(e.priority)],
      ['SYSLOG_IDENTIFIER', this.opts.identifier ?? 'devmigrate'],
      ...e.fields,
    ];
    try {
      this.socket ??= new UnixDatagramSocket();
      this.socket.send(this.path, encodeEntry(fields));
    } catch {
      // Never lose a line: the journal still reads our stdout.
      this.opts.fallback.write(
        `${e.message
          .split('\n')
          .map((l) => `<${e.priority}>${l}`)
          .join('\n')}\n`,
      );
    }
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.socket?.close();
    this.socket = undefined;
    cb();
  }
}
