// The agent's and CLI's logging (winston). Under systemd, entries go to journald natively with
// their fields (DOMID, DOMAIN, JOB, PHASE, DEVICE, ...) when stdout is the journal; otherwise three
// line formats: journald-friendly (`<N>` syslog priority prefix, no timestamp: journald stamps
// lines itself), human (time first) and JSON. Job context (domid, domain name, job id, phase,
// device) rides on child loggers, so every line about a job names it.
import { Writable } from 'node:stream';
import winston from 'winston';

import { isLogLevel, LOG_LEVELS, type LogFormat, type LogLevel } from './log-options.js';
import { fieldName, JournalStream, stdoutIsJournal, type JournalEntry } from './journald.js';

export { isLogFormat, isLogLevel, LOG_LEVELS, type LogFormat, type LogLevel } from './log-options.js';
export type Logger = winston.Logger;

/** sd-daemon(3) priorities: what journald reads from a `<N>` prefix. */
const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, notice: 5, info: 6, debug: 7 };

/** The job-context keys, printed first and in this order in human and journal lines. */
export const CONTEXT_KEYS = ['domid', 'domain', 'job', 'phase', 'device'] as const;
export type JobContext = Partial<Record<(typeof CONTEXT_KEYS)[number], string | number>>;

/** systemd sets INVOCATION_ID for every service, JOURNAL_STREAM when stdout goes to the journal. */
export function runningUnderSystemd(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env['JOURNAL_STREAM'] || env['INVOCATION_ID']);
}

export function resolveFormat(
  format: LogFormat,
  env: NodeJS.ProcessEnv = process.env,
): Exclude<LogFormat, 'auto'> {
  if (format !== 'auto') return format;
  return runningUnderSystemd(env) ? 'journal' : 'human';
}

const LEVEL_KEY = Symbol.for('level');
const SPLAT_KEY = Symbol.for('splat');
const RESERVED = new Set(['level', 'message', 'timestamp', 'stack']);

function fmtValue(v: unknown): string {
  if (v instanceof Error) return JSON.stringify(v.message);
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  // Quote only when needed, so `domid=5 device=vbd/51712` stays easy to grep.
  return s !== undefined && /^[A-Za-z0-9_./:@+-]+$/.test(s) ? s : JSON.stringify(s ?? String(v));
}

/** `key=value` pairs: context keys first in fixed order, then the rest as given. */
export function formatFields(info: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const k of CONTEXT_KEYS) if (info[k] !== undefined) parts.push(`${k}=${fmtValue(info[k])}`);
  for (const [k, v] of Object.entries(info)) {
    if (RESERVED.has(k) || (CONTEXT_KEYS as readonly string[]).includes(k) || v === undefined) continue;
    parts.push(`${k}=${fmtValue(v)}`);
  }
  return parts.join(' ');
}

function levelOf(info: winston.Logform.TransformableInfo): LogLevel {
  const raw = (info as unknown as Record<symbol, unknown>)[LEVEL_KEY];
  const l = typeof raw === 'string' ? raw : info.level;
  return isLogLevel(l) ? l : 'info';
}

function plainInfo(info: winston.Logform.TransformableInfo): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(info)) out[k] = v;
  delete (out as Record<symbol, unknown>)[SPLAT_KEY];
  return out;
}

function messageText(info: winston.Logform.TransformableInfo): string {
  const m = info.message;
  return typeof m === 'string' ? m : JSON.stringify(m);
}

/** One journald line per physical line: a multi-line message keeps its priority on every line. */
const journalFormat = winston.format.printf((info) => {
  const prio = SYSLOG_PRIORITY[levelOf(info)];
  const fields = formatFields(plainInfo(info));
  const text = fields ? `${messageText(info)} ${fields}` : messageText(info);
  return text
    .split('\n')
    .map((l) => `<${prio}>${l}`)
    .join('\n');
});

const humanFormat = winston.format.printf((info) => {
  const ts = typeof info['timestamp'] === 'string' ? info['timestamp'] : new Date().toISOString();
  const fields = formatFields(plainInfo(info));
  return `${ts} ${levelOf(info).padEnd(6)} ${messageText(info)}${fields ? ` ${fields}` : ''}`;
});

const jsonFormat = winston.format.printf((info) => {
  const out: Record<string, unknown> = {
    time: info['timestamp'],
    level: levelOf(info),
    msg: messageText(info),
  };
  for (const [k, v] of Object.entries(plainInfo(info))) {
    if (k === 'level' || k === 'message' || k === 'timestamp') continue;
    out[k] = v instanceof Error ? v.message : v;
  }
  return JSON.stringify(out);
});

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go; default process.stdout (journald reads a service's stdout). */
  stream?: Writable;
  env?: NodeJS.ProcessEnv;
  /** Fields on every line (e.g. component). */
  defaultMeta?: Record<string, unknown>;
  /**
   * --log-format auto under systemd with stdout on the journal: entries go to journald's native
   * socket with fields. Default: whether stdout is the journal (JOURNAL_STREAM); tests force it.
   */
  native?: boolean;
  /** journald's socket (tests: a fake one); default $DEVMIGRATE_JOURNAL_SOCKET, else the real one. */
  journalSocket?: string;
}

/** A native journal entry as one JSON line for JournalStream (priority, text with its pairs, fields). */
const nativeFormat = winston.format.printf((info) => {
  const plain = plainInfo(info);
  const fields = formatFields(plain);
  const text = messageText(info);
  const entry: JournalEntry = {
    priority: SYSLOG_PRIORITY[levelOf(info)],
    // The text keeps its key=value pairs: `journalctl -u ... -g domid=5` still finds them.
    message: fields ? `${text} ${fields}` : text,
    fields: journalFields(plain),
  };
  return JSON.stringify(entry);
});

/** The fields of a native journal entry: the job context, then every other field, as journald names. */
export function journalFields(info: Record<string, unknown>): [string, string][] {
  const out: [string, string][] = [];
  const seen = new Set<string>();
  const push = (k: string, v: unknown): void => {
    const name = fieldName(k);
    if (name === undefined || seen.has(name) || v === undefined) return;
    seen.add(name);
    out.push([name, v instanceof Error ? v.message : typeof v === 'string' ? v : JSON.stringify(v)]);
  };
  for (const k of CONTEXT_KEYS) push(k, info[k]);
  for (const [k, v] of Object.entries(info)) if (!RESERVED.has(k)) push(k, v);
  return out;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const env = opts.env ?? process.env;
  const fmt = resolveFormat(opts.format ?? 'auto', env);
  const native =
    opts.native ?? ((opts.format ?? 'auto') === 'auto' && opts.stream === undefined && stdoutIsJournal(env));
  const line =
    fmt === 'journal'
      ? journalFormat
      : fmt === 'json'
        ? winston.format.combine(winston.format.timestamp(), jsonFormat)
        : winston.format.combine(winston.format.timestamp(), humanFormat);
  const stream = opts.stream ?? process.stdout;
  const target = native
    ? new JournalStream({
        socketPath: opts.journalSocket ?? env['DEVMIGRATE_JOURNAL_SOCKET'],
        fallback: stream,
      })
    : stream;
  return winston.createLogger({
    levels: LOG_LEVELS,
    level: opts.level ?? 'info',
    format: winston.format.combine(winston.format.errors({ stack: false }), native ? nativeFormat : line),
    defaultMeta: opts.defaultMeta,
    transports: [new winston.transports.Stream({ stream: target })],
  });
}

/** A logger whose lines carry the job's context; pass only the keys you know. */
export function jobLogger(parent: Logger, ctx: JobContext): Logger {
  const meta: Record<string, string | number> = {};
  for (const k of CONTEXT_KEYS) {
    const v = ctx[k];
    if (v !== undefined) meta[k] = v;
  }
  return parent.child(meta);
}

/** Changes the level at run time (SIGHUP reload). Children follow their parent's level. */
export function setLevel(logger: Logger, level: LogLevel): void {
  logger.level = level;
  for (const t of logger.transports) t.level = undefined;
}

/** A logger that drops everything (tests, quiet CLI paths). */
export function silentLogger(): Logger {
  return winston.createLogger({
    levels: LOG_LEVELS,
    silent: true,
    transports: [new winston.transports.Console()],
  });
}

/** A stream that keeps written lines in memory (tests and the demo's capture). */
export class LineCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    for (const l of chunk.toString().split('\n')) if (l !== '') this.lines.push(l);
    cb();
  }
}
