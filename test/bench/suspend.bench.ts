// Benchmark: suspend + resume of a prompt simulated guest through DomainControl, over the real
// xenstored (harness) and the simulated hypervisor behind the real koffi bindings. Prints p50/p99,
// XenStore requests per suspend (client side), and a write+read round trip measured in the same
// run as the reference. Last stdout line: one JSON object.
import { performance } from 'node:perf_hooks';
import { createDomainControl } from '../../src/domains/domain-control.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import { buildMocks, startXenstored } from '../../xen-mocks/harness.js';
import { createSimHost } from '../../xen-mocks/sim-host.js';
import { countXenStoreOps } from './xs-op-counter.js';

const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 200);
const WARMUP = 10;
const BUDGET_MS = 45_000;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

async function main(): Promise<void> {
  await buildMocks();
  const h = await startXenstored();
  process.env.XEN_SIM_STATE = h.stateDir;
  const xs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
  const counter = countXenStoreOps(xs);
  const dc = createDomainControl({
    xenstore: counter.xs,
    libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
    libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
    ackTimeoutMs: 5000,
    suspendTimeoutMs: 5000,
  });
  const host = await createSimHost(h, {
    guests: [
      {
        domid: 1,
        name: 'bench',
        uuid: '00000000-0000-4000-8000-00000000be01',
        devices: [{ type: 'vbd', vdev: 'xvda', params: '/dev/vg/bench', format: 'phy', mode: 'w' }],
      },
    ],
  });
  try {
    await host.guest(1).boot({ mode: 'normal' });

    // Reference: one write + one read of a dom0 node on the same connection.
    const ref: number[] = [];
    for (let i = 0; i < ROUNDS + WARMUP; i++) {
      const t0 = performance.now();
      await xs.write('/tool/devmigrate-bench/ref', String(i));
      await xs.read('/tool/devmigrate-bench/ref');
      if (i >= WARMUP) ref.push(performance.now() - t0);
    }

    const times: number[] = [];
    let suspendOps = 0;
    let resumeOps = 0;
    const started = performance.now();
    let rounds = 0;
    for (let i = 0; i < ROUNDS + WARMUP; i++) {
      if (performance.now() - started > BUDGET_MS) break;
      counter.reset();
      const t0 = performance.now();
      await dc.suspend(1);
      const sOps = counter.count();
      await dc.resume(1);
      const t1 = performance.now();
      if (i >= WARMUP) {
        times.push(t1 - t0);
        suspendOps += sOps;
        resumeOps += counter.count() - sOps;
        rounds++;
      }
    }
    times.sort((a, b) => a - b);
    ref.sort((a, b) => a - b);
    const p50 = percentile(times, 50);
    const p99 = percentile(times, 99);
    const refP50 = percentile(ref, 50);
    const result = {
      rounds,
      suspend_resume_ms_p50: round3(p50),
      suspend_resume_ms_p99: round3(p99),
      xs_ops_per_suspend: round3(suspendOps / Math.max(1, rounds)),
      xs_ops_per_resume: round3(resumeOps / Math.max(1, rounds)),
      reference_xs_write_read_ms_p50: round3(refP50),
      ratio_p50_to_reference: round3(p50 / refP50),
    };
    console.log(`suspend+resume of a prompt simulated guest, ${rounds} rounds (after ${WARMUP} warm-up)`);
    console.log(`  p50 ${result.suspend_resume_ms_p50} ms, p99 ${result.suspend_resume_ms_p99} ms`);
    console.log(
      `  XenStore requests: ${result.xs_ops_per_suspend} per suspend, ${result.xs_ops_per_resume} per resume`,
    );
    console.log(
      `  reference: xenstore write+read round trip p50 ${result.reference_xs_write_read_ms_p50} ms`,
    );
    console.log(`  ratio suspend+resume p50 / reference: ${result.ratio_p50_to_reference}`);
    console.log(JSON.stringify(result));
  } finally {
    await host.close();
    await dc.close();
    await xs.close();
    await h.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
