// The daemon over the real xenstored (xen-mocks harness) with a stand-in engine: presence dom0-only,
// readiness, no XenStore traffic while idle, reconnection after a xenstored restart (watches and
// presence back), SIGHUP reload, drain on stop, process-wide watch tokens.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { defaultConfig, ConfigError, type DevMigrateConfig } from '../../src/config/schema.js';
import { AgentDaemon, AGENT_PATH } from '../../src/agent/daemon.js';
import type { JobEngine } from '../../src/agent/engine-port.js';
import { countingXenStore, type XsCounts } from '../../src/agent/counting-xenstore.js';
import { ResilientXenStore } from '../../src/agent/resilient-xenstore.js';
import { createLogger, LineCapture } from '../../src/agent/logger.js';
import type { Notifier } from '../../src/agent/sd-notify.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { Watch, XenStore } from '../../src/xenstore/types.js';
import { startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';

class FakeNotifier implements Notifier {
  readonly enabled = true;
  readonly watchdogMs = undefined;
  readonly sent: string[] = [];
  ready(s?: string): void {
    this.sent.push(`READY${s ? ` ${s}` : ''}`);
  }
  stopping(): void {
    this.sent.push('STOPPING');
  }
  reloading(): void {
    this.sent.push('RELOADING');
  }
  status(s: string): void {
    this.sent.push(`STATUS ${s}`);
  }
  watchdog(): void {
    this.sent.push('WATCHDOG');
  }
}

/** Watches the jobs like the real engine and records what it sees. */
class FakeEngine implements JobEngine {
  events: string[] = [];
  configs: DevMigrateConfig[] = [];
  drained: number[] = [];
  watch: Watch | undefined;
  constructor(private readonly xs: XenStore) {}
  async start(): Promise<void> {
    this.watch = await this.xs.watch('/tool/devmigrate/jobs', { onEvent: (ev) => this.events.push(ev.path) });
  }
  stopAccepting(): void {
    this.events.push('stop-accepting');
  }
  async drain(ms: number): Promise<{ finished: number; left: number }> {
    this.drained.push(ms);
    await this.watch?.close();
    return { finished: 0, left: 0 };
  }
  applyConfig(c: DevMigrateConfig): void {
    this.configs.push(c);
  }
  activeJobs(): number {
    return 0;
  }
}

/** A freshly restarted xenstored may refuse a connection for a moment (EAGAIN): retry briefly. */
async function connectRetrying(path: string): Promise<XenStore> {
  for (let i = 0; ; i++) {
    try {
      return await connectXenStore({ path, timeoutMs: 5000 });
    } catch (err) {
      if (i >= 50) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function until(what: string, pred: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('agent daemon on a real xenstored', () => {
  let h: XenstoredHarness;
  let probe: XenStore;
  let daemon: AgentDaemon | undefined;
  let engine: FakeEngine | undefined;
  let notifier: FakeNotifier;
  let counts: XsCounts;
  let cap: LineCapture;
  let nextConfig: () => DevMigrateConfig;

  beforeEach(async () => {
    h = await startXenstored();
    probe = await connectXenStore({ path: h.socketPath, timeoutMs: 5000 });
    notifier = new FakeNotifier();
    counts = { ops: 0, events: 0 };
    cap = new LineCapture();
    nextConfig = defaultConfig;
    daemon = new AgentDaemon({
      version: '9.9.9',
      logger: createLogger({ format: 'journal', level: 'debug', stream: cap }),
      notifier,
      loadConfig: async () => nextConfig(),
      connect: async () =>
        countingXenStore(await connectXenStore({ path: h.socketPath, timeoutMs: 5000 }), counts),
      createEngine: async (xs) => (engine = new FakeEngine(xs)),
      drainTimeoutMs: 1234,
      backoff: { baseMs: 20, capMs: 200 },
    });
  });

  afterEach(async () => {
    await daemon?.stop('test end').catch(() => undefined);
    await probe.close().catch(() => undefined);
    await h.stop();
  });

  it('announces pid, version, started and state under /tool/devmigrate/agent, dom0-only, then READY', async () => {
    await daemon?.start();
    expect(await probe.readString(`${AGENT_PATH}/pid`)).toBe(String(process.pid));
    expect(await probe.readString(`${AGENT_PATH}/version`)).toBe('9.9.9');
    expect(await probe.readString(`${AGENT_PATH}/state`)).toBe('ready');
    expect(Number.isNaN(Date.parse(await probe.readString(`${AGENT_PATH}/started`)))).toBe(false);
    expect(await probe.getPerms(AGENT_PATH)).toEqual([{ domid: 0, access: 'n' }]);
    expect(await probe.getPerms('/tool/devmigrate')).toEqual([{ domid: 0, access: 'n' }]);
    expect(await probe.getPerms(`${AGENT_PATH}/pid`)).toEqual([{ domid: 0, access: 'n' }]);
    expect(notifier.sent.filter((s) => s.startsWith('READY'))).toHaveLength(1);
    expect(engine?.events).toContain('/tool/devmigrate/jobs');
  });

  it('sends no XenStore request at all while idle', async () => {
    await daemon?.start();
    const before = counts.ops;
    await new Promise((r) => setTimeout(r, 1500));
    expect(counts.ops - before).toBe(0);
  });

  it('reconnects after xenstored restarts: watch re-registered, presence announced again', async () => {
    await daemon?.start();
    await probe.close();
    await h.restart();
    probe = await connectRetrying(h.socketPath);
    // A restarted xenstored has an empty store: the agent must put its presence back.
    await until(
      'presence after restart',
      async () => (await probe.tryRead(`${AGENT_PATH}/state`)) === 'ready',
    );
    const seen = engine?.events.length ?? 0;
    await probe.write('/tool/devmigrate/jobs/7/request/id', 'x');
    await until('job event after restart', () =>
      (engine?.events.slice(seen) ?? []).includes('/tool/devmigrate/jobs/7/request/id'),
    );
    expect(cap.lines.some((l) => l.startsWith('<5>reconnected to xenstored'))).toBe(true);
    expect(daemon?.xenstore?.connections).toBe(2);
  });

  it('SIGHUP reload: a bad config is refused with key and reason, the running one kept', async () => {
    await daemon?.start();
    nextConfig = () => {
      throw new ConfigError('limits.maxJobs', 'must be between 1 and 1000, got 0');
    };
    expect(await daemon?.reload()).toBe(false);
    expect(engine?.configs).toHaveLength(0);
    expect(
      cap.lines.some(
        (l) => l.startsWith('<3>configuration reload refused') && l.includes('key=limits.maxJobs'),
      ),
    ).toBe(true);
    nextConfig = () => ({ ...defaultConfig(), logLevel: 'warn' });
    expect(await daemon?.reload()).toBe(true);
    expect(engine?.configs[0]?.logLevel).toBe('warn');
    expect(daemon?.currentConfig?.logLevel).toBe('warn');
    expect(notifier.sent.filter((s) => s === 'RELOADING')).toHaveLength(2);
  });

  it('stop: drains with the configured bound and leaves state=stopped', async () => {
    await daemon?.start();
    await daemon?.stop('SIGTERM');
    expect(engine?.drained).toEqual([1234]);
    expect(engine?.events).toContain('stop-accepting');
    expect(await probe.readString(`${AGENT_PATH}/state`)).toBe('stopped');
    expect(notifier.sent).toContain('STOPPING');
    expect(daemon?.currentState).toBe('stopped');
  });

  it('resilient stores take watch tokens from the process-wide counter: never two alike', async () => {
    const stores = [0, 1].map(
      () =>
        new ResilientXenStore({ connect: () => connectXenStore({ path: h.socketPath, timeoutMs: 5000 }) }),
    );
    try {
      const tokens: string[] = [];
      for (const s of stores) {
        await s.start();
        for (let i = 0; i < 2; i++) tokens.push((await s.watch('/tool')).token);
      }
      // A per-instance counter would give both stores devmigrate-rw-<pid>-1 and -2.
      expect(new Set(tokens).size).toBe(4);
      for (const t of tokens) expect(t).toMatch(new RegExp(`^devmigrate-rw-${process.pid}-[0-9]+$`));
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('waits for xenstored at start instead of failing (it may start after us)', async () => {
    await probe.close();
    await h.kill('SIGKILL');
    const started = daemon?.start();
    await new Promise((r) => setTimeout(r, 300));
    expect(daemon?.currentState).toBe('starting');
    await h.restart();
    await started;
    probe = await connectRetrying(h.socketPath);
    expect(await probe.readString(`${AGENT_PATH}/state`)).toBe('ready');
  });
});
