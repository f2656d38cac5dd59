// Structured job context for the engine's log lines: a Logger that adds { domid, job, phase,
// device } as metadata to every line, so consumers (journald, --log-format json) filter on fields
// instead of parsing message text. The context is read at each call: phase follows the job.
import type { Logger } from '../devices/types.js';

export interface LogContext {
  domid?: number;
  /** The requester's job id. */
  job?: string;
  /** The job's state when the line was written (testing, pre-suspend, ...). */
  phase?: string;
  /** `type/devid`, on lines about one device. */
  device?: string;
}

/** A logger whose lines carry ctx() as metadata; fields given at the call site win. */
export function withLogContext(log: Logger, ctx: () => LogContext): Logger {
  const at =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, meta?: Record<string, unknown>): void => {
      const fields: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(ctx())) if (v !== undefined) fields[k] = v;
      log[level](message, meta === undefined ? fields : { ...fields, ...meta });
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/**
 * The domid a job key names: only the canonical decimal form ("5", never "05" or "005"), so that
 * a stray key can never alias a real domain's job (its answer, its removal, its log lines).
 */
export function domidOfKey(key: string): number | undefined {
  return /^[1-9][0-9]{0,4}$/.test(key) ? Number(key) : undefined;
}
