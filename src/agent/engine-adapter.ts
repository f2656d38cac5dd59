// Binds the migration engine (src/migration/engine.ts) to the daemon's JobEngine port: builds the
// domain control (libxenctrl/libxenguest, or the simulated ones named by DEVMIGRATE_LIBXEN*) on
// the resilient connection, and gives the engine a logger whose lines carry the job's context.
import type { DevMigrateConfig } from '../config/schema.js';
import type { Logger as EngineLogger } from '../devices/types.js';
import { createDomainControl } from '../domains/domain-control.js';
import { MigrationEngine } from '../migration/engine.js';
import type { XenStore } from '../xenstore/types.js';
import type { DrainResult, JobEngine } from './engine-port.js';
import type { Logger } from './logger.js';

/**
 * The engine says which job a line is about in its text ("job 5 (id): ..."); lift that into
 * fields so journald/JSON consumers can filter on domid and job.
 */
export function jobFields(message: string): Record<string, string | number> {
  const m = /^job ([0-9]+)(?: \(([^)\s]+)\))?:/.exec(message) ?? /^domain ([0-9]+):/.exec(message);
  if (!m) return {};
  const out: Record<string, string | number> = { domid: Number(m[1]) };
  if (m[2] !== undefined) out['job'] = m[2];
  const dev = /\b((?:vbd|vbd3|qdisk|vif|vtpm|pci|vusb|qusb|console|vkbd|vfb|9pfs|vscsi)\/[0-9]+)\b/.exec(
    message,
  );
  if (dev?.[1] !== undefined) out['device'] = dev[1];
  const phase = /\b(testing|pre-suspend|suspending|post-suspend|syncing|recovering)\b/.exec(message);
  if (phase?.[1] !== undefined) out['phase'] = phase[1];
  return out;
}

export function engineLogger(log: Logger): EngineLogger {
  const at =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, meta?: Record<string, unknown>): void => {
      log.log(level, message, { ...jobFields(message), ...meta });
    };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

export async function createEngine(
  xs: XenStore,
  config: DevMigrateConfig,
  logger: Logger,
): Promise<JobEngine> {
  // One config object shared with the engine: a reload updates it in place (see applyConfig).
  const live: DevMigrateConfig = structuredClone(config);
  const domains = createDomainControl({
    xenstore: xs,
    ackTimeoutMs: live.timeouts.suspendAckMs,
    suspendTimeoutMs: live.timeouts.suspendMs,
    log: (level, msg) => logger.log(level, msg, jobFields(msg)),
  });
  const engine = new MigrationEngine({ xs, domains, config: live, log: engineLogger(logger) });
  return {
    start: () => engine.start(),
    async drain(timeoutMs: number): Promise<DrainResult> {
      const before = engine.activeJobs;
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        engine.stop().then(() => 'done' as const),
        new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs))),
      ]);
      if (timer) clearTimeout(timer);
      const left = outcome === 'done' ? 0 : engine.activeJobs;
      await domains.close().catch(() => undefined);
      return { finished: before - left, left };
    },
    applyConfig(next: DevMigrateConfig): void {
      // Timeouts, tools, disk policy and log level apply to work started after the reload;
      // limits (semaphores) keep their size until the agent restarts.
      Object.assign(live, structuredClone(next));
    },
    activeJobs: () => engine.activeJobs,
  };
}
