// The agent daemon (`devmigrate agent`): owns the XenStore connection (through
// ResilientXenStore), announces itself under /tool/devmigrate/agent, watches the jobs and hands
// every event to the engine; handles SIGTERM (drain), SIGHUP (reload) and readiness for systemd.
import { ConfigError, type DevMigrateConfig } from '../config/schema.js';
import { JOBS, ROOT } from '../migration/paths.js';
import type { Perm, XenStore } from '../xenstore/types.js';
import type { BackoffOptions } from './backoff.js';
import type { JobEngine } from './engine-port.js';
import { setLevel, type Logger } from './logger.js';
import { ResilientXenStore } from './resilient-xenstore.js';
import type { Notifier } from './sd-notify.js';
import { pidAlive } from './pid-alive.js';

export const AGENT_PATH = `${ROOT}/agent`;
/** Owned by dom0, no access for any other domain: guests must neither read nor forge it. */
export const DOM0_ONLY: readonly Perm[] = [{ domid: 0, access: 'n' }];

export type AgentState = 'starting' | 'ready' | 'draining' | 'stopped';

export interface AgentDeps {
  version: string;
  logger: Logger;
  notifier: Notifier;
  configPath?: string;
  loadConfig: (path?: string) => Promise<DevMigrateConfig>;
  /** Opens one raw connection (socket, else libxenstore); called again after every loss. */
  connect: (config: DevMigrateConfig) => Promise<XenStore>;
  /** Builds the engine once, on the resilient connection that survives xenstored restarts. */
  createEngine: (xs: XenStore, config: DevMigrateConfig, logger: Logger) => Promise<JobEngine>;
  /**
   * Bound on SIGTERM's drain, ms. Default 30000. Jobs past the suspension may finish until the
   * last min(10 s, bound/3), kept for aborting and recovering the rest; the unit's
   * TimeoutStopSec (45 s) leaves room above it. A suspend handshake in flight is cancelled, not
   * waited for (its own waits are 60 s each), so it fits in the bound.
   */
  drainTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** How long XenStore calls wait for a reconnection, ms (ResilientXenStore.waitMs). */
  reconnectWaitMs?: number;
}

export class AgentDaemon {
  private config: DevMigrateConfig | undefined;
  private xs: ResilientXenStore | undefined;
  private engine: JobEngine | undefined;
  private state: AgentState = 'starting';
  private stopping: Promise<void> | undefined;
  private reloading: Promise<boolean> = Promise.resolve(true);
  private watchdogTimer: NodeJS.Timeout | undefined;
  /** True once our pid is in the presence node: only then may stop() write state=stopped. */
  private announced = false;
  private readonly log: Logger;

  constructor(private readonly deps: AgentDeps) {
    this.log = deps.logger;
  }

  get currentState(): AgentState {
    return this.state;
  }

  get currentConfig(): DevMigrateConfig | undefined {
    return this.config;
  }

  /** The resilient connection (tests and the bench look at it). */
  get xenstore(): ResilientXenStore | undefined {
    return this.xs;
  }

  /**
   * Loads the config (a ConfigError propagates: the caller exits with EX_CONFIG), connects,
   * announces, recovers jobs left mid-flight, starts watching, and tells systemd READY=1.
   */
  async start(): Promise<void> {
    const t0 = performance.now();
    const config = await this.deps.loadConfig(this.deps.configPath);
    this.config = config;
    setLevel(this.log, config.logLevel);
    this.deps.notifier.status('connecting to xenstored');
    const xs = new ResilientXenStore({
      connect: () => this.deps.connect(this.config ?? config),
      logger: this.log,
      backoff: this.deps.backoff,
      waitMs: this.deps.reconnectWaitMs,
    });
    this.xs = xs;
    await xs.start();
    xs.onDisconnect(() => this.deps.notifier.status('xenstored connection lost, reconnecting'));
    xs.onReconnect(() => void this.afterReconnect());
    await this.announce('starting');
    this.announced = true;
    this.engine = await this.deps.createEngine(xs, config, this.log);
    // The engine's watch on the jobs fires once at once: that first pass recovers every job an
    // earlier agent left mid-flight (recovery table) before new ones are taken.
    await this.engine.start();
    this.state = 'ready';
    await this.announce('ready');
    const readyMs = Math.round(performance.now() - t0);
    this.log.info('agent ready', {
      pid: process.pid,
      version: this.deps.version,
      ready_ms: readyMs,
      process_uptime_ms: Math.round(process.uptime() * 1000),
    });
    this.deps.notifier.ready(`watching ${JOBS}`);
    this.startWatchdog();
  }

  /**
   * Writes pid, version, started and state in one transaction, dom0-only. At start, a live agent
   * already announced (another pid, not stopped) is a conflict: two engines must never share jobs.
   */
  private async announce(state: AgentState): Promise<void> {
    const xs = this.xs;
    if (!xs) return;
    await xs.transaction(async (tx) => {
      if (state === 'starting') {
        const [pid, other] = await Promise.all([
          tx.tryRead(`${AGENT_PATH}/pid`),
          tx.tryRead(`${AGENT_PATH}/state`),
        ]);
        if (
          pid !== undefined &&
          /^[0-9]+$/.test(pid) &&
          Number(pid) !== process.pid &&
          other !== 'stopped' &&
          pidAlive(Number(pid))
        ) {
          throw new AgentConflictError(Number(pid), other ?? '?');
        }
      }
      for (const dir of [ROOT, AGENT_PATH]) {
        if (!(await tx.exists(dir))) await tx.mkdir(dir);
        await tx.setPerms(dir, DOM0_ONLY);
      }
      // Jobs inherit the root's dom0-only permissions when the agent creates the folder.
      if (!(await tx.exists(JOBS))) await tx.mkdir(JOBS);
      await tx.write(`${AGENT_PATH}/pid`, String(process.pid));
      await tx.write(`${AGENT_PATH}/version`, this.deps.version);
      await tx.write(`${AGENT_PATH}/started`, new Date(Date.now() - process.uptime() * 1000).toISOString());
      await tx.write(`${AGENT_PATH}/state`, state);
    });
  }

  private async setStateNode(state: AgentState): Promise<void> {
    try {
      await this.xs?.write(`${AGENT_PATH}/state`, state);
    } catch (err) {
      this.log.warn('could not record the agent state', { state, error: errText(err) });
    }
  }

  /**
   * After xenstored came back: its store may be new (a restart loses it), so announce again. The
   * engine's watches were re-registered by ResilientXenStore; their initial events reconcile.
   */
  private async afterReconnect(): Promise<void> {
    if (this.state === 'stopped') return;
    try {
      await this.announce(this.state === 'draining' ? 'draining' : this.state);
      this.deps.notifier.status(`watching ${JOBS}`);
    } catch (err) {
      this.log.error('announce after reconnect failed', { error: errText(err) });
    }
  }

  /** SIGHUP: a bad file is refused and the running config kept; the reason is logged. */
  reload(): Promise<boolean> {
    this.reloading = this.reloading.then(async () => {
      if (this.state !== 'ready') return false;
      this.deps.notifier.reloading();
      try {
        const next = await this.deps.loadConfig(this.deps.configPath);
        this.config = next;
        setLevel(this.log, next.logLevel);
        this.engine?.applyConfig(next);
        this.log.notice('configuration reloaded', { config: this.deps.configPath ?? 'default' });
        return true;
      } catch (err) {
        const fields =
          err instanceof ConfigError
            ? { key: err.keyPath || '(root)', reason: err.reason }
            : { error: errText(err) };
        this.log.error('configuration reload refused, keeping the running configuration', fields);
        return false;
      } finally {
        this.deps.notifier.ready(`watching ${JOBS}`);
      }
    });
    return this.reloading;
  }

  /** SIGTERM: take no new jobs, drain within the bound, leave the presence saying stopped. */
  stop(reason = 'SIGTERM'): Promise<void> {
    this.stopping ??= this.doStop(reason);
    return this.stopping;
  }

  private async doStop(reason: string): Promise<void> {
    const bound = this.deps.drainTimeoutMs ?? 30_000;
    const t0 = performance.now();
    this.deps.notifier.stopping(`stopping (${reason})`);
    this.stopWatchdog();
    const wasReady = this.state === 'ready';
    this.state = 'draining';
    // At once, before anything awaits: a request arriving from now on stays for the next agent.
    this.engine?.stopAccepting();
    this.log.notice('stopping: no new jobs', {
      reason,
      active: this.engine?.activeJobs() ?? 0,
      bound_ms: bound,
    });
    // Without a connection the note would wait for one: the drain must not wait behind it.
    if (wasReady && this.xs?.connected) await this.setStateNode('draining');
    if (this.engine) {
      try {
        const r = await this.engine.drain(bound);
        const level = r.left > 0 ? 'error' : 'info';
        this.log.log(level, 'drain finished', { ...r, elapsed_ms: Math.round(performance.now() - t0) });
      } catch (err) {
        this.log.error('drain failed', { error: errText(err) });
      }
    }
    this.state = 'stopped';
    if (this.announced && this.xs?.connected) await this.setStateNode('stopped');
    await this.xs?.close();
    this.log.notice('agent stopped');
  }

  /** Watchdog pings go to systemd only; they cause no XenStore traffic. */
  private startWatchdog(): void {
    const ms = this.deps.notifier.watchdogMs;
    if (ms === undefined) return;
    this.watchdogTimer = setInterval(() => this.deps.notifier.watchdog(), Math.max(100, Math.floor(ms / 2)));
    this.watchdogTimer.unref();
  }

  private stopWatchdog(): void {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.watchdogTimer = undefined;
  }
}

/** Another agent is announced and its process is alive on this host. */
export class AgentConflictError extends Error {
  override readonly name = 'AgentConflictError';
  constructor(
    readonly pid: number,
    readonly state: string,
  ) {
    super(`another devmigrate agent (pid ${pid}, state ${state}) is running; only one may serve the jobs`);
  }
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
