// A stand-in for `xl` on the simulated host (bin/xl of `devmigrate sim up`), shaped like
// tools/xl/xl_migrate.c so that `devmigrate migrate` meets what it meets on a real dom0: `xl
// migrate [-s CMD] [-p] <domain> <host>` runs "exec CMD host xl migrate-receive" through sh -c as
// its transport child, sends "memory" in live rounds, suspends the guest with libxl's handshake
// (the simulated kernel answers), says "Target has acknowledged transfer", renames the source
// <name>--migratedaway, gives the receiver permission to start, and destroys the source. A broken
// transport before that point makes it resume the guest ("Migration failed, resuming at sender").
// The destination is pretend: `xl migrate-receive` records the guest in <sim>/hosts/<host>.json,
// where `xl unpause` and `xl list` run "on" that host find it (SIM_XL_HOST, set by sim-ssh).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { getPriority } from 'node:os';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { createDomainControl } from '../src/domains/domain-control.js';
import type { DomainControl } from '../src/domains/types.js';
import { connectXenStore } from '../src/xenstore/index.js';
import type { XenStore } from '../src/xenstore/types.js';
import { buildDir } from './paths.js';
import { readDomain, sendEvent, VIRQ_DOM_EXC_PORT, withDomainLock, writeDomain } from './sim-state.js';

/** xl's migrate_receiver_banner (without the trailing newline). */
export const BANNER = 'xl migration receiver ready, send binary domain data.';

const env = process.env;
const num = (k: string, d: number): number => {
  const v = Number(env[k]);
  return Number.isFinite(v) && v >= 0 ? v : d;
};
/** One live round of "memory" (three rounds, shorter each time, as dirty pages get fewer). */
const ROUND_MS = num('SIM_XL_ROUND_MS', 600);
/** libxl waits 60 s for the ack and 60 s for the suspend; a simulated host has less patience. */
const SUSPEND_TIMEOUT_MS = num('SIM_XL_SUSPEND_TIMEOUT_MS', 10_000);
const STREAM_TIMEOUT_MS = 30_000;
/** The last round, the guest suspended (its dirty pages); default a sixth of a round. */
const LAST_ROUND_MS = num('SIM_XL_LAST_ROUND_MS', Math.round(ROUND_MS / 6));
/** Between "Target has acknowledged transfer" and the permission to start (a slow final handshake). */
const ACK_DELAY_MS = num('SIM_XL_ACK_DELAY_MS', 0);
/** How long the source's removal takes after the target's startup (libxl's destroy, hotplug). */
const TEARDOWN_MS = num('SIM_XL_TEARDOWN_MS', 0);
const execFileP = promisify(execFile);

const say = (line: string): void => void process.stderr.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function hostHere(): string | undefined {
  const h = env['SIM_XL_HOST'];
  return h === undefined || h === '' || h === 'localhost' ? undefined : h;
}

interface RemoteGuest {
  name: string;
  state: 'paused' | 'running';
  memoryKb: number;
}

function remoteFile(host: string): string {
  return join(env['SIM_DIR'] ?? '.', 'hosts', `${host}.json`);
}

async function readRemote(host: string): Promise<RemoteGuest[]> {
  try {
    return JSON.parse(await readFile(remoteFile(host), 'utf8')) as RemoteGuest[];
  } catch {
    return [];
  }
}

async function writeRemote(host: string, guests: RemoteGuest[]): Promise<void> {
  await mkdir(join(env['SIM_DIR'] ?? '.', 'hosts'), { recursive: true });
  const tmp = `${remoteFile(host)}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(guests, null, 1)}\n`);
  await rename(tmp, remoteFile(host));
}

async function findDomain(xs: XenStore, spec: string): Promise<{ domid: number; name: string } | undefined> {
  for (const id of await xs.directory('/local/domain')) {
    const name = await xs.tryRead(`/local/domain/${id}/name`);
    if (name === spec || id === spec) return { domid: Number(id), name: name ?? `domain-${id}` };
  }
  return undefined;
}

/** Lines from a stream, one at a time, each wait bounded; undefined at the end of the stream. */
class LineReader {
  private readonly queue: string[] = [];
  private waiter: ((l: string | undefined) => void) | undefined;
  private ended = false;
  constructor(input: NodeJS.ReadableStream) {
    const rl = createInterface({ input });
    rl.on('line', (l) => {
      if (this.waiter !== undefined) {
        const w = this.waiter;
        this.waiter = undefined;
        w(l);
      } else this.queue.push(l);
    });
    rl.on('close', () => {
      this.ended = true;
      this.waiter?.(undefined);
      this.waiter = undefined;
    });
  }
  next(ms = STREAM_TIMEOUT_MS): Promise<string | undefined> {
    const q = this.queue.shift();
    if (q !== undefined) return Promise.resolve(q);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        resolve(undefined);
      }, ms);
      this.waiter = (l) => {
        clearTimeout(t);
        resolve(l);
      };
    });
  }
}

/** Writes to the transport; false once it is broken (xl then sees EPIPE). */
function sender(child: ChildProcess & { stdin: Writable }): (text: string) => Promise<boolean> {
  let broken = false;
  child.stdin.on('error', () => (broken = true));
  child.on('exit', () => (broken = true));
  return (text) =>
    new Promise((resolve) => {
      if (broken || child.stdin.destroyed) return resolve(false);
      child.stdin.write(text, (err) => resolve(err == null && !broken));
    });
}

/**
 * libxl's destroy of the source, on the simulated hypervisor: the domain becomes dying (VIRQ
 * raised, xenstored releases it), then its XenStore nodes go (libxl removes them, xenstored does
 * not). Its state file stays, dying: the supervisor of the simulated host owns the ring bridge
 * and cleans up at its end (removing them under a running bridge would break xenstored).
 */
async function destroyDomain(xs: XenStore, stateDir: string, domid: number): Promise<void> {
  const vm = await xs.tryRead(`/local/domain/${domid}/vm`);
  await withDomainLock(stateDir, domid, async () => {
    const d = await readDomain(stateDir, domid);
    if (d !== undefined) await writeDomain(stateDir, { ...d, dying: true });
  });
  await sendEvent(stateDir, VIRQ_DOM_EXC_PORT);
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const r = await execFileP(join(buildDir(), 'xs-tool'), ['is-introduced', String(domid)], {
      env: process.env,
      timeout: 5000,
    }).catch(() => ({ stdout: 'F' }));
    if (r.stdout.trim() === 'F') break;
    await sleep(20);
  }
  const paths = [`/local/domain/${domid}`, `/libxl/${domid}`];
  if (vm !== undefined && /^\/vm\/[0-9a-f-]+$/.test(vm)) paths.push(vm);
  for (const type of await xs.directory('/local/domain/0/backend').catch(() => [] as string[]))
    paths.push(`/local/domain/0/backend/${type}/${domid}`);
  for (const p of paths) await xs.rm(p).catch(() => undefined);
}

async function migrate(args: string[]): Promise<number> {
  let ssh = 'ssh';
  let paused = false;
  const pos: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    if (a === '-s') ssh = args[++i] ?? '';
    else if (a === '-p') paused = true;
    else if (a === '-C') i += 1;
    else if (['-e', '-F', '-D', '--debug', '--live'].includes(a)) continue;
    else if (a.startsWith('-')) {
      say(`sim xl: migrate: unknown option ${a}`);
      return 2;
    } else pos.push(a);
  }
  const [spec, host] = pos;
  if (spec === undefined || host === undefined) {
    say('Usage: xl migrate [options] <Domain> <host>');
    return 2;
  }
  const xs = await connectXenStore({ timeoutMs: 10_000 });
  let dc: DomainControl | undefined;
  try {
    const dom = await findDomain(xs, spec);
    if (dom === undefined) {
      say(`${spec} is an invalid domain identifier (rc=-6)`);
      return 1;
    }
    dc = createDomainControl({ xenstore: xs });
    const memKb = Number((await xs.tryRead(`/local/domain/${dom.domid}/memory/static-max`)) ?? '262144');
    const rune = ssh === '' ? host : `exec ${ssh} ${host} xl migrate-receive${paused ? ' -p' : ''}`;
    const child = spawn('sh', ['-c', rune], { stdio: ['pipe', 'pipe', 'inherit'] });
    const send = sender(child);
    const lines = new LineReader(child.stdout);
    // xl's migration_child_report: close the stream, give the transport 2 s to exit and report.
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const reap = async (): Promise<void> => {
      child.stdin.end();
      await Promise.race([exited, sleep(2000)]);
    };

    if ((await lines.next()) !== BANNER) {
      say('migration receiver stream contained unexpected data instead of banner');
      say(`(command run was: ${rune} )`);
      await reap();
      return 1;
    }
    let suspended = false;
    const failedResume = async (): Promise<number> => {
      await reap();
      say('Migration failed, resuming at sender.');
      if (suspended) await dc?.resume(dom.domid).catch((e: unknown) => say(`resume failed: ${String(e)}`));
      return 1;
    };
    if (!(await send(`config name=${dom.name} memory=${memKb}\n`))) return await failedResume();
    for (let round = 1; round <= 3; round++) {
      await sleep(Math.round((ROUND_MS * (4 - round)) / 3));
      if (!(await send(`round ${round}\n`))) return await failedResume();
    }
    try {
      await dc.suspend(dom.domid, { ackTimeoutMs: SUSPEND_TIMEOUT_MS, suspendTimeoutMs: SUSPEND_TIMEOUT_MS });
      suspended = true;
    } catch (err) {
      say(
        `migration sender: libxl_domain_suspend failed (rc=-8): ${err instanceof Error ? err.message : String(err)}`,
      );
      await reap();
      say('Migration failed, failed to suspend at sender.');
      return 1;
    }
    await sleep(LAST_ROUND_MS);
    if (!(await send('round final\nend\n'))) return await failedResume();
    if ((await lines.next()) !== 'ready') return await failedResume();
    say('migration sender: Target has acknowledged transfer.');
    await xs.write(`/local/domain/${dom.domid}/name`, `${dom.name}--migratedaway`);
    await sleep(ACK_DELAY_MS);
    // Point of no return: as soon as we have tried to say "go" to the receiver.
    say('migration sender: Giving target permission to start.');
    const badly = (): number => {
      say('** Migration failed during final handshake **');
      say('Domain state is now undefined !');
      say('Please CHECK AT BOTH ENDS for running instances, before renaming and');
      say(' resuming at most one instance.');
      return 1;
    };
    if (!(await send('go\n'))) return badly();
    const report = await lines.next();
    if (report === undefined) return badly();
    if (report !== 'report 0') {
      say(`migration sender: Target reports startup failure (status code ${report.slice(7)}).`);
      await xs.write(`/local/domain/${dom.domid}/name`, dom.name);
      return await failedResume();
    }
    say('migration sender: Target reports successful startup.');
    await reap();
    await sleep(TEARDOWN_MS);
    await destroyDomain(xs, env['XEN_SIM_STATE'] ?? '', dom.domid);
    // The priority the removal ran at (a test reads it: devmigrate migrate lowers it).
    if (env['SIM_XL_NICE_FILE']) await writeFile(env['SIM_XL_NICE_FILE'], `${getPriority()}\n`);
    say('Migration successful.');
    return 0;
  } finally {
    await dc?.close().catch(() => undefined);
    await xs.close().catch(() => undefined);
  }
}

async function migrateReceive(args: string[]): Promise<number> {
  const paused = args.includes('-p');
  const host = hostHere() ?? 'localhost';
  say('migration target: Ready to receive domain.');
  process.stdout.write(`${BANNER}\n`);
  const lines = new LineReader(process.stdin);
  let name = '';
  let memoryKb = 0;
  for (;;) {
    const l = await lines.next();
    if (l === undefined) {
      say('migration target: Domain creation failed (code -3).');
      return 1;
    }
    const m = /^config name=(\S+) memory=([0-9]+)$/.exec(l);
    if (m !== null) {
      name = m[1] ?? '';
      memoryKb = Number(m[2]);
    }
    if (l === 'end') break;
  }
  say('migration target: Transfer complete, requesting permission to start domain.');
  process.stdout.write('ready\n');
  if ((await lines.next()) !== 'go') {
    // No permission: our copy is discarded (xl: perhaps_destroy_notify_rc).
    say('migration target: Failure, destroying our copy.');
    return 1;
  }
  say('migration target: Got permission, starting domain.');
  const guests = (await readRemote(host)).filter((g) => g.name !== name);
  guests.push({ name, memoryKb, state: paused ? 'paused' : 'running' });
  await writeRemote(host, guests);
  say('migration target: Domain started successsfully.');
  process.stdout.write('report 0\n');
  return 0;
}

async function unpause(args: string[]): Promise<number> {
  const spec = args[0];
  if (spec === undefined) {
    say('Usage: xl unpause <Domain>');
    return 2;
  }
  const host = hostHere();
  if (host !== undefined) {
    const guests = await readRemote(host);
    const g = guests.find((x) => x.name === spec);
    if (g === undefined) {
      say(`${spec} is an invalid domain identifier (rc=-6)`);
      return 1;
    }
    g.state = 'running';
    await writeRemote(host, guests);
    return 0;
  }
  const xs = await connectXenStore({ timeoutMs: 10_000 });
  try {
    const dom = await findDomain(xs, spec);
    if (dom === undefined) {
      say(`${spec} is an invalid domain identifier (rc=-6)`);
      return 1;
    }
    const dc = createDomainControl({ xenstore: xs });
    try {
      await dc.unpause(dom.domid);
    } finally {
      await dc.close();
    }
    return 0;
  } finally {
    await xs.close();
  }
}

async function list(args: string[]): Promise<number> {
  const want = args.find((a) => !a.startsWith('-'));
  const rows: string[][] = [['Name', 'ID', 'Mem', 'VCPUs', 'State', 'Time(s)']];
  const host = hostHere();
  if (host !== undefined) {
    for (const g of await readRemote(host)) {
      if (want !== undefined && g.name !== want) continue;
      rows.push([
        g.name,
        '-',
        String(Math.round(g.memoryKb / 1024)),
        '1',
        g.state === 'paused' ? '--p---' : 'r-----',
        '0.0',
      ]);
    }
  } else {
    const xs = await connectXenStore({ timeoutMs: 10_000 });
    const dc = createDomainControl({ xenstore: xs });
    try {
      for (const id of await xs.directory('/local/domain')) {
        const name = (await xs.tryRead(`/local/domain/${id}/name`)) ?? '';
        if (want !== undefined && name !== want && id !== want) continue;
        const info = await dc.info(Number(id)).catch(() => undefined);
        const mem = Number((await xs.tryRead(`/local/domain/${id}/memory/target`)) ?? '0');
        const st =
          info === undefined
            ? '------'
            : `${!info.paused && !info.shutdown ? 'r' : '-'}-${info.paused ? 'p' : '-'}${info.shutdown ? 's' : '-'}${info.shutdownReason === 'crash' ? 'c' : '-'}${info.dying ? 'd' : '-'}`;
        rows.push([name, id, String(Math.round(mem / 1024)), '1', st, '0.0']);
      }
    } finally {
      await dc.close().catch(() => undefined);
      await xs.close();
    }
  }
  if (want !== undefined && rows.length === 1) {
    say(`${want} is an invalid domain identifier (rc=-6)`);
    return 1;
  }
  const w = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const r of rows)
    process.stdout.write(
      `${r
        .map((c, i) => c.padEnd(w[i] ?? 0))
        .join('  ')
        .trimEnd()}\n`,
    );
  return 0;
}

export async function simXlMain(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'migrate':
      return migrate(rest);
    case 'migrate-receive':
      return migrateReceive(rest);
    case 'unpause':
      return unpause(rest);
    case 'list':
      return list(rest);
    default:
      say(`sim xl: ${cmd ?? '(no command)'}: not simulated here (migrate, migrate-receive, unpause, list)`);
      return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  simXlMain(process.argv.slice(2)).then(
    (rc) => process.exit(rc),
    (err: unknown) => {
      say(`sim xl: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
