// Benchmark of the agent as a process (the built `devmigrate agent`) on the real xenstored with
// the simulated hypervisor: spawn -> READY as seen in XenStore, idle RSS, XenStore requests it
// sends in 10 s of idling (counted by a frame-counting proxy on its socket), RSS with 100 jobs
// RUNNING (each in pre-suspend, its device tool at work), and SIGTERM with them in flight. Last
// stdout line: JSON. Bounded well under 60 s.
import { chmod, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { newJobId, writeControl, writeRequest } from '../../src/cli/job-client.js';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import { guestLayout, writeNodes, type GuestDescription } from '../../xen-mocks/sim-host.js';
import { defaultDomain, writeDomain } from '../../xen-mocks/sim-state.js';
import {
  agentLogPath,
  spawnAgent,
  waitAgentReady,
  waitWatched,
  type AgentProcess,
} from '../integration/agent-world.js';

const JOBS = Number(process.env['BENCH_JOBS'] ?? 100);
const IDLE_S = Number(process.env['BENCH_IDLE_S'] ?? 10);
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] ? round(Number(m[1]) / 1024) : Number.NaN;
}

/** A unix-socket proxy in front of xenstored that counts the requests (16-byte header + len). */
function countingProxy(
  listenPath: string,
  target: string,
): Promise<{ requests: () => number; close: () => Promise<void> }> {
  let requests = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    sockets.add(client);
    sockets.add(upstream);
    let buf = Buffer.alloc(0);
    client.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 16) {
        const len = buf.readUInt32LE(12);
        if (buf.length < 16 + len) break;
        requests++;
        buf = buf.subarray(16 + len);
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  return new Promise((resolve) =>
    server.listen(listenPath, () =>
      resolve({
        requests: () => requests,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      }),
    ),
  );
}

function guest(domid: number): GuestDescription {
  const hex = domid.toString(16).padStart(4, '0');
  return {
    domid,
    name: `bench${domid}`,
    uuid: `00000000-0000-4000-8000-00000000${hex}`,
    devices: [
      {
        type: 'vbd',
        vdev: 'xvda',
        params: `/srv/shared/bench${domid}.img`,
        format: 'file',
        mode: 'w',
        backend: 'qdisk',
      },
      { type: 'vif', mac: `00:16:3e:00:${hex.slice(0, 2)}:${hex.slice(2)}` },
      { type: 'console' },
    ],
  };
}

/**
 * The reference of the same run: a bare Node process that connects with our XenStore client and
 * writes one presence node, then idles. The agent's start-up and idle RSS are read against it:
 * what the agent adds over "Node plus a XenStore connection".
 */
async function referenceProcess(
  xs: XenStore,
  env: NodeJS.ProcessEnv,
): Promise<{ readyMs: number; rssMb: number }> {
  const client = new URL('../../src/xenstore/index.js', import.meta.url).href;
  const script =
    `const { connectXenStore } = await import(${JSON.stringify(client)});` +
    `const xs = await connectXenStore();` +
    `await xs.write('/tool/devmigrate-bench-ref/ready', String(process.pid));` +
    `setInterval(() => {}, 60_000);`;
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env, stdio: 'ignore' });
  try {
    const pid = child.pid;
    if (pid === undefined) throw new Error('reference process did not start');
    await waitWatched(
      xs,
      '/tool/devmigrate-bench-ref',
      async () => (await xs.tryRead('/tool/devmigrate-bench-ref/ready')) === String(pid),
      20_000,
      'reference process ready',
    );
    const readyMs = round(performance.now() - t0, 0);
    await new Promise((r) => setTimeout(r, 1000));
    return { readyMs, rssMb: rssMb(pid) };
  } finally {
    child.kill('SIGKILL');
    await xs.rm('/tool/devmigrate-bench-ref').catch(() => undefined);
  }
}

async function main(): Promise<void> {
  await buildMocks();
  const dir = await mkdtemp(join(tmpdir(), 'bench-agent-'));
  let h: XenstoredHarness | undefined;
  let xs: XenStore | undefined;
  let agent: AgentProcess | undefined;
  let proxy: Awaited<ReturnType<typeof countingProxy>> | undefined;
  try {
    h = await startXenstored({ dir: join(dir, 'xenstored') });
    xs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    // JOBS domains in the simulated hypervisor, laid out as libxl would (no guest kernels needed:
    // the jobs are driven in steps mode up to their pre-suspend, which runs until released).
    for (let d = 1; d <= JOBS; d++) {
      await writeDomain(h.stateDir, defaultDomain(d));
      await writeNodes(xs, guestLayout(guest(d)));
    }
    const proxyPath = join(dir, 'proxy.sock');
    proxy = await countingProxy(proxyPath, h.socketPath);
    // The vif's device tool: its pre-suspend (step 1) runs until the release file exists (a bulk
    // copy in progress), saying it started; every other step ends at once.
    const tool = join(dir, 'vif-tool.sh');
    await writeFile(
      tool,
      `#!/bin/sh
step=; rec=
while [ $# -gt 0 ]; do case "$1" in -step) step=$2; shift 2;; -recover) rec=1; shift;; *) shift;; esac; done
if [ "$step" = 1 ] && [ -z "$rec" ]; then
  : >${dir}/running-$DEVMIGRATE_DOMID
  while [ ! -e ${dir}/release ]; do sleep 0.2; done
fi
exit 0
`,
    );
    await chmod(tool, 0o755);
    const cfg = join(dir, 'devmigrate.json');
    await writeFile(
      cfg,
      JSON.stringify({
        disks: { sharedPathPrefixes: ['/srv/shared/'] },
        limits: { maxJobs: JOBS, maxDeviceOps: 2 * JOBS + 32, reservedCriticalOps: 32 },
        devices: { vif: { tool: { path: tool, timeoutMs: 120_000 } } },
      }),
    );

    const ref = await referenceProcess(xs, h.env);

    const t0 = performance.now();
    agent = spawnAgent({
      env: { ...h.env, XENSTORED_PATH: proxyPath },
      configPath: cfg,
      logFile: agentLogPath(dir, 1),
    });
    await waitAgentReady(xs, agent.pid);
    const readyMs = round(performance.now() - t0, 0);

    await new Promise((r) => setTimeout(r, 1000)); // let start-up garbage settle
    const idleRss = rssMb(agent.pid);
    const before = proxy.requests();
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    const idleOps = Math.round(((proxy.requests() - before) * 10) / IDLE_S);

    const t1 = performance.now();
    for (let d = 1; d <= JOBS; d++) {
      await writeRequest(xs, d, { id: newJobId(), target: 'host-b', mode: 'steps', suspend: 'agent' });
    }
    for (let d = 1; d <= JOBS; d++) {
      const c = xs;
      await waitWatched(
        c,
        `/tool/devmigrate/jobs/${d}`,
        async () => (await c.tryRead(`/tool/devmigrate/jobs/${d}/state`)) !== undefined,
        20_000,
        `job ${d} accepted`,
      );
      await writeControl(c, d, 'test');
    }
    for (let d = 1; d <= JOBS; d++) {
      const c = xs;
      await waitWatched(
        c,
        `/tool/devmigrate/jobs/${d}`,
        async () => (await c.tryRead(`/tool/devmigrate/jobs/${d}/state`)) === 'tested',
        20_000,
        `job ${d} tested`,
      );
      await writeControl(c, d, 'pre-suspend');
    }
    // Every job running: in pre-suspend, its device tool at work.
    let peak = 0;
    const runningEnd = performance.now() + 30_000;
    for (;;) {
      const started = (await readdir(dir)).filter((f) => f.startsWith('running-')).length;
      peak = Math.max(peak, rssMb(agent.pid));
      if (started >= JOBS) break;
      if (performance.now() > runningEnd) throw new Error(`only ${started}/${JOBS} jobs running after 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    for (let d = 1; d <= JOBS; d++) {
      const st = await xs.tryRead(`/tool/devmigrate/jobs/${d}/state`);
      if (st !== 'pre-suspend') throw new Error(`job ${d} is ${st ?? 'absent'}, not running pre-suspend`);
    }
    const jobsMs = round(performance.now() - t1, 0);
    for (let i = 0; i < 10; i++) {
      peak = Math.max(peak, rssMb(agent.pid));
      await new Promise((r) => setTimeout(r, 100));
    }
    const rss100 = peak;
    // Released: the jobs rest in pre-suspended, in flight, when SIGTERM comes.
    await writeFile(join(dir, 'release'), '');
    for (let d = 1; d <= JOBS; d++) {
      const c = xs;
      await waitWatched(
        c,
        `/tool/devmigrate/jobs/${d}`,
        async () => (await c.tryRead(`/tool/devmigrate/jobs/${d}/state`)) === 'pre-suspended',
        30_000,
        `job ${d} pre-suspended`,
      );
    }
    const stop0 = performance.now();
    const exit = await agent.stop('SIGTERM');
    const stopMs = round(performance.now() - stop0, 0);
    agent = undefined;

    console.log(
      `reference (bare node + XenStore connection + one write): ready ${ref.readyMs} ms, RSS ${ref.rssMb} MB`,
    );
    console.log(
      `agent start -> READY (spawn to presence "ready"): ${readyMs} ms   (target <= 500; ${round(readyMs / ref.readyMs, 2)} x reference)`,
    );
    console.log(`idle RSS: ${idleRss} MB   (target <= 70; ${round(idleRss / ref.rssMb, 2)} x reference)`);
    console.log(`XenStore requests in ${IDLE_S} s idle: ${idleOps} (scaled to 10 s)   (target 0)`);
    console.log(
      `${JOBS} jobs running (steps mode, each in pre-suspend with its device tool at work): RSS ${rss100} MB   (target <= 150); all running ${jobsMs} ms after the first request`,
    );
    console.log(
      `SIGTERM with ${JOBS} jobs in flight (pre-suspended: aborted, each device recovered): exit ${exit.code ?? exit.signal} after ${stopMs} ms`,
    );
    console.log(
      JSON.stringify({
        ready_ms: readyMs,
        idle_rss_mb: idleRss,
        idle_xs_ops_10s: idleOps,
        rss_100_jobs_mb: rss100,
        jobs: JOBS,
        jobs_running_ms: jobsMs,
        sigterm_exit: exit.code,
        sigterm_ms: stopMs,
        ref_ready_ms: ref.readyMs,
        ref_rss_mb: ref.rssMb,
        ready_ratio: round(readyMs / ref.readyMs, 2),
        idle_rss_ratio: round(idleRss / ref.rssMb, 2),
      }),
    );
  } finally {
    await agent?.stop('SIGKILL');
    await proxy?.close();
    await xs?.close().catch(() => undefined);
    await h?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
