// The agent over the libxenstore (FFI) transport, the one a dom0 with xenstored in a stub
// domain needs: forced with DEVMIGRATE_TRANSPORT=ffi against the real xenstored, it announces
// itself and comes back after a xenstored restart like the socket transport does.
import { describe, it, expect, afterEach } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import { connectAnyTransport } from '../../src/agent/connect.js';
import { AgentDaemon, AGENT_PATH } from '../../src/agent/daemon.js';
import { silentLogger } from '../../src/agent/logger.js';
import { createNotifier } from '../../src/agent/sd-notify.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';

describe('agent over libxenstore (FFI)', () => {
  let h: XenstoredHarness | undefined;
  let daemon: AgentDaemon | undefined;
  let probe: XenStore | undefined;
  const saved = process.env['DEVMIGRATE_TRANSPORT'];

  afterEach(async () => {
    await daemon?.stop('test end').catch(() => undefined);
    await probe?.close().catch(() => undefined);
    await h?.stop();
    if (saved === undefined) delete process.env['DEVMIGRATE_TRANSPORT'];
    else process.env['DEVMIGRATE_TRANSPORT'] = saved;
  });

  it('announces itself and reconnects after xenstored restarts', async () => {
    h = await startXenstored();
    const harness = h;
    process.env['DEVMIGRATE_TRANSPORT'] = 'ffi';
    const cfg = { ...defaultConfig(), xenstoredPath: harness.socketPath };
    let engineStarts = 0;
    const kinds: string[] = [];
    daemon = new AgentDaemon({
      version: '1.0.0',
      logger: silentLogger(),
      notifier: createNotifier({ env: {} }),
      loadConfig: async () => cfg,
      connect: async (c) => {
        const x = await connectAnyTransport(c);
        kinds.push(x.constructor.name);
        return x;
      },
      createEngine: async (xs) => ({
        start: async () => {
          engineStarts++;
          await xs.watch('/tool/devmigrate/jobs');
        },
        stopAccepting: () => undefined,
        drain: async () => ({ finished: 0, left: 0 }),
        applyConfig: () => undefined,
        activeJobs: () => 0,
      }),
      backoff: { baseMs: 20, capMs: 200 },
    });
    await daemon.start();
    probe = await connectXenStore({ path: harness.socketPath, timeoutMs: 5000 });
    expect(await probe.readString(`${AGENT_PATH}/state`)).toBe('ready');
    await probe.close();
    await harness.restart();
    const end = Date.now() + 15_000;
    let state: string | undefined;
    while (Date.now() < end) {
      try {
        probe = await connectXenStore({ path: harness.socketPath, timeoutMs: 5000 });
        state = await probe.tryRead(`${AGENT_PATH}/state`);
        if (state === 'ready') break;
        await probe.close();
      } catch {
        // xenstored still starting
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(state).toBe('ready');
    expect(engineStarts).toBe(1);
    // Both connections, the first and the one after the restart, went through libxenstore.
    expect(kinds.length).toBeGreaterThanOrEqual(2);
    expect(new Set(kinds)).toEqual(new Set(['FfiXenStore']));
  }, 40_000);
});
