// One simulated host for the engine's tests and its fault model: the simulated store and
// hypervisor, guest kernels, backend devices laid out as libxl does, a requester, and agent
// generations (engine + the real XenDomainControl on the simulated hypervisor) that can crash at
// any point and be started again on the same store, as a restarted dom0 agent is.
import type { DevMigrateConfig } from '../../src/config/schema.js';
import { createDomainControl, type XenDomainControl } from '../../src/domains/domain-control.js';
import type { DeviceRegistry } from '../../src/devices/registry.js';
import type { Logger } from '../../src/devices/types.js';
import { MigrationEngine, type EngineOptions } from '../../src/migration/engine.js';
import type { Perm } from '../../src/xenstore/types.js';
import { owner, realDispatcher, type Dispatcher, type Owner } from './dispatch.js';
import { SimGuest, type GuestBehaviour } from './sim-guests.js';
import { SimHypervisor } from './sim-hypervisor.js';
import { SimStore, type SimConnection } from './sim-store.js';

export const DOM0_ONLY: Perm[] = [{ domid: 0, access: 'n' }];
export const jobNode = (key: number | string, node: string): string => `/tool/devmigrate/jobs/${key}/${node}`;

export interface AgentGeneration {
  readonly gen: number;
  readonly who: Owner;
  readonly xs: SimConnection;
  readonly domainXs: SimConnection;
  readonly domains: XenDomainControl;
  readonly engine: MigrationEngine;
}

export const silentLog: Logger = {
  error: () => undefined,
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};

export class SimWorld {
  readonly store: SimStore;
  readonly hv: SimHypervisor;
  readonly guests = new Map<number, SimGuest>();
  readonly requester: SimConnection;
  private gens = 0;
  private current: Owner | undefined;
  agent: AgentGeneration | undefined;

  constructor(readonly dispatch: Dispatcher = realDispatcher) {
    this.store = new SimStore(dispatch);
    this.hv = new SimHypervisor(this.store);
    this.store.put('/local', '', [{ domid: 0, access: 'r' }]);
    this.store.put('/local/domain', '', [{ domid: 0, access: 'r' }]);
    this.store.put('/local/domain/0', '', DOM0_ONLY);
    this.store.put('/tool', '', DOM0_ONLY);
    this.requester = this.store.connect('requester', owner('requester'));
  }

  /** A domain with its guest kernel and `devices` backends (type/devid -> backend nodes), as libxl lays them out. */
  async addDomain(
    domid: number,
    behaviour: GuestBehaviour = { mode: 'normal' },
    devices: Record<string, Record<string, string>> = { 'vbd/51712': { params: '/x' } },
    opts: { hvm?: boolean; pvDrivers?: boolean } = {},
  ): Promise<SimGuest> {
    this.hv.add(domid, opts);
    for (const [dev, nodes] of Object.entries(devices)) {
      const [type, devid] = dev.split('/');
      const base = `/local/domain/0/backend/${type}/${domid}/${devid}`;
      this.store.put(base, '', DOM0_ONLY);
      for (const [k, v] of Object.entries(nodes)) this.store.put(`${base}/${k}`, v, DOM0_ONLY);
    }
    const g = new SimGuest(this.store, this.hv, domid, behaviour);
    this.guests.set(domid, g);
    await g.start();
    return g;
  }

  /** Starts a new agent generation (engine + domain layer) on the store. */
  startAgent(
    config: DevMigrateConfig,
    registry: (config: DevMigrateConfig) => DeviceRegistry,
    extra: Partial<EngineOptions> = {},
  ): Promise<AgentGeneration> {
    return this.startAgentAs(owner(`agent-${this.gens + 1}`), config, registry, extra);
  }

  /** The owner of the current (or last) agent generation. */
  agentOwner(): Owner | undefined {
    return this.current;
  }

  /** As startAgent, with the generation's owner given (its name must be agent-<n>). */
  async startAgentAs(
    who: Owner,
    config: DevMigrateConfig,
    registry: (config: DevMigrateConfig) => DeviceRegistry,
    extra: Partial<EngineOptions> = {},
  ): Promise<AgentGeneration> {
    const gen = ++this.gens;
    this.current = who;
    const xs = this.store.connect(`agent-${gen}`, who);
    const domainXs = this.store.connect(`agent-${gen}-domains`, who);
    const domains = createDomainControl({
      xenstore: domainXs,
      hypervisor: this.hv.handle(who, `agent-${gen}`),
      ackTimeoutMs: config.timeouts.suspendAckMs,
      suspendTimeoutMs: config.timeouts.suspendMs,
      recheckIntervalMs: 1000,
    });
    const engine = new MigrationEngine({
      xs,
      domains,
      config,
      log: silentLog,
      registry: registry(config),
      ...extra,
    });
    const generation = { gen, who, xs, domainXs, domains, engine };
    this.agent = generation;
    await engine.start();
    return generation;
  }

  /** The agent dies where it stands (SIGKILL): its calls hang, its pending work never runs. */
  crashAgent(): void {
    if (this.agent === undefined) return;
    this.agent.who.dead = true;
    this.agent = undefined;
  }

  /** The requester's request, in one transaction as protocol.md asks (dom0-only by default). */
  request(key: number | string, fields: Record<string, string>, perms: Perm[] = DOM0_ONLY): void {
    const base = `/tool/devmigrate/jobs/${key}`;
    this.store.put(base, '', perms);
    this.store.put(`${base}/request`, '', perms);
    for (const [k, v] of Object.entries(fields)) this.store.put(`${base}/request/${k}`, v, perms);
  }
  control(key: number | string, value: string): void {
    this.store.put(jobNode(key, 'control'), value, DOM0_ONLY);
  }
  job(key: number | string, node: string): string | undefined {
    return this.store.value(jobNode(key, node));
  }
}
