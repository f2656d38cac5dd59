// Binds the migration engine (src/migration/engine.ts) to the daemon's JobEngine port: builds the
// domain control (libxenctrl/libxenguest, or the simulated ones named by DEVMIGRATE_LIBXEN*) on
// the resilient connection, and gives the engine a logger that keeps the job context it passes.
import type { DevMigrateConfig } from '../config/schema.js';
import type { Logger as EngineLogger } from '../devices/types.js';
import { createDomainControl } from '../domains/domain-control.js';
import { describeChoice } from '../../native-bindings/library-selection.js';
import { MigrationEngine } from '../migration/engine.js';
import type { XenStore } from '../xenstore/types.js';
import type { DrainResult, JobEngine } from './engine-port.js';
import type { Logger } from './logger.js';

/** The engine passes the job context ({ domid, job, phase, device }) as metadata: keep it as fields. */
export function engineLogger(log: Logger): EngineLogger {
  const at =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, meta?: Record<string, unknown>): void => {
      log.log(level, message, meta ?? {});
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

export async function createEngine(
  xs: XenStore,
  config: DevMigrateConfig,
  logger: Logger,
): Promise<JobEngine> {
  const domains = createDomainControl({
    xenstore: xs,
    ackTimeoutMs: config.timeouts.suspendAckMs,
    suspendTimeoutMs: config.timeouts.suspendMs,
    // Domain-control lines carry the domain as a field (domid) besides naming it in the text.
    log: (level, msg, meta) => logger.log(level, msg, { component: 'domains', ...meta }),
  });
  // Which Xen and which library files: the first thing to know when a hypercall misbehaves.
  if (domains.libraries !== undefined) {
    // Its own component: 'domains' lines are about one domain and carry its domid.
    logger.info(`xen libraries: ${describeChoice(domains.libraries)}`, {
      component: 'xen',
      xen: domains.libraries.release?.version ?? 'unknown',
    });
  }
  const engine = new MigrationEngine({ xs, domains, config, log: engineLogger(logger) });
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
