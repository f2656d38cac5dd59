// The supervisor behind `devmigrate sim up` (hidden command `sim serve`): runs the real
// xenstored under the xen-mocks harness, lays out the described host, boots the simulated guest
// kernels, writes the environment file, and tears everything down on SIGTERM/SIGINT.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startXenstored, type XenstoredHarness } from '../../../xen-mocks/harness.js';
import {
  createSimHost,
  loadHostDescription,
  type HostDescription,
  type SimHost,
} from '../../../xen-mocks/sim-host.js';
import { SIM_GUEST_MODES, type SimGuest, type SimGuestMode } from '../../../xen-mocks/sim-guest.js';
import { mocksDir } from '../../../xen-mocks/paths.js';
import { SIM_FILES, type SimEnv } from '../sim-files.js';

/** A host file may give each guest a misbehaviour of the simulated kernel (default normal). */
export type SimGuestExtras = { simMode?: SimGuestMode; simBoot?: boolean };

export function defaultHostFile(): string {
  return join(mocksDir(), 'hosts', 'example-host.json');
}

/** The environment `sim up` prints: what devmigrate and xenstore-utils need to use this host. */
export function simEnv(h: XenstoredHarness): SimEnv {
  const pick = (k: string): string => h.env[k] ?? '';
  return {
    XENSTORED_PATH: h.socketPath,
    XEN_SIM_STATE: pick('XEN_SIM_STATE'),
    DEVMIGRATE_LIBXENCTRL: pick('DEVMIGRATE_LIBXENCTRL'),
    DEVMIGRATE_LIBXENGUEST: pick('DEVMIGRATE_LIBXENGUEST'),
  };
}

export interface RunningSim {
  harness: XenstoredHarness;
  host: SimHost;
  guests: SimGuest[];
  env: SimEnv;
  desc: HostDescription;
  stop(): Promise<void>;
}

/** Starts xenstored + host + guest kernels in this process (the demo uses it directly too). */
export async function startSim(opts: {
  dir?: string;
  hostFile?: string;
  desc?: HostDescription;
  log?: (m: string) => void;
}): Promise<RunningSim> {
  const desc = opts.desc ?? (await loadHostDescription(opts.hostFile ?? defaultHostFile()));
  const harness = await startXenstored(opts.dir !== undefined ? { dir: opts.dir } : {});
  const guests: SimGuest[] = [];
  let host: SimHost | undefined;
  try {
    host = await createSimHost(harness, desc);
    for (const g of desc.guests as (HostDescription['guests'][number] & SimGuestExtras)[]) {
      if (g.simBoot === false) continue;
      const mode = g.simMode ?? 'normal';
      if (!SIM_GUEST_MODES.includes(mode))
        throw new Error(`guest ${g.name}: unknown simMode ${JSON.stringify(mode)}`);
      guests.push(await host.guest(g.domid).boot({ mode, log: opts.log }));
    }
  } catch (err) {
    await host?.close().catch(() => undefined);
    await harness.stop().catch(() => undefined);
    throw err;
  }
  const h = host;
  return {
    harness,
    host: h,
    guests,
    env: simEnv(harness),
    desc,
    stop: async () => {
      await h.close().catch(() => undefined);
      await harness.stop();
    },
  };
}

export async function simServe(args: { dir: string; host?: string }): Promise<number> {
  const dir = resolve(args.dir);
  const log = (m: string): void => void process.stdout.write(`${new Date().toISOString()} ${m}\n`);
  await writeFile(join(dir, SIM_FILES.pid), `${process.pid}\n`);
  let sim: RunningSim;
  try {
    sim = await startSim({ dir: join(dir, SIM_FILES.xenstored), hostFile: args.host, log });
  } catch (err) {
    log(`start failed: ${err instanceof Error ? err.message : String(err)}`);
    await rm(join(dir, SIM_FILES.pid), { force: true });
    return 1;
  }
  await writeFile(join(dir, SIM_FILES.env), `${JSON.stringify(sim.env, null, 1)}\n`);
  await writeFile(join(dir, SIM_FILES.ready), `${new Date().toISOString()}\n`);
  log(
    `simulated host up: ${sim.desc.guests.map((g) => `${g.name}(${g.domid})`).join(' ')}; xenstored pid ${sim.harness.pid}`,
  );
  const sig = await new Promise<string>((res) => {
    process.once('SIGTERM', () => res('SIGTERM'));
    process.once('SIGINT', () => res('SIGINT'));
  });
  log(`${sig}: stopping the simulated host`);
  await sim.stop().catch((err: unknown) => log(`stop: ${String(err)}`));
  for (const f of [SIM_FILES.env, SIM_FILES.ready, SIM_FILES.pid]) await rm(join(dir, f), { force: true });
  return 0;
}

/** Where the CLI entry point is (the supervisor re-runs it). */
export function cliEntry(): string {
  return fileURLToPath(new URL('../main.js', import.meta.url));
}

export async function readSimEnv(dir: string): Promise<SimEnv> {
  return JSON.parse(await readFile(join(resolve(dir), SIM_FILES.env), 'utf8')) as SimEnv;
}
