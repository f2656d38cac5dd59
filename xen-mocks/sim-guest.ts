// A simulated PV guest: speaks XenStore AS domain N through the harness's ring bridge, writes its
// frontend nodes as Linux does, and answers control/shutdown "suspend" like Linux's manage.c
// (ack with "", then SCHEDOP_shutdown(SHUTDOWN_suspend), here xc_domain_shutdown on the
// simulated hypervisor). Misbehaviour modes make the failure paths of the toolstack testable.
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { SHUTDOWN_CODE, errnoName, loadLibxenctrl } from '../native-bindings/libxenctrl.js';
import type { LibxenctrlBinding, NativeResult, XcHandle } from '../native-bindings/libxenctrl.js';
import { connectXenStore } from '../src/xenstore/index.js';
import type { Watch, XenStore } from '../src/xenstore/types.js';

export const SIM_GUEST_MODES = ['normal', 'never-ack', 'ack-no-suspend', 'die', 'crash', 'slow-ack'] as const;
/**
 * normal: ack, then suspend at once. never-ack: ignores the request. ack-no-suspend: acks and
 * keeps running. die: acks, then the domain is destroyed (as if it crashed and was reaped).
 * crash: acks, then shuts down with SHUTDOWN_crash. slow-ack: acks after slowAckMs, then suspends.
 */
export type SimGuestMode = (typeof SIM_GUEST_MODES)[number];

export interface SimGuestOptions {
  domid: number;
  /** The ring bridge's unix socket for this domain (a connection there is domain N). */
  socket: string;
  /** The simulated hypervisor's state folder ($XEN_SIM_STATE). */
  stateDir: string;
  /** libxenctrl-sim.so; default $DEVMIGRATE_LIBXENCTRL. */
  libxenctrlPath?: string;
  mode?: SimGuestMode;
  /** Delay of the ack in slow-ack mode. Default 2000 ms. */
  slowAckMs?: number;
  /** What to write to control/feature-suspend: Linux writes "1"; null leaves it alone. */
  featureSuspend?: '0' | '1' | '' | null;
  /** Connect the frontends found under device/ (write ring-ref, event-channel, state 4). Default true. */
  connectFrontends?: boolean;
  /** Called (performance.now()) as the guest stops running: just before its SCHEDOP_shutdown(suspend). */
  onSuspend?: (atMs: number) => void;
  log?: (msg: string) => void;
}

export interface SimGuest {
  readonly domid: number;
  readonly mode: SimGuestMode;
  /** How many suspend requests the guest has seen / acked / carried out. */
  readonly stats: { requests: number; acks: number; suspends: number };
  /** Resolves with the next handled request's outcome (for tests); rejects after timeoutMs. */
  nextRequest(timeoutMs: number): Promise<'acked' | 'ignored'>;
  close(): Promise<void>;
}

/** Frontend nodes a Linux frontend writes before switching to Connected, per device type. */
function frontendNodes(type: string, devid: string): Record<string, string> {
  const n = Number.parseInt(devid, 10) || 0;
  switch (type) {
    case 'vbd':
      return {
        'ring-ref': String(8 + n),
        'event-channel': String(10 + n),
        protocol: 'x86_64-abi',
        'feature-persistent': '1',
      };
    case 'vif':
      return {
        'tx-ring-ref': String(32 + 2 * n),
        'rx-ring-ref': String(33 + 2 * n),
        'event-channel': String(20 + n),
        'request-rx-copy': '1',
        'feature-rx-notify': '1',
        'feature-sg': '1',
        'feature-gso-tcpv4': '1',
      };
    case 'vtpm':
      return { 'ring-ref': String(64 + n), 'event-channel': String(40 + n) };
    case 'vusb':
      return {
        'urb-ring-ref': String(72 + n),
        'conn-ring-ref': String(73 + n),
        'event-channel': String(50 + n),
      };
    default:
      return { 'ring-ref': String(96 + n), 'event-channel': String(60 + n) };
  }
}

/** Longest close() waits for each of UNWATCH and the connection close. */
const CLOSE_STEP_MS = 500;

async function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => undefined),
    new Promise<void>((resolve) => {
      t = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(t);
}

function check(r: NativeResult, what: string): void {
  if (r.ret < 0) throw new Error(`${what} failed: ${errnoName(r.errno)}`);
}

export async function startSimGuest(opts: SimGuestOptions): Promise<SimGuest> {
  const mode = opts.mode ?? 'normal';
  const log = opts.log ?? (() => undefined);
  const dom = `/local/domain/${opts.domid}`;
  const shutdownPath = `${dom}/control/shutdown`;
  // The simulated libxenctrl finds its hypervisor through this variable (getenv at each call).
  process.env.XEN_SIM_STATE = opts.stateDir;
  const xc: LibxenctrlBinding = loadLibxenctrl(
    opts.libxenctrlPath !== undefined ? { path: opts.libxenctrlPath } : {},
  );
  const opened = xc.interfaceOpen();
  if (opened.handle === null) throw new Error(`xc_interface_open failed: ${errnoName(opened.errno)}`);
  const xch: XcHandle = opened.handle;

  let xs: XenStore | undefined;
  let watch: Watch | undefined;
  const timers = new Set<NodeJS.Timeout>();
  const waiters: ((v: 'acked' | 'ignored') => void)[] = [];
  const stats = { requests: 0, acks: 0, suspends: 0 };
  let closed = false;
  let busy = false;
  /** Set once the domain is destroyed: xenstored no longer serves its ring, so no UNWATCH on close. */
  let dead = false;

  const settle = (v: 'acked' | 'ignored'): void => {
    for (const w of waiters.splice(0)) w(v);
  };
  const later = (ms: number, fn: () => void): void => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };

  try {
    xs = await connectXenStore({ path: opts.socket, timeoutMs: 10_000 });
    const conn = xs;
    if (opts.featureSuspend !== null) {
      // Linux (drivers/xen/manage.c) advertises each handler it has; the parent is dom0's, the node ours.
      await conn.write(`${dom}/control/feature-suspend`, opts.featureSuspend ?? '1').catch((err: unknown) => {
        log(`cannot write feature-suspend: ${String(err)}`);
      });
    }
    if (opts.connectFrontends ?? true) {
      const types = await conn.directory(`${dom}/device`).catch(() => [] as string[]);
      for (const type of types) {
        if (type === 'suspend') continue;
        const ids = await conn.directory(`${dom}/device/${type}`).catch(() => [] as string[]);
        for (const id of ids) {
          const fe = `${dom}/device/${type}/${id}`;
          await conn.transaction(async (tx) => {
            for (const [k, v] of Object.entries(frontendNodes(type, id))) await tx.write(`${fe}/${k}`, v);
            await tx.write(`${fe}/state`, '4');
          });
        }
      }
    }

    const suspendSelf = async (reason: number): Promise<void> => {
      check(await xc.shutdown(xch, opts.domid, reason), 'xc_domain_shutdown');
    };
    const carryOut = async (): Promise<void> => {
      if (mode === 'ack-no-suspend') return;
      if (mode === 'die') {
        if (xc.destroy === undefined) throw new Error('libxenctrl has no xc_domain_destroy');
        dead = true;
        check(await xc.destroy(xch, opts.domid), 'xc_domain_destroy');
        return;
      }
      // Counted before the hypercall: the toolstack may see the suspend before this call returns.
      if (mode !== 'crash') {
        stats.suspends++;
        opts.onSuspend?.(performance.now());
      }
      await suspendSelf(mode === 'crash' ? SHUTDOWN_CODE.crash : SHUTDOWN_CODE.suspend);
    };
    /** control/shutdown as this guest last read it: one request is one change to "suspend". */
    let lastSeen: string | undefined;
    const ack = async (): Promise<void> => {
      // Linux acks inside a transaction that re-reads the request (manage.c shutdown_handler).
      const acked = await conn.transaction(async (tx) => {
        const v = await tx.tryRead(shutdownPath);
        if (v !== 'suspend') return false;
        await tx.write(shutdownPath, '');
        return true;
      });
      lastSeen = acked ? '' : lastSeen;
      if (!acked) {
        settle('ignored');
        return;
      }
      stats.acks++;
      settle('acked');
      await carryOut();
    };
    const onRequest = async (): Promise<void> => {
      if (closed || busy) return;
      const v = await conn.tryRead(shutdownPath);
      const again = lastSeen === 'suspend';
      lastSeen = v;
      // The watch's first event and the event of the write itself may both read the one request.
      if (v !== 'suspend' || again) return;
      busy = true;
      stats.requests++;
      log(`domain ${opts.domid}: suspend requested (mode ${mode})`);
      try {
        if (mode === 'never-ack') {
          settle('ignored');
          return;
        }
        if (mode === 'slow-ack') {
          await new Promise<void>((resolve) => later(opts.slowAckMs ?? 2000, resolve));
          if (closed) return;
        }
        await ack();
      } finally {
        busy = false;
      }
    };
    watch = await conn.watch(shutdownPath, {
      onEvent: () => {
        onRequest().catch((err: unknown) => {
          if (!closed) log(`domain ${opts.domid}: ${String(err)}`);
        });
      },
      onError: (err) => {
        if (!closed) log(`domain ${opts.domid}: xenstore lost: ${err.message}`);
      },
    });
  } catch (err) {
    await xs?.close().catch(() => undefined);
    await xc.interfaceClose(xch);
    throw err;
  }

  const conn = xs;
  const w = watch;
  return {
    domid: opts.domid,
    mode,
    stats,
    nextRequest(timeoutMs: number) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no suspend request within ${timeoutMs} ms`)), timeoutMs);
        waiters.push((v) => {
          clearTimeout(t);
          resolve(v);
        });
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      // The ring may be dead (domain destroyed, xenstored restarted): never wait long for UNWATCH.
      if (!dead && conn.connected) await bounded(w.close(), CLOSE_STEP_MS);
      await bounded(conn.close(), CLOSE_STEP_MS);
      await xc.interfaceClose(xch);
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      domid: { type: 'string' },
      socket: { type: 'string' },
      state: { type: 'string' },
      mode: { type: 'string', default: 'normal' },
      libxenctrl: { type: 'string' },
      'slow-ack-ms': { type: 'string' },
      'feature-suspend': { type: 'string' },
    },
  });
  const domid = Number(values.domid);
  const mode = values.mode as SimGuestMode;
  if (!Number.isInteger(domid) || domid <= 0 || values.socket === undefined || values.state === undefined) {
    throw new Error(
      'usage: sim-guest --domid N --socket <bridge socket> --state <dir> [--mode m] [--libxenctrl so]',
    );
  }
  if (!(SIM_GUEST_MODES as readonly string[]).includes(mode)) throw new Error(`unknown mode ${mode}`);
  const fs = values['feature-suspend'];
  const guest = await startSimGuest({
    domid,
    socket: values.socket,
    stateDir: values.state,
    mode,
    ...(values.libxenctrl !== undefined ? { libxenctrlPath: values.libxenctrl } : {}),
    ...(values['slow-ack-ms'] !== undefined ? { slowAckMs: Number(values['slow-ack-ms']) } : {}),
    ...(fs === '0' || fs === '1' || fs === ''
      ? { featureSuspend: fs }
      : fs === 'none'
        ? { featureSuspend: null }
        : {}),
    log: (m) => process.stderr.write(`sim-guest: ${m}\n`),
  });
  process.stdout.write('ready\n');
  const stop = (): void => {
    void guest.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`sim-guest: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
