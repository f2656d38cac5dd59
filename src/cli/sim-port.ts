// What `devmigrate sim` and `devmigrate demo` need from the simulated host, and where they find
// it. The simulated host is the test world (xen-mocks/), not part of the product: it is loaded at
// run time from the source tree next to this program, so that an installed package (which does
// not ship it) simply says it is not there instead of failing to start.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CliError, ExitCode } from './exit-codes.js';
import type { SimEnv } from './sim-files.js';

export interface SimGuestSummary {
  domid: number;
  name: string;
  /** Device kinds, in the description's order. */
  devices: string[];
  simMode?: string;
}

export interface RunningSimPort {
  readonly env: SimEnv;
  readonly guestsInfo: readonly SimGuestSummary[];
  readonly xenstoredPid: number;
  readonly socketPath: string;
  /** Running and not paused in the simulated hypervisor. */
  domainRunning(domid: number): Promise<boolean>;
  stop(): Promise<void>;
}

export interface SimKitPort {
  /** Lays out a simulated host in `simDir` (xenstored, guests, stand-in xl, images, config) and starts it here. */
  startSimHost(opts: {
    simDir: string;
    hostFile?: string;
    log?: (m: string) => void;
    /** The stand-in xl's timings (SIM_XL_ROUND_MS, SIM_XL_SUSPEND_TIMEOUT_MS). */
    xlTimings?: Record<string, string>;
  }): Promise<RunningSimPort>;
  /** The supervisor behind `sim up` (hidden command `sim serve`); resolves with its exit code. */
  serve(opts: { dir: string; host?: string; agentArgv?: string[] }): Promise<number>;
  defaultHostFile(): string;
  demoHostFile(): string;
}

/** dist/xen-mocks/sim-kit.js from dist/src/cli/; xen-mocks/sim-kit.ts from src/cli/ (tests). */
function kitCandidates(): URL[] {
  return [
    new URL('../../xen-mocks/sim-kit.js', import.meta.url),
    new URL('../../xen-mocks/sim-kit.ts', import.meta.url),
  ];
}

function isKit(v: unknown): v is SimKitPort {
  if (typeof v !== 'object' || v === null) return false;
  const k = v as Record<string, unknown>;
  return ['startSimHost', 'serve', 'defaultHostFile', 'demoHostFile'].every(
    (f) => typeof k[f] === 'function',
  );
}

export async function loadSimKit(): Promise<SimKitPort> {
  for (const url of kitCandidates()) {
    const file = fileURLToPath(url);
    if (!existsSync(file)) continue;
    const mod: unknown = await import(pathToFileURL(file).href);
    const kit = (mod as { simKit?: unknown }).simKit;
    if (isKit(kit)) return kit;
    throw new CliError(`${file} is not the simulated host kit this devmigrate expects`, ExitCode.SOFTWARE);
  }
  throw new CliError(
    'the simulated host (xen-mocks) is not installed with this devmigrate',
    ExitCode.FAILURE,
    [
      'it is part of the source tree: git clone, npm ci && npm run build, then node dist/src/cli/main.js sim up --dir DIR',
    ],
  );
}
