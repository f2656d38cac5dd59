// Binds the migration engine (src/migration/engine.ts) to the daemon's JobEngine port: builds the
// domain control (libxenctrl/libxenguest, or the simulated ones named by DEVMIGRATE_LIBXEN*) on
// the resilient connection, gives the engine a logger that keeps the job context it passes (and
// adds the domain's name), and turns each job's end into one summary line and the metrics.
import type { DevMigrateConfig } from '../config/schema.js';
import type { Logger as EngineLogger } from '../devices/types.js';
import { createDomainControl } from '../domains/domain-control.js';
import { describeChoice } from '../../native-bindings/library-selection.js';
import { MigrationEngine } from '../migration/engine.js';
import type { JobEndReport } from '../migration/timeline-recorder.js';
import type { XenStore } from '../xenstore/types.js';
import type { DrainResult, JobEngine } from './engine-port.js';
import type { Logger } from './logger.js';
import type { LogLevel } from './log-options.js';

/** Domain names of recent jobs, by domid (bounded: a long-running agent sees many domains). */
export class DomainNames {
  private readonly names = new Map<number, string>();
  constructor(private readonly max = 1024) {}
  set(domid: number, name: string): void {
    this.names.delete(domid);
    this.names.set(domid, name);
    if (this.names.size > this.max) {
      const oldest = this.names.keys().next().value;
      if (oldest !== undefined) this.names.delete(oldest);
    }
  }
  get(domid: unknown): string | undefined {
    return typeof domid === 'number' ? this.names.get(domid) : undefined;
  }
}

/**
 * The engine passes the job context ({ domid, job, phase, device }) as metadata: keep it as
 * fields, and add the domain's name (`domain`) where the job's domid is known.
 */
export function engineLogger(log: Logger, names?: DomainNames): EngineLogger {
  const at =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, meta?: Record<string, unknown>): void => {
      const m = meta ?? {};
      const name = names?.get(m['domid']);
      log.log(level, message, name !== undefined && m['domain'] === undefined ? { ...m, domain: name } : m);
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

function sec(ms: number | undefined): string {
  return ms === undefined ? '?' : `${(ms / 1000).toFixed(2)} s`;
}

/** The one line a job leaves in the log at its end: domain, outcome, total time, downtime. */
export function summaryLine(r: JobEndReport): {
  level: LogLevel;
  text: string;
  fields: Record<string, unknown>;
} {
  const f = r.figures;
  const t = r.timeline;
  const downtime = t.suspended !== undefined ? (f.downtimeMs ?? f.devicesDowntimeMs) : 0;
  // An abort before the pre-suspend changed nothing (a `check`): information, not a warning.
  const changed = t.phases['pre-suspend'] !== undefined || t.suspended !== undefined;
  const level: LogLevel =
    r.outcome === 'failed'
      ? 'error'
      : r.outcome === 'refused' || (r.outcome === 'aborted' && changed)
        ? 'warn'
        : r.outcome === 'done'
          ? 'notice'
          : 'info';
  const parts = [`total ${sec(f.totalMs)}`];
  if (t.suspended !== undefined)
    parts.push(`downtime ${sec(downtime)}${r.outcome === 'done' ? ' until the devices were synced' : ''}`);
  if (f.bytes > 0) parts.push(`copied ${(f.bytes / 1048576).toFixed(1)} MiB`);
  if (f.failedOps.length > 0) parts.push(`not completed: ${f.failedOps.join(', ')}`);
  const fields: Record<string, unknown> = {
    domid: r.domid,
    job: r.jobId,
    outcome: r.outcome,
    total_ms: f.totalMs,
    downtime_ms: downtime,
    copied_bytes: f.bytes,
  };
  if (r.name !== undefined) fields['domain'] = r.name;
  return { level, text: `job ${r.name ?? `domain ${r.domid}`} ${r.outcome}: ${parts.join(', ')}`, fields };
}

export interface EngineHooks {
  /** Each job's end, after its summary line (metrics). */
  onJobEnd?(r: JobEndReport): void;
}

export async function createEngine(
  xs: XenStore,
  config: DevMigrateConfig,
  logger: Logger,
  hooks: EngineHooks = {},
): Promise<JobEngine> {
  const names = new DomainNames();
  const domains = createDomainControl({
    xenstore: xs,
    ackTimeoutMs: config.timeouts.suspendAckMs,
    suspendTimeoutMs: config.timeouts.suspendMs,
    // Domain-control lines carry the domain as a field (domid) besides naming it in the text.
    log: (level, msg, meta) => {
      const name = names.get(meta?.['domid']);
      logger.log(level, msg, {
        component: 'domains',
        ...meta,
        ...(name !== undefined ? { domain: name } : {}),
      });
    },
  });
  const engine = new MigrationEngine({
    xs,
    domains,
    config,
    log: engineLogger(logger, names),
    onJobStart: (info) => {
      if (info.name !== undefined) names.set(info.domid, info.name);
    },
    onJobEnd: (r) => {
      const s = summaryLine(r);
      logger.log(s.level, s.text, s.fields);
      hooks.onJobEnd?.(r);
    },
  });
  // Which Xen and which library files: the first thing to know when a hypercall misbehaves.
  if (domains.libraries !== undefined) {
    // Its own component: 'domains' lines are about one domain and carry its domid.
    logger.info(`xen libraries: ${describeChoice(domains.libraries)}`, {
      component: 'xen',
      xen: domains.libraries.release?.version ?? 'unknown',
    });
  }
  return {
    start: () => engine.start(),
    stopAccepting: () => engine.stopAccepting(),
    async drain(timeoutMs: number): Promise<DrainResult> {
      const r = await engine.drain(timeoutMs);
      await domains.close().catch(() => undefined);
      return {
        finished: r.completed + r.aborted,
        left: r.left,
        completed: r.completed,
        aborted: r.aborted,
        kept: r.kept,
      };
    },
    applyConfig: (next: DevMigrateConfig): void => engine.applyConfig(next),
    activeJobs: () => engine.activeJobs,
  };
}
