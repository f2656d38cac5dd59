// The agent's and CLI's logging (winston). Three line formats: journald-friendly (`<N>` syslog
// priority prefix, no timestamp: journald stamps lines itself), human (time first) and JSON.
// Job context (domid, job id, phase, device) rides on child loggers, so every line about a job names it.
import { Writable } from 'node:stream';
import winston from 'winston';

import { isLogLevel, LOG_LEVELS, type LogFormat, type LogLevel } from './log-options.js';

export { isLogFormat, isLogLevel, LOG_LEVELS, type LogFormat, type LogLevel } from './log-options.js';
export type Logger = winston.Logger;

/** sd-daemon(3) priorities: what journald reads from a `<N>` prefix. */
const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, notice: 5, info: 6, debug: 7 };

/** The job-context keys, printed first and in this order in human and journal lines. */
export const CONTEXT_KEYS = ['domid', 'job', 'phase', 'device'] as const;
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
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const fmt = resolveFormat(opts.format ?? 'auto', opts.env);
  const line =
    fmt === 'journal'
      ? journalFormat
      : fmt === 'json'
        ? winston.format.combine(winston.format.timestamp(), jsonFormat)
        : winston.format.combine(winston.format.timestamp(), humanFormat);
  return winston.createLogger({
    levels: LOG_LEVELS,
    level: opts.level ?? 'info',
    format: winston.format.combine(winston.format.errors({ stack: false }), line),
    defaultMeta: opts.defaultMeta,
    transports: [new winston.transports.Stream({ stream: opts.stream ?? process.stdout })],
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
