// Devices of the fault model: each operation succeeds, fails, is slow or hangs (ignoring its
// signal) as the schedule decided; "tool" devices run a simulated process for each mutating
// operation, recorded through the engine's trackProcess, that outlives a crashed agent (as a
// real external tool does outside systemd). The world's process table is the engine's.
import type {
  DeviceMigrator,
  DeviceMigratorFactory,
  OpContext,
  Phase,
  ToolTracking,
} from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import { TOOL_TOKEN_ENV, type ProcessInfo, type ProcessTable } from '../../src/migration/tool-processes.js';
import type { Dispatcher, Owner } from '../sim/dispatch.js';

export type OpName = Phase | 'recover';
export interface OpPlan {
  outcome: 'ok' | 'fail' | 'hang';
  ms: number;
  /** A hanging op that ignores its signal (a wedged tool) never settles. */
  honoursSignal: boolean;
}
export interface DevicePlan {
  type: string;
  devid: string;
  /** tool: each mutating op runs a (simulated) process. */
  tool: boolean;
  ops: Record<OpName, OpPlan>;
}

interface Proc {
  pid: number;
  /** The tool token in its environment. */
  token: string | undefined;
  startTicks: string;
  device: string;
  gen: string;
  alive: boolean;
  /** Ignores SIGTERM (needs SIGKILL). */
  stubborn: boolean;
}

/** The world's process table (ProcessTable for the engine) and a log of its tool processes. */
export class FakeProcesses implements ProcessTable {
  readonly procs = new Map<number, Proc>();
  private nextPid = 4000;
  constructor(private readonly dispatch: Dispatcher) {}
  bootId(): string {
    return '0f0f0f0f-0000-4000-8000-000000000001';
  }
  info(pid: number): ProcessInfo | undefined {
    const p = this.procs.get(pid);
    return p === undefined || !p.alive
      ? undefined
      : { pid, pgrp: pid, startTicks: p.startTicks, zombie: false };
  }
  members(pgid: number): ProcessInfo[] {
    const p = this.info(pgid);
    return p === undefined ? [] : [p];
  }
  withToken(token: string): ProcessInfo[] {
    return [...this.procs.values()].flatMap((p) =>
      p.alive && p.token === token ? (this.info(p.pid) ?? []) : [],
    );
  }
  signal(pid: number, signal: NodeJS.Signals): boolean {
    const p = this.procs.get(pid);
    if (p === undefined || !p.alive) return false;
    if (signal === 'SIGKILL' || !p.stubborn) p.alive = false;
    return true;
  }
  spawn(device: string, gen: string, stubborn: boolean, token: string | undefined): Proc {
    const pid = this.nextPid++;
    const p: Proc = {
      pid,
      token,
      startTicks: String(Math.floor(this.dispatch.now())),
      device,
      gen,
      alive: true,
      stubborn,
    };
    this.procs.set(pid, p);
    return p;
  }
  /** Tool processes of a device still running. */
  running(device: string): Proc[] {
    return [...this.procs.values()].filter((p) => p.alive && p.device === device);
  }
}

export interface DeviceRecord {
  /** Mutating ops started, by generation. */
  started: { gen: string; op: OpName; at: number }[];
  /** Recover calls and how they ended (undefined while running). */
  recovers: { gen: string; at: number; ok?: boolean }[];
}

export interface FuzzDeviceWorld {
  dispatch: Dispatcher;
  processes: FakeProcesses;
  /** By "domid/type/devid". */
  records: Map<string, DeviceRecord>;
  violation(what: string): void;
}

/** The registry factory of one device type for one agent generation. */
export function fuzzFactory(
  world: FuzzDeviceWorld,
  gen: Owner,
  plans: ReadonlyMap<string, DevicePlan>,
  killGraceMs: number,
): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: (dev): DeviceMigrator => {
      const key = `${dev.domid}/${dev.type}/${dev.devid}`;
      const plan = plans.get(key);
      const rec = world.records.get(key) ?? { started: [], recovers: [] };
      world.records.set(key, rec);
      const run = async (op: OpName, ctx: OpContext): Promise<void> => {
        const p = plan?.ops[op] ?? { outcome: 'ok', ms: 0, honoursSignal: true };
        if (op !== 'test' && op !== 'recover')
          rec.started.push({ gen: gen.name, op, at: world.dispatch.now() });
        let proc: Proc | undefined;
        let tracking: ToolTracking | undefined;
        if (plan?.tool === true && op !== 'test') {
          // As runTool: recorded before it runs, then spawned in its own group.
          tracking = await ctx.toolProcess?.();
          proc = world.processes.spawn(
            key,
            gen.name,
            p.outcome === 'hang' && !p.honoursSignal,
            tracking?.env[TOOL_TOKEN_ENV],
          );
          tracking?.spawned(proc.pid);
        }
        return new Promise<void>((resolve, reject) => {
          let settled = false;
          const end = (err?: Error): void => {
            if (settled) return;
            settled = true;
            if (proc !== undefined) proc.alive = false;
            tracking?.ended();
            if (err === undefined) resolve();
            else reject(err);
          };
          if (p.outcome !== 'hang') {
            world.dispatch.post(gen, p.ms, () => {
              // A killed tool process ends its op with a failure, as runTool reports a signal.
              if (proc !== undefined && !proc.alive) end(new DeviceOpError(`${op}: killed`));
              else if (p.outcome === 'fail') end(new DeviceOpError(`${op} refused by the fault model`));
              else end();
            });
          }
          if (p.honoursSignal) {
            const onAbort = (): void => {
              // As runTool: SIGTERM to the group, SIGKILL after the grace, then the op ends.
              if (proc !== undefined) world.processes.signal(proc.pid, 'SIGTERM');
              world.dispatch.post(gen, Math.min(killGraceMs, 50), () => {
                if (proc !== undefined) world.processes.signal(proc.pid, 'SIGKILL');
                end(new DeviceOpError(`${op}: aborted`));
              });
            };
            if (ctx.signal.aborted) onAbort();
            else ctx.signal.addEventListener('abort', onAbort, { once: true });
          }
        });
      };
      const mutating = (op: Phase) => (ctx: OpContext) => run(op, ctx);
      return {
        policy: plan?.tool === true ? 'external:/fuzz/tool' : 'fuzz',
        test: async (ctx) => {
          try {
            await run('test', ctx);
            return { ok: true };
          } catch (err) {
            return { ok: false, reason: (err as Error).message };
          }
        },
        preSuspend: mutating('preSuspend'),
        postSuspend: mutating('postSuspend'),
        sync: mutating('sync'),
        recover: async (ctx) => {
          // The promise of bug 6: no tool of this device (a crashed predecessor's or a lingering
          // one) runs when the device is recovered.
          const left = world.processes.running(key);
          if (left.length > 0)
            world.violation(
              `recover of ${key} by ${gen.name} while tool process(es) ${left.map((x) => `${x.pid} of ${x.gen}`).join(', ')} still run`,
            );
          const r: DeviceRecord['recovers'][number] = { gen: gen.name, at: world.dispatch.now() };
          rec.recovers.push(r);
          try {
            await run('recover', ctx);
            r.ok = true;
          } catch (err) {
            r.ok = false;
            throw err;
          }
        },
      };
    },
  };
}
