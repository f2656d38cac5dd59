// The QEMU Machine Protocol as a pure codec: JSON objects one per line (QEMU ends them with
// CRLF), split from a byte stream with a bounded line length, parsed into typed messages
// (greeting, return, error, event), and commands encoded with an id. No I/O here.

export type QmpId = string;

export interface QmpVersion {
  major: number;
  minor: number;
  micro: number;
}

export type QmpMessage =
  | { kind: 'greeting'; version: QmpVersion; capabilities: string[] }
  | { kind: 'return'; id?: QmpId; value: unknown }
  | { kind: 'error'; id?: QmpId; errorClass: string; desc: string }
  | { kind: 'event'; event: string; data: Record<string, unknown>; seconds?: number };

/** A line that is not a QMP message (or too long): the peer is not speaking QMP, or is broken. */
export class QmpProtocolError extends Error {
  override readonly name = 'QmpProtocolError';
  constructor(
    readonly reason: string,
    readonly line?: string,
  ) {
    super(`QMP protocol error: ${reason}${line !== undefined ? `: ${line.slice(0, 120)}` : ''}`);
  }
}

/** QEMU's replies are small; a query of many block nodes is the largest we expect. */
export const QMP_MAX_LINE = 4 * 1024 * 1024;

/** Splits a byte stream into lines (LF, CR stripped); a line longer than maxLine is an error. */
export class QmpLineSplitter {
  private parts: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxLine = QMP_MAX_LINE) {}

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      const whole = this.parts.length > 0 ? Buffer.concat([...this.parts, piece]) : piece;
      this.parts = [];
      this.size = 0;
      if (whole.length > this.maxLine) throw new QmpProtocolError(`line of ${whole.length} bytes`);
      const text = whole.toString('utf8').replace(/\r$/, '');
      if (text.trim() !== '') lines.push(text);
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.size += rest.length;
      if (this.size > this.maxLine) throw new QmpProtocolError(`line of more than ${this.maxLine} bytes`);
      this.parts.push(Buffer.from(rest));
    }
    return lines;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function idOf(o: Record<string, unknown>): QmpId | undefined {
  const id = o['id'];
  return typeof id === 'string' ? id : undefined;
}

/** One line -> one typed message; anything else is a QmpProtocolError. */
export function parseQmpLine(line: string): QmpMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    throw new QmpProtocolError('not JSON', line);
  }
  if (!isRecord(raw)) throw new QmpProtocolError('not a JSON object', line);
  const greeting = raw['QMP'];
  if (isRecord(greeting)) {
    const v = isRecord(greeting['version']) ? greeting['version']['qemu'] : undefined;
    const caps = greeting['capabilities'];
    const num = (x: unknown): number => (typeof x === 'number' && Number.isInteger(x) ? x : -1);
    return {
      kind: 'greeting',
      version: isRecord(v)
        ? { major: num(v['major']), minor: num(v['minor']), micro: num(v['micro']) }
        : { major: -1, minor: -1, micro: -1 },
      capabilities: Array.isArray(caps) ? caps.filter((c): c is string => typeof c === 'string') : [],
    };
  }
  if ('return' in raw) return { kind: 'return', id: idOf(raw), value: raw['return'] };
  const err = raw['error'];
  if (isRecord(err)) {
    return {
      kind: 'error',
      id: idOf(raw),
      errorClass: typeof err['class'] === 'string' ? err['class'] : 'GenericError',
      desc: typeof err['desc'] === 'string' ? err['desc'] : '(no description)',
    };
  }
  const event = raw['event'];
  if (typeof event === 'string') {
    const ts = raw['timestamp'];
    const seconds = isRecord(ts) && typeof ts['seconds'] === 'number' ? ts['seconds'] : undefined;
    return { kind: 'event', event, data: isRecord(raw['data']) ? raw['data'] : {}, seconds };
  }
  throw new QmpProtocolError('neither greeting, return, error nor event', line);
}

/** `{"execute": ..., "arguments": ..., "id": ...}` and its line end. */
export function encodeQmpCommand(
  execute: string,
  args: Record<string, unknown> | undefined,
  id: QmpId,
): string {
  if (!/^[a-z][a-z0-9_-]{0,63}$/.test(execute)) throw new QmpProtocolError(`bad command name ${execute}`);
  const msg: Record<string, unknown> = { execute };
  if (args !== undefined) msg['arguments'] = args;
  msg['id'] = id;
  return `${JSON.stringify(msg)}\n`;
}
