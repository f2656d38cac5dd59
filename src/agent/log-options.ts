// Log format and level names and their checks, without winston: the CLI parses --log-format and
// --log-level with these and loads the logger itself only for the commands that log.

export type LogFormat = 'auto' | 'journal' | 'human' | 'json';
export type LogLevel = 'error' | 'warn' | 'notice' | 'info' | 'debug';

export const LOG_LEVELS: Record<LogLevel, number> = { error: 0, warn: 1, notice: 2, info: 3, debug: 4 };

export function isLogLevel(v: string): v is LogLevel {
  return Object.hasOwn(LOG_LEVELS, v);
}

export function isLogFormat(v: string): v is LogFormat {
  return v === 'auto' || v === 'journal' || v === 'human' || v === 'json';
}
