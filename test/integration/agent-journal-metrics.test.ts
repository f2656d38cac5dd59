// The agent under systemd, seen from journald and from monitoring: with its stdout on the journal
// (JOURNAL_STREAM), every entry reaches journald's native socket (a fake one here) with the job's
// fields (DOMID, DOMAIN, JOB, PHASE, DEVICE) and one summary entry per job; the Prometheus
// textfile is there, in the exposition format, counting the job, and says the agent stopped.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { decodeEntry } from '../../src/agent/journald.js';
import { writeRequest } from '../../src/cli/job-client.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { simAgentConfig, startSimHost, type RunningSim } from '../../xen-mocks/sim-kit.js';
import { parseExposition } from '../unit/exposition-format.js';
import { spawnAgent, waitAgentReady, waitJobState, type AgentProcess } from './agent-world.js';

const RECEIVER = `
import socket, sys, base64
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
print('listening', flush=True)
while True:
    try:
        data = s.recv(262144)
    except socket.timeout:
        break
    print(base64.b64encode(data).decode(), flush=True)
`;

describe('the agent to journald (native fields) and to Prometheus (textfile)', () => {
  let dir: string;
  let sim: RunningSim;
  let xs: XenStore;
  let agent: AgentProcess | undefined;
  let journal: ChildProcessWithoutNullStreams;
  const entries: Map<string, string>[] = [];
  const prom = (): string => readFileSync(join(dir, 'node-exporter', 'xen-devmigrate.prom'), 'utf8');

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agent-journal-'));
    sim = await startSimHost({
      simDir: dir,
      desc: {
        guests: [
          {
            domid: 1,
            name: 'web01',
            uuid: '00000000-0000-4000-8000-0000000d0101',
            devices: [
              {
                type: 'vbd',
                vdev: 'xvda',
                params: '{dir}/images/web01.img',
                format: 'file',
                mode: 'w',
                backend: 'qdisk',
                image: { sizeMb: 2 },
              },
              { type: 'vif', mac: '00:16:3e:0d:01:01' },
            ],
          },
        ],
      },
    });
    xs = await connectXenStore({ path: sim.socketPath, timeoutMs: 10_000 });
    const sock = join(dir, 'journal.sock');
    journal = spawn('python3', ['-c', RECEIVER, sock]);
    const listening = new Promise<void>((resolve) => {
      createInterface({ input: journal.stdout }).on('line', (l) => {
        if (l === 'listening') resolve();
        else entries.push(decodeEntry(Buffer.from(l, 'base64')));
      });
    });
    await listening;
    mkdirSync(join(dir, 'node-exporter'));
    const cfg = join(dir, 'agent.json');
    writeFileSync(
      cfg,
      JSON.stringify({
        ...simAgentConfig(dir),
        metrics: { textfile: join(dir, 'node-exporter', 'xen-devmigrate.prom') },
      }),
    );
    // systemd gives the service a stream on the journal and names it in JOURNAL_STREAM; here the
    // agent's stdout is a file, and JOURNAL_STREAM names that file's device and inode.
    const logFile = join(dir, 'stdout.log');
    writeFileSync(logFile, '');
    const st = statSync(logFile);
    agent = spawnAgent({
      env: {
        ...process.env,
        ...sim.env,
        INVOCATION_ID: 'test',
        JOURNAL_STREAM: `${st.dev}:${st.ino}`,
        DEVMIGRATE_JOURNAL_SOCKET: sock,
      },
      configPath: cfg,
      logFile,
      logFormat: 'auto',
    });
    await waitAgentReady(xs, agent.pid);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop('SIGTERM');
    journal?.kill('SIGKILL');
    await xs?.close().catch(() => undefined);
    await sim?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('a job leaves native entries with its fields and one summary entry; the textfile counts it', async () => {
    // Written just after the agent announced itself ready: a short, bounded wait for the file.
    const first = Date.now() + 5000;
    while (!existsSync(join(dir, 'node-exporter', 'xen-devmigrate.prom')) && Date.now() < first)
      await new Promise((r) => setTimeout(r, 20));
    expect(parseExposition(prom()).get('devmigrate_agent_up')?.samples[0]?.[1]).toBe(1);
    await writeRequest(xs, 1, { id: 'jrn-1', target: 'host-b', mode: 'auto', suspend: 'agent' });
    await waitJobState(xs, 1, (s) => s === 'done', 30_000, 'done');
    const deadline = Date.now() + 10_000;
    const summary = (): Map<string, string> | undefined => entries.find((e) => e.get('OUTCOME') === 'done');
    while (summary() === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));

    const ready = entries.find((e) => e.get('MESSAGE')?.startsWith('agent ready'));
    expect(ready?.get('PRIORITY')).toBe('6');
    expect(ready?.get('SYSLOG_IDENTIFIER')).toBe('devmigrate');
    const deviceLine = entries.find((e) => e.get('DEVICE') === 'qdisk/51712' && e.get('JOB') === 'jrn-1');
    expect(deviceLine, JSON.stringify(entries.map((e) => Object.fromEntries(e)))).toBeDefined();
    expect(deviceLine?.get('DOMID')).toBe('1');
    expect(deviceLine?.get('DOMAIN')).toBe('web01');
    expect(deviceLine?.get('PHASE')).toMatch(/^(testing|pre-suspend|post-suspend|syncing)$/);
    const s = summary();
    expect(s?.get('PRIORITY')).toBe('5'); // notice: one line per job, `journalctl -p notice` lists them
    expect(s?.get('MESSAGE')).toMatch(
      /^job web01 done: total [0-9.]+ s, downtime [0-9.]+ s until the devices were synced, copied 2\.0 MiB/,
    );
    expect(s?.get('DOMAIN')).toBe('web01');
    expect(Number(s?.get('DOWNTIME_MS'))).toBeGreaterThanOrEqual(0);
    // Nothing went to stdout: every entry reached the journal natively.
    expect(readFileSync(join(dir, 'stdout.log'), 'utf8')).not.toMatch(/job/);

    // The textfile is rewritten just after the summary line: a bounded wait for that write.
    const written = Date.now() + 10_000;
    while (!prom().includes('devmigrate_jobs_total{outcome="done"} 1') && Date.now() < written)
      await new Promise((r) => setTimeout(r, 50));
    const fams = parseExposition(prom());
    const sample = (f: string, n: string): number | undefined =>
      fams.get(f)?.samples.find(([x]) => x === n)?.[1];
    expect(sample('devmigrate_jobs_total', 'devmigrate_jobs_total{outcome="done"}')).toBe(1);
    expect(sample('devmigrate_job_downtime_seconds', 'devmigrate_job_downtime_seconds_count')).toBe(1);
    expect(
      sample(
        'devmigrate_phase_duration_seconds',
        'devmigrate_phase_duration_seconds_count{phase="pre-suspend"}',
      ),
    ).toBe(1);
  }, 60_000);

  it('after SIGTERM the textfile says the agent is down', async () => {
    const exit = await agent?.stop('SIGTERM');
    agent = undefined;
    expect(exit?.code).toBe(0);
    expect(parseExposition(prom()).get('devmigrate_agent_up')?.samples[0]?.[1]).toBe(0);
  }, 60_000);
});
