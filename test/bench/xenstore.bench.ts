// XenStore client benchmark against ONE real xenstored (the test harness): libxenstore's C loop
// as the reference, our socket client (sequential and 64 in flight), the FFI client, and watch
// latency. Several interleaved rounds, medians, ratios; the last stdout line is one JSON object.
// Run: npm run build && node dist/test/bench/xenstore.bench.js [--rounds N] [--ops N]

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';

const execFileP = promisify(execFile);
const KEY = '/bench/key';
const PIPELINE_DEPTH = 64;

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

const ROUNDS = arg('rounds', 5);
const OPS = arg('ops', 10_000);
const WATCH_SAMPLES = arg('watch-samples', 2000);

function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** The C source sits next to this file in the sources; from dist/, go back to the tree. */
function cSource(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const c of [
    join(here, 'xs-read-loop.c'),
    resolve(here, '..', '..', '..', 'test', 'bench', 'xs-read-loop.c'),
  ]) {
    if (existsSync(c)) return c;
  }
  throw new Error('xs-read-loop.c not found next to the benchmark or under test/bench/');
}

async function compileC(dir: string): Promise<string> {
  const bin = join(dir, 'xs-read-loop');
  await execFileP('gcc', ['-O2', '-o', bin, cSource(), '-lxenstore'], { timeout: 60_000 });
  return bin;
}

async function runC(bin: string, h: XenstoredHarness, ops: number): Promise<number> {
  const { stdout } = await execFileP(bin, [KEY, String(ops)], {
    env: { ...h.env, XENSTORED_PATH: h.socketPath },
    timeout: 60_000,
  });
  const m = /ops_per_sec (\d+)/.exec(stdout);
  if (!m?.[1]) throw new Error(`C loop printed no rate: ${stdout}`);
  return Number(m[1]);
}

async function sequential(xs: XenStore, ops: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) await xs.read(KEY);
  return ops / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function pipelined(xs: XenStore, ops: number, depth: number): Promise<number> {
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < ops) {
      issued++;
      await xs.read(KEY);
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: depth }, worker));
  return ops / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/** Write on `writer`, time until `watcher`'s callback sees that exact path. Microseconds. */
async function watchLatency(watcher: XenStore, writer: XenStore, samples: number): Promise<number[]> {
  const path = '/bench/watched/node';
  await writer.write(path, 'init');
  let waiting: ((t: bigint) => void) | undefined;
  const w = await watcher.watch('/bench/watched', {
    onEvent: (ev) => {
      if (ev.path === path && waiting) {
        const done = waiting;
        waiting = undefined;
        done(process.hrtime.bigint());
      }
    },
  });
  await new Promise((r) => setTimeout(r, 20)); // let the initial event pass
  const out: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const seen = new Promise<bigint>((res, rej) => {
        const timer = setTimeout(() => rej(new Error('watch event not seen within 2 s')), 2000);
        waiting = (t) => {
          clearTimeout(timer);
          res(t);
        };
      });
      const t0 = process.hrtime.bigint();
      await writer.write(path, String(i));
      const t1 = await seen;
      out.push(Number(t1 - t0) / 1000);
    }
  } finally {
    await w.close();
  }
  return out;
}

type FfiOpen = (opts: { path?: string }) => Promise<XenStore>;

async function loadFfi(): Promise<FfiOpen | undefined> {
  // A variable specifier: the FFI client is another module's work and may be absent.
  const spec = '../../src/xenstore/ffi-client.js';
  try {
    const mod = (await import(spec)) as { openFfiXenStore?: FfiOpen };
    return mod.openFfiXenStore;
  } catch (err) {
    console.error(`FFI client unavailable: ${(err as Error).message}`);
    return undefined;
  }
}

function fmt(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a';
}

async function main(): Promise<void> {
  await buildMocks();
  const tmp = await mkdtemp(join(tmpdir(), 'xs-bench-'));
  let h: XenstoredHarness | undefined;
  const clients: XenStore[] = [];
  try {
    const bin = await compileC(tmp);
    h = await startXenstored();
    const xs = await connectXenStore({ path: h.socketPath });
    const other = await connectXenStore({ path: h.socketPath });
    clients.push(xs, other);
    await xs.write(KEY, 'benchmark-value-0123456789');
    const openFfi = await loadFfi();
    let ffi: XenStore | undefined;
    try {
      ffi = openFfi ? await openFfi({ path: h.socketPath }) : undefined;
    } catch (err) {
      console.error(`FFI client failed to open: ${(err as Error).message}`);
    }
    if (ffi) clients.push(ffi);

    // Warm-up: JIT, socket buffers, xenstored's caches.
    await sequential(xs, 2000);
    await pipelined(xs, 2000, PIPELINE_DEPTH);
    if (ffi) await sequential(ffi, 1000);
    await runC(bin, h, 1000);

    const r = { c: [] as number[], seq: [] as number[], pipe: [] as number[], ffi: [] as number[] };
    for (let round = 0; round < ROUNDS; round++) {
      r.c.push(await runC(bin, h, OPS));
      r.seq.push(await sequential(xs, OPS));
      r.pipe.push(await pipelined(xs, OPS, PIPELINE_DEPTH));
      if (ffi) r.ffi.push(await sequential(ffi, OPS));
      console.error(
        `round ${round + 1}/${ROUNDS}: C ${fmt(r.c.at(-1) ?? NaN)}  seq ${fmt(r.seq.at(-1) ?? NaN)}  ` +
          `x${PIPELINE_DEPTH} ${fmt(r.pipe.at(-1) ?? NaN)}  ffi ${fmt(r.ffi.at(-1) ?? NaN)}`,
      );
    }
    const lat = (await watchLatency(xs, other, WATCH_SAMPLES)).sort((a, b) => a - b);

    const c = median(r.c);
    const rows: Array<[string, number, string]> = [
      ['(a) C libxenstore xs_read, sequential', c, '>= 1.0 (reference)'],
      ['(b) socket client, sequential', median(r.seq), '>= 0.8'],
      [`(c) socket client, ${PIPELINE_DEPTH} in flight`, median(r.pipe), '>= 2.0'],
      ['(d) FFI client, sequential', ffi ? median(r.ffi) : NaN, '>= 0.7'],
    ];
    console.log(`XenStore read benchmark: ${ROUNDS} rounds x ${OPS} reads, medians (ops/s)`);
    // Per-round ratios too: the C loop and ours run back to back, so a ratio within one round
    // is less exposed to the machine's load drifting between rounds than a ratio of medians.
    const perRound = (xs: readonly number[]): string =>
      xs.length === r.c.length ? median(xs.map((v, i) => v / (r.c[i] ?? NaN))).toFixed(2) : 'n/a';
    const series = [r.c, r.seq, r.pipe, r.ffi];
    console.log('| case | ops/s | ratio vs (a) | median per-round ratio | target |');
    console.log('|---|---:|---:|---:|---|');
    rows.forEach(([name, v, target], i) => {
      const ratio = Number.isFinite(v) ? (v / c).toFixed(2) : 'n/a';
      console.log(`| ${name} | ${fmt(v)} | ${ratio} | ${perRound(series[i] ?? [])} | ${target} |`);
    });
    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    console.log(
      `(e) watch latency, write on a 2nd connection -> our callback, ${lat.length} samples: ` +
        `p50 ${p50.toFixed(1)} us (target <= 200), p99 ${p99.toFixed(1)} us (target <= 2000)`,
    );
    console.log(
      JSON.stringify({
        c_seq_ops: Math.round(c),
        ts_seq_ops: Math.round(median(r.seq)),
        ts_pipelined_ops: Math.round(median(r.pipe)),
        ffi_seq_ops: ffi ? Math.round(median(r.ffi)) : null,
        watch_p50_us: Math.round(p50 * 10) / 10,
        watch_p99_us: Math.round(p99 * 10) / 10,
      }),
    );
  } finally {
    for (const cl of clients) await cl.close().catch(() => undefined);
    await h?.stop().catch(() => undefined);
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
