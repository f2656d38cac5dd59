// Runs inside dom0 (from the 9p share): the project's COMPILED domain control
// (dist/src/domains/domain-control.js over the real libxenctrl/libxenguest and XenStore) on the
// ticking e2e PVH guest: info/list, pause/unpause, suspend (libxl's handshake) then resume (fast
// first), and after each step the guest must tick again. Exit 0 pass, 1 fail, 77 not built.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const detailFile = process.env.E2E_DETAIL;
const detail = (msg) => {
  if (detailFile) fs.appendFileSync(detailFile, `${msg}\n`);
};
const domid = Number(process.env.E2E_GUEST_DOMID);
// Prefix of the guest's console logs (xenconsoled: guest-<name>.log, and after a live migration
// guest-<name>--incoming.log): every file starting with it counts.
const guestLogs = process.env.E2E_GUEST_LOGS ?? '';
const STEP_TIMEOUT_MS = 150_000;

function lastTick() {
  const dir = path.dirname(guestLogs);
  const prefix = path.basename(guestLogs);
  if (!guestLogs || !fs.existsSync(dir)) return 0;
  let max = 0;
  for (const f of fs.readdirSync(dir).filter((n) => n.startsWith(prefix))) {
    for (const m of fs.readFileSync(path.join(dir, f), 'latin1').matchAll(/tick (\d+)/g))
      max = Math.max(max, Number(m[1]));
  }
  return max;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ticksAfter(before, ms, what) {
  const until = Date.now() + ms;
  while (lastTick() <= before + 1) {
    if (Date.now() > until)
      throw new Error(`${what}: guest printed no new tick within ${ms} ms (last ${lastTick()})`);
    await sleep(500);
  }
}

function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function load(file) {
  const abs = path.join(REPO, file);
  return fs.existsSync(abs) ? import(pathToFileURL(abs).href) : undefined;
}

async function main() {
  if (!Number.isInteger(domid) || domid <= 0)
    throw new Error(`bad E2E_GUEST_DOMID '${process.env.E2E_GUEST_DOMID}'`);
  const dc = await load('dist/src/domains/domain-control.js');
  const xsMod = await load('dist/src/xenstore/index.js');
  if (!dc?.createDomainControl || !xsMod?.connectXenStore) {
    const why = 'dist/src/domains/domain-control.js or dist/src/xenstore/index.js not built';
    const strict = process.env.E2E_STRICT === '1';
    console.log(`${strict ? 'FAIL' : 'SKIP'}: ${why}`);
    detail(why);
    return strict ? 1 : 77;
  }
  const xs = await xsMod.connectXenStore({ timeoutMs: 30_000 });
  const control = dc.createDomainControl({
    xenstore: xs,
    log: (level, msg) => console.log(`domain-control ${level}: ${msg}`),
  });
  const results = [];
  const step = async (name, fn) => {
    const t0 = Date.now();
    try {
      await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT_MS, name);
      results.push({ name, ok: true, ms: Date.now() - t0 });
      console.log(`ok   ${name} (${Date.now() - t0} ms)`);
    } catch (err) {
      results.push({ name, ok: false, err });
      console.log(`FAIL ${name} (${Date.now() - t0} ms): ${err?.stack ?? err}`);
    }
  };
  try {
    await step('info and list', async () => {
      const info = await control.info(domid);
      if (!info || info.paused || info.shutdown)
        throw new Error(`guest not running: ${JSON.stringify(info)}`);
      const ids = (await control.list()).map((d) => d.domid);
      if (!ids.includes(0) || !ids.includes(domid)) throw new Error(`list() gave ${JSON.stringify(ids)}`);
    });
    await step('pause: no ticks while paused; unpause: ticks again', async () => {
      await control.pause(domid);
      const info = await control.info(domid);
      if (!info?.paused) throw new Error(`info after pause: ${JSON.stringify(info)}`);
      await sleep(1500); // a tick already in xenconsoled's pipe may still land
      const frozen = lastTick();
      await sleep(4000);
      if (lastTick() !== frozen) throw new Error(`guest ticked while paused (${frozen} -> ${lastTick()})`);
      await control.unpause(domid);
      await ticksAfter(frozen, 60_000, 'after unpause');
    });
    await step('suspend (control/shutdown handshake) then resume (fast): ticks again', async () => {
      const before = lastTick();
      await control.suspend(domid);
      const info = await control.info(domid);
      if (!info?.shutdown || info.shutdownReason !== 'suspend')
        throw new Error(`info after suspend: ${JSON.stringify(info)}`);
      await control.resume(domid, { fast: true });
      const after = await control.info(domid);
      if (!after || after.shutdown || after.paused)
        throw new Error(`info after resume: ${JSON.stringify(after)}`);
      await ticksAfter(Math.max(before, lastTick()), 90_000, 'after resume');
    });
  } finally {
    await control.close().catch(() => undefined);
    await xs.close().catch(() => undefined);
  }
  const failed = results.filter((r) => !r.ok);
  if (failed.length === 0) {
    detail(
      `domain ${domid}: ${results.map((r) => `${r.name.split(':')[0]} ${(r.ms / 1000).toFixed(1)}s`).join(', ')}`,
    );
    return 0;
  }
  detail(
    `${failed.length}/${results.length} failed: ${failed.map((f) => `${f.name.split(':')[0]}: ${f.err?.message ?? f.err}`).join('; ')}`,
  );
  return 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.log(`FAIL: ${err?.stack ?? err}`);
    detail(String(err?.message ?? err));
    process.exit(1);
  },
);
