// Runs the daemon as a process: builds the logger, readiness notifier, connection factory and
// engine, installs the signal handlers (SIGTERM/SIGINT drain, SIGHUP reload) and resolves with
// the exit code. The CLI's `agent` command is a thin call of runAgent().
import { readFileSync } from 'node:fs';
import { loadConfig } from '../config/load.js';
import { ConfigError, type DevMigrateConfig } from '../config/schema.js';
import { ExitCode, type ExitCodeValue } from '../cli/exit-codes.js';
import { UnsupportedXenError } from '../../native-bindings/library-selection.js';
import type { XenStore } from '../xenstore/types.js';
import { AgentDaemon, errText } from './daemon.js';
import { createEngine } from './engine-adapter.js';
import { connectAnyTransport } from './connect.js';
import { createLogger, type LogFormat, type LogLevel, type Logger } from './logger.js';
import { createNotifier } from './sd-notify.js';

export interface RunAgentOptions {
  configPath?: string;
  logFormat?: LogFormat;
  /** Overrides the config's logLevel (command line wins). */
  logLevel?: LogLevel;
  drainTimeoutMs?: number;
  /** For tests: a logger to use instead of stdout. */
  logger?: Logger;
}

/** package.json's version, read once (the agent announces it). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    if (typeof pkg.version === 'string') return pkg.version;
  } catch {
    // Running from the source tree (tsx/vitest): one level less.
  }
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    if (typeof pkg.version === 'string') return pkg.version;
  } catch {
    // fall through
  }
  return 'unknown';
}

export async function runAgent(opts: RunAgentOptions = {}): Promise<ExitCodeValue> {
  const logger =
    opts.logger ?? createLogger({ format: opts.logFormat ?? 'auto', level: opts.logLevel ?? 'info' });
  const notifier = createNotifier({ onError: (e) => logger.warn('sd_notify failed', { error: e.message }) });
  const load = async (path?: string): Promise<DevMigrateConfig> => {
    const cfg = await loadConfig(path);
    // The command line's --log-level wins over the file, also after a reload.
    return opts.logLevel && opts.logLevel !== 'notice' ? { ...cfg, logLevel: opts.logLevel } : cfg;
  };
  const daemon = new AgentDaemon({
    version: packageVersion(),
    logger,
    notifier,
    configPath: opts.configPath,
    loadConfig: load,
    connect: (cfg): Promise<XenStore> => connectAnyTransport(cfg, logger),
    createEngine,
    drainTimeoutMs: opts.drainTimeoutMs,
  });

  let exitCode: ExitCodeValue = ExitCode.OK;
  let stopRequested: ((sig: string) => void) | undefined;
  const stopped = new Promise<string>((resolve) => (stopRequested = resolve));
  const onTerm = (sig: NodeJS.Signals): void => {
    logger.notice('signal received', { signal: sig });
    stopRequested?.(sig);
  };
  const onHup = (): void => void daemon.reload();
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);
  process.on('SIGHUP', onHup);
  try {
    try {
      await Promise.race([daemon.start(), stopped.then(() => undefined)]);
    } catch (err) {
      if (err instanceof ConfigError) {
        logger.error('configuration refused, not starting', {
          key: err.keyPath || '(root)',
          reason: err.reason,
          config: opts.configPath ?? 'default',
        });
        return ExitCode.CONFIG;
      }
      if (err instanceof UnsupportedXenError) {
        // Restarting cannot help either: exit as for a bad config (the unit does not restart on 78).
        logger.error(`not starting: ${err.message}`, {
          found: err.found,
          supported: err.supported.join(' '),
        });
        exitCode = ExitCode.CONFIG;
      } else {
        logger.error('agent failed to start', { error: errText(err) });
        exitCode = ExitCode.FAILURE;
      }
    }
    if (exitCode === ExitCode.OK) {
      const sig = await stopped;
      await daemon.stop(sig);
    } else {
      await daemon.stop('start failure');
    }
    return exitCode;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onTerm);
    process.off('SIGHUP', onHup);
    // Let winston flush the last lines before the process exits.
    await new Promise<void>((r) => setImmediate(r));
  }
}
