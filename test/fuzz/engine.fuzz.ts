// `npm run fuzz:engine`: runs the engine's fault model (fault-model.ts) over many seeded
// schedules on every core (worker threads), prints each violation with its seed and a replay
// command, and ends with one JSON line: {"schedules":N,"violations":V,"seconds":S}.
//   --schedules N     schedules to run (default 10000)
//   --seed S          first seed (default 1); schedules use S, S+1, ...
//   --workers W       worker threads (default: available parallelism)
//   --replay S        run seed S alone, printing its trace
// Exit status: 0 when no schedule broke an invariant, 1 otherwise.
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { runSchedule, type ScheduleResult } from './fault-model.js';

interface Job {
  first: number;
  count: number;
  stride: number;
  offset: number;
}
interface Report {
  done: number;
  steps: number;
  virtualMs: number;
  broken: ScheduleResult[];
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  return eq?.slice(name.length + 3);
}

async function runRange(job: Job, progress?: (n: number) => void): Promise<Report> {
  const rep: Report = { done: 0, steps: 0, virtualMs: 0, broken: [] };
  for (let i = job.offset; i < job.count; i += job.stride) {
    const res = await runSchedule({ seed: job.first + i });
    rep.done += 1;
    rep.steps += res.steps;
    rep.virtualMs += res.virtualMs;
    if (res.violations.length > 0) rep.broken.push(res);
    if (rep.done % 200 === 0) progress?.(rep.done);
  }
  return rep;
}

function replayCommand(seed: number): string {
  return `npm run fuzz:engine -- --replay ${seed}`;
}

async function main(): Promise<void> {
  const replay = arg('replay');
  if (replay !== undefined) {
    const seed = Number(replay);
    const t0 = performance.now();
    const res = await runSchedule({ seed, trace: (l) => console.log(`  ${l}`) });
    console.log(`seed ${seed}: ${res.summary}`);
    console.log(`  ${res.steps} steps, ${(res.virtualMs / 1000).toFixed(1)} s virtual`);
    for (const v of res.violations) console.log(`VIOLATION seed=${seed}: ${v}`);
    console.log(
      JSON.stringify({
        schedules: 1,
        violations: res.violations.length > 0 ? 1 : 0,
        seconds: Math.round((performance.now() - t0) / 100) / 10,
      }),
    );
    process.exitCode = res.violations.length > 0 ? 1 : 0;
    return;
  }
  const count = Number(arg('schedules') ?? 10_000);
  const first = Number(arg('seed') ?? 1);
  const workers = Math.max(1, Math.min(count, Number(arg('workers') ?? availableParallelism())));
  const t0 = performance.now();
  const progress = new Array<number>(workers).fill(0);
  let lastPrint = 0;
  const reports = await Promise.all(
    Array.from(
      { length: workers },
      (_, w) =>
        new Promise<Report>((resolve, reject) => {
          const worker = new Worker(new URL(import.meta.url), {
            workerData: { first, count, stride: workers, offset: w } satisfies Job,
          });
          worker.on('message', (m: { progress?: number; report?: Report }) => {
            if (m.progress !== undefined) {
              progress[w] = m.progress;
              const total = progress.reduce((a, b) => a + b, 0);
              if (total - lastPrint >= Math.max(1000, count / 10)) {
                lastPrint = total;
                console.log(
                  `  ${total}/${count} schedules, ${((performance.now() - t0) / 1000).toFixed(1)} s`,
                );
              }
            }
            if (m.report !== undefined) resolve(m.report);
          });
          worker.on('error', reject);
          worker.on('exit', (code) => {
            if (code !== 0) reject(new Error(`fuzz worker ${w} exited with ${code}`));
          });
        }),
    ),
  );
  const seconds = Math.round((performance.now() - t0) / 100) / 10;
  const done = reports.reduce((a, r) => a + r.done, 0);
  const broken = reports.flatMap((r) => r.broken).sort((a, b) => a.seed - b.seed);
  const steps = reports.reduce((a, r) => a + r.steps, 0);
  const virtualS = reports.reduce((a, r) => a + r.virtualMs, 0) / 1000;
  for (const b of broken.slice(0, 50)) {
    for (const v of b.violations) console.log(`VIOLATION seed=${b.seed}: ${v}`);
    console.log(`  schedule: ${b.summary}`);
    console.log(`  replay: ${replayCommand(b.seed)}`);
  }
  console.log(
    `${done} schedules (seeds ${first}..${first + count - 1}) on ${workers} worker(s) in ${seconds} s: ` +
      `${broken.length} broke an invariant; ${steps} scheduler steps, ${(virtualS / 3600).toFixed(1)} h of virtual time`,
  );
  console.log(JSON.stringify({ schedules: done, violations: broken.length, seconds }));
  process.exitCode = broken.length > 0 ? 1 : 0;
}

if (isMainThread) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(2);
  });
} else {
  const job = workerData as Job;
  void runRange(job, (n) => parentPort?.postMessage({ progress: n })).then((report) =>
    parentPort?.postMessage({ report }),
  );
}
