// A deterministic in-memory xenstored for the engine's unit tests and its fault model: nodes
// with values and permissions checked as xenstored checks them, subtree and special
// (@releaseDomain) watches, optimistic transactions that conflict (EAGAIN) like xenstored's, one
// connection per client with its own domid, a fault hook per operation and a log of every write.
import { XenStoreDisconnectedError, XenStoreError, XenStoreTimeoutError } from '../../src/xenstore/errors.js';
import type { XsErrno } from '../../src/xenstore/errors.js';
import { runTransaction, type TransactionHandle } from '../../src/xenstore/transaction-retry.js';
import type {
  Access,
  Perm,
  TransactionOptions,
  Watch,
  WatchEvent,
  WatchOptions,
  XenStore,
  XsOps,
} from '../../src/xenstore/types.js';
import { never, realDispatcher, type Dispatcher, type Owner } from './dispatch.js';

interface Node {
  readonly value: string;
  readonly perms: readonly Perm[];
}

export type StoreOp =
  | 'read'
  | 'write'
  | 'mkdir'
  | 'rm'
  | 'directory'
  | 'getPerms'
  | 'setPerms'
  | 'watch'
  | 'unwatch'
  | 'transaction_start'
  | 'transaction_end'
  | 'other';

/** What the fault hook makes of one operation. */
export type StoreFault =
  | { kind: 'ok' }
  /** Answered later (and applied then), as a busy xenstored would. */
  | { kind: 'delay'; ms: number }
  /** Refused: nothing applied. */
  | { kind: 'error'; errno: XsErrno }
  /** The client gives up after ms (XenStoreTimeoutError); the server may or may not have applied it. */
  | { kind: 'timeout'; ms: number; applied: boolean }
  /** The caller's owner dies at this call (the agent crashes at this await). */
  | { kind: 'crash' };

export type FaultHook = (conn: SimConnection, op: StoreOp, path: string | undefined) => StoreFault;

export interface WriteRecord {
  conn: string;
  op: 'write' | 'mkdir' | 'rm' | 'setPerms';
  path: string;
  value?: string;
  at: number;
}

interface Change {
  path: string;
  removed: boolean;
  /** Created by this change: the parent's list of children changed too. */
  created?: boolean;
}

type Mutation =
  | { op: 'write'; path: string; value: string }
  | { op: 'mkdir'; path: string }
  | { op: 'rm'; path: string }
  | { op: 'setPerms'; path: string; perms: Perm[] };

function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

export function accessOf(perms: readonly Perm[], domid: number): Access {
  if (domid === 0) return 'b';
  const first = perms[0];
  if (first === undefined) return 'n';
  if (first.domid === domid) return 'b';
  return (perms.slice(1).find((p) => p.domid === domid) ?? first).access;
}
const canRead = (a: Access): boolean => a === 'r' || a === 'b';
const canWrite = (a: Access): boolean => a === 'w' || a === 'b';

function checkPath(path: string, op: string): void {
  if (!path.startsWith('/') || (path.length > 1 && path.endsWith('/')) || path.includes('//'))
    throw new XenStoreError('EINVAL', op, path);
}

/** Node operations over one map (the store's, or a transaction's private copy); nodes are immutable. */
class NodeTable {
  constructor(readonly nodes: Map<string, Node>) {}

  private node(path: string, op: string): Node {
    const n = this.nodes.get(path);
    if (n === undefined) throw new XenStoreError('ENOENT', op, path);
    return n;
  }
  private nearest(path: string): Node {
    for (let p = path; ; p = parentOf(p)) {
      const n = this.nodes.get(p);
      if (n !== undefined) return n;
      if (p === '/') throw new XenStoreError('ENOENT', 'lookup', path);
    }
  }

  read(domid: number, path: string): string {
    checkPath(path, 'READ');
    const n = this.node(path, 'READ');
    if (!canRead(accessOf(n.perms, domid))) throw new XenStoreError('EACCES', 'READ', path);
    return n.value;
  }
  directory(domid: number, path: string): string[] {
    checkPath(path, 'DIRECTORY');
    const n = this.node(path, 'DIRECTORY');
    if (!canRead(accessOf(n.perms, domid))) throw new XenStoreError('EACCES', 'DIRECTORY', path);
    const pre = path === '/' ? '/' : `${path}/`;
    const out: string[] = [];
    for (const k of this.nodes.keys()) {
      if (k.startsWith(pre) && k !== path && !k.slice(pre.length).includes('/'))
        out.push(k.slice(pre.length));
    }
    return out;
  }
  getPerms(domid: number, path: string): Perm[] {
    checkPath(path, 'GET_PERMS');
    const n = this.node(path, 'GET_PERMS');
    if (!canRead(accessOf(n.perms, domid))) throw new XenStoreError('EACCES', 'GET_PERMS', path);
    return n.perms.map((p) => ({ ...p }));
  }

  /** Creates path and missing parents (inheriting perms; a guest owns what it creates). */
  private create(domid: number, path: string, op: string, changes: Change[]): void {
    if (this.nodes.has(path)) return;
    const parent = parentOf(path);
    if (!this.nodes.has(parent)) this.create(domid, parent, op, changes);
    const pp = this.node(parent, op).perms;
    if (!canWrite(accessOf(pp, domid))) throw new XenStoreError('EACCES', op, path);
    const perms = domid === 0 ? [...pp] : [{ domid, access: pp[0]?.access ?? 'n' }, ...pp.slice(1)];
    this.nodes.set(path, { value: '', perms });
    changes.push({ path, removed: false, created: true });
  }
  write(domid: number, path: string, value: string): Change[] {
    checkPath(path, 'WRITE');
    const changes: Change[] = [];
    const existing = this.nodes.get(path);
    if (existing !== undefined) {
      if (!canWrite(accessOf(existing.perms, domid))) throw new XenStoreError('EACCES', 'WRITE', path);
    } else {
      if (!canWrite(accessOf(this.nearest(path).perms, domid)))
        throw new XenStoreError('EACCES', 'WRITE', path);
      this.create(domid, path, 'WRITE', changes);
    }
    const n = this.node(path, 'WRITE');
    this.nodes.set(path, { value, perms: n.perms });
    if (!changes.some((c) => c.path === path)) changes.push({ path, removed: false });
    return changes;
  }
  mkdir(domid: number, path: string): Change[] {
    checkPath(path, 'MKDIR');
    const changes: Change[] = [];
    if (this.nodes.has(path)) return changes;
    if (!canWrite(accessOf(this.nearest(path).perms, domid)))
      throw new XenStoreError('EACCES', 'MKDIR', path);
    this.create(domid, path, 'MKDIR', changes);
    return changes;
  }
  rm(domid: number, path: string): Change[] {
    checkPath(path, 'RM');
    const n = this.nodes.get(path);
    if (n === undefined) {
      // xenstored: removing a missing node is fine when its parent exists.
      if (this.nodes.has(parentOf(path))) return [];
      throw new XenStoreError('ENOENT', 'RM', path);
    }
    if (path === '/') throw new XenStoreError('EINVAL', 'RM', path);
    if (!canWrite(accessOf(n.perms, domid))) throw new XenStoreError('EACCES', 'RM', path);
    const changes: Change[] = [];
    for (const k of [...this.nodes.keys()]) {
      if (k === path || k.startsWith(`${path}/`)) {
        this.nodes.delete(k);
        changes.push({ path: k, removed: true });
      }
    }
    return changes;
  }
  setPerms(domid: number, path: string, perms: Perm[]): Change[] {
    checkPath(path, 'SET_PERMS');
    const n = this.node(path, 'SET_PERMS');
    if (domid !== 0 && n.perms[0]?.domid !== domid) throw new XenStoreError('EACCES', 'SET_PERMS', path);
    if (perms.length === 0) throw new XenStoreError('EINVAL', 'SET_PERMS', path);
    this.nodes.set(path, { value: n.value, perms: perms.map((p) => ({ ...p })) });
    return [{ path, removed: false }];
  }
  apply(domid: number, m: Mutation): Change[] {
    switch (m.op) {
      case 'write':
        return this.write(domid, m.path, m.value);
      case 'mkdir':
        return this.mkdir(domid, m.path);
      case 'rm':
        return this.rm(domid, m.path);
      case 'setPerms':
        return this.setPerms(domid, m.path, m.perms);
    }
  }
}

interface WatchEntry {
  conn: SimConnection;
  path: string;
  token: string;
  onEvent: ((ev: WatchEvent) => void) | undefined;
  closed: boolean;
}

interface TxState {
  table: NodeTable;
  startVer: number;
  /** Every path read, listed or changed: a change by someone else since startVer is a conflict. */
  touched: Set<string>;
  mutations: Mutation[];
}

export class SimStore {
  private readonly table = new NodeTable(
    new Map<string, Node>([['/', { value: '', perms: [{ domid: 0, access: 'n' }] }]]),
  );
  private readonly lastMod = new Map<string, number>();
  private ver = 0;
  private watches: WatchEntry[] = [];
  private nextTx = 1;
  private readonly txs = new Map<number, TxState>();
  private nextToken = 1;
  /** Every applied mutation, by connection name. */
  readonly log: WriteRecord[] = [];
  /** Decides each operation's fate (unit tests: none; the fault model: seeded faults). */
  faults: FaultHook | undefined;
  /** Called after each applied mutation (e.g. to check invariants as they happen). */
  onWrite: ((rec: WriteRecord) => void) | undefined;

  constructor(readonly dispatch: Dispatcher = realDispatcher) {}

  get nodes(): ReadonlyMap<string, Node> {
    return this.table.nodes;
  }

  connect(name: string, who: Owner, domid = 0): SimConnection {
    return new SimConnection(this, name, who, domid);
  }

  /** Test set-up: writes a node (and parents) as dom0, with explicit perms if given; fires watches. */
  put(path: string, value: string, perms?: Perm[]): void {
    const changes = this.table.write(0, path, value);
    if (perms !== undefined) changes.push(...this.table.setPerms(0, path, perms));
    this.committed('setup', changes);
  }
  value(path: string): string | undefined {
    return this.table.nodes.get(path)?.value;
  }
  perms(path: string): readonly Perm[] | undefined {
    return this.table.nodes.get(path)?.perms;
  }
  /** Test set-up: removes a subtree as dom0 (fires watches). */
  remove(path: string): void {
    this.committed('setup', this.table.rm(0, path));
  }
  /** Fires a special watch (@releaseDomain, @introduceDomain) as xenstored does. */
  fireSpecial(path: string): void {
    this.fire({ path, removed: false });
  }

  // ---- used by connections ----

  /** @internal */
  direct(conn: SimConnection, m: Mutation): void {
    this.committed(conn.name, this.table.apply(conn.domid, m), m);
  }
  /** @internal */
  read<T>(fn: (t: NodeTable) => T): T {
    return fn(this.table);
  }
  /** @internal */
  beginTx(): number {
    const id = this.nextTx++;
    this.txs.set(id, {
      table: new NodeTable(new Map(this.table.nodes)),
      startVer: this.ver,
      touched: new Set(),
      mutations: [],
    });
    return id;
  }
  /** @internal */
  tx(id: number): TxState {
    const t = this.txs.get(id);
    if (t === undefined) throw new XenStoreError('EINVAL', 'transaction', String(id));
    return t;
  }
  /** @internal Commits (or aborts) a transaction; EAGAIN when something it touched changed since it began. */
  endTx(conn: SimConnection, id: number, commit: boolean): void {
    const t = this.tx(id);
    this.txs.delete(id);
    if (!commit) return;
    for (const p of t.touched) {
      if ((this.lastMod.get(p) ?? 0) > t.startVer) throw new XenStoreError('EAGAIN', 'TRANSACTION_END');
    }
    for (const m of t.mutations) this.committed(conn.name, this.table.apply(conn.domid, m), m);
  }
  /** @internal */
  addWatch(conn: SimConnection, path: string, token: string | undefined, opts: WatchOptions): Watch {
    const entry: WatchEntry = {
      conn,
      path,
      token: token ?? `sim-${this.nextToken++}`,
      onEvent: opts.onEvent,
      closed: false,
    };
    this.watches.push(entry);
    // xenstored fires every new watch once with its own path.
    this.deliver(entry, path);
    return {
      path,
      token: entry.token,
      close: () => {
        entry.closed = true;
        this.watches = this.watches.filter((w) => w !== entry);
        return Promise.resolve();
      },
      [Symbol.asyncIterator]: () => {
        throw new Error('iteration is not supported by the simulated store');
      },
    };
  }
  /** @internal Drops a connection's watches (close or death). */
  dropWatches(conn: SimConnection): void {
    for (const w of this.watches) if (w.conn === conn) w.closed = true;
    this.watches = this.watches.filter((w) => w.conn !== conn);
  }

  private committed(conn: string, changes: Change[], m?: Mutation): void {
    if (m !== undefined) {
      const rec: WriteRecord = { conn, op: m.op, path: m.path, at: this.dispatch.now() };
      if (m.op === 'write') rec.value = m.value;
      this.log.push(rec);
      this.onWrite?.(rec);
    }
    for (const c of changes) {
      this.ver += 1;
      this.lastMod.set(c.path, this.ver);
      // Creating or removing a node changes its parent's list of children.
      if (c.removed || c.created === true) this.lastMod.set(parentOf(c.path), this.ver);
    }
    for (const c of changes) this.fire(c);
  }

  private fire(c: Change): void {
    for (const w of this.watches) {
      let evPath: string | undefined;
      if (c.path.startsWith('@') || w.path.startsWith('@')) evPath = w.path === c.path ? c.path : undefined;
      else if (w.path === c.path || c.path.startsWith(w.path === '/' ? '/' : `${w.path}/`)) evPath = c.path;
      else if (c.removed && w.path.startsWith(`${c.path}/`)) evPath = w.path;
      if (evPath === undefined) continue;
      // A guest sees events only for nodes it may read (or its own removed ones), as in xenstored.
      if (w.conn.domid !== 0 && !c.path.startsWith('@')) {
        const n = this.table.nodes.get(evPath) ?? this.table.nodes.get(parentOf(evPath));
        if (n !== undefined && !canRead(accessOf(n.perms, w.conn.domid))) continue;
      }
      this.deliver(w, evPath);
    }
  }

  private deliver(w: WatchEntry, path: string): void {
    const ev = { path, token: w.token };
    this.dispatch.post(w.conn.who, 0, () => {
      if (!w.closed && w.conn.connected) w.onEvent?.(ev);
    });
  }
}

/** One client connection (a XenStore) as domain `domid`, on behalf of an owner. */
export class SimConnection implements XenStore {
  private open = true;
  /** Operations this connection sent (transaction start/end counted). */
  ops = 0;

  constructor(
    readonly store: SimStore,
    readonly name: string,
    readonly who: Owner,
    readonly domid: number,
  ) {}

  get connected(): boolean {
    return this.open && !this.who.dead;
  }

  /**
   * Runs one operation through the fault hook. `fn` applies it (and returns its answer) when the
   * server handles it: at once, later (delay), or never (error, crash).
   */
  op<T>(op: StoreOp, path: string | undefined, fn: () => T): Promise<T> {
    if (this.who.dead) return never();
    if (!this.open) return Promise.reject(new XenStoreDisconnectedError(`${this.name}: closed`));
    this.ops += 1;
    const fault = this.store.faults?.(this, op, path) ?? { kind: 'ok' };
    const post = (ms: number, f: () => void): void => this.store.dispatch.post(this.who, ms, f);
    switch (fault.kind) {
      case 'crash':
        this.who.dead = true;
        this.store.dropWatches(this);
        return never();
      case 'error':
        return new Promise<T>((_, reject) =>
          post(0, () => reject(new XenStoreError(fault.errno, op.toUpperCase(), path))),
        );
      case 'timeout':
        return new Promise<T>((_, reject) => {
          if (fault.applied) {
            try {
              fn();
            } catch {
              // The reply (an error) was lost too.
            }
          }
          post(fault.ms, () => reject(new XenStoreTimeoutError(op, fault.ms)));
        });
      case 'delay':
        return new Promise<T>((resolve, reject) =>
          post(fault.ms, () => {
            try {
              resolve(fn());
            } catch (err) {
              reject(err as Error);
            }
          }),
        );
      case 'ok':
        try {
          return Promise.resolve(fn());
        } catch (err) {
          return Promise.reject(err as Error);
        }
    }
  }

  private ops0(tx: number | undefined): XsOps & { end(): void } {
    let ended = false;
    const live = (): void => {
      if (ended) throw new XenStoreError('EINVAL', 'transaction ended');
    };
    const table = () => (tx === undefined ? undefined : this.store.tx(tx));
    const reading = <T>(op: StoreOp, path: string, f: (t: NodeTable) => T): Promise<T> =>
      this.op(op, path, () => {
        live();
        const t = table();
        if (t === undefined) return this.store.read(f);
        t.touched.add(path);
        return f(t.table);
      });
    const mutating = (m: Mutation): Promise<void> =>
      this.op(m.op, m.path, () => {
        live();
        const t = table();
        if (t === undefined) {
          this.store.direct(this, m);
          return;
        }
        const changes = t.table.apply(this.domid, m);
        t.touched.add(m.path);
        for (const c of changes) {
          t.touched.add(c.path);
          if (c.removed || c.created === true) t.touched.add(parentOf(c.path));
        }
        t.mutations.push(m);
      });
    const self: XsOps & { end(): void } = {
      end: () => {
        ended = true;
      },
      read: async (p) => Buffer.from(await reading('read', p, (t) => t.read(this.domid, p))),
      readString: (p) => reading('read', p, (t) => t.read(this.domid, p)),
      tryRead: (p) =>
        reading('read', p, (t) => {
          try {
            return t.read(this.domid, p);
          } catch (err) {
            if (err instanceof XenStoreError && err.errno === 'ENOENT') return undefined;
            throw err;
          }
        }),
      write: (p, v) => mutating({ op: 'write', path: p, value: v.toString() }),
      mkdir: (p) => mutating({ op: 'mkdir', path: p }),
      rm: (p) => mutating({ op: 'rm', path: p }),
      directory: (p) => reading('directory', p, (t) => t.directory(this.domid, p)),
      exists: (p) => reading('read', p, (t) => t.nodes.has(p)),
      getPerms: (p) => reading('getPerms', p, (t) => t.getPerms(this.domid, p)),
      setPerms: (p, perms) => mutating({ op: 'setPerms', path: p, perms: perms.map((x) => ({ ...x })) }),
    };
    return self;
  }

  private readonly plain = this.ops0(undefined);
  read(path: string): Promise<Buffer> {
    return this.plain.read(path);
  }
  readString(path: string): Promise<string> {
    return this.plain.readString(path);
  }
  tryRead(path: string): Promise<string | undefined> {
    return this.plain.tryRead(path);
  }
  write(path: string, value: Buffer | string): Promise<void> {
    return this.plain.write(path, value);
  }
  mkdir(path: string): Promise<void> {
    return this.plain.mkdir(path);
  }
  rm(path: string): Promise<void> {
    return this.plain.rm(path);
  }
  directory(path: string): Promise<string[]> {
    return this.plain.directory(path);
  }
  exists(path: string): Promise<boolean> {
    return this.plain.exists(path);
  }
  getPerms(path: string): Promise<Perm[]> {
    return this.plain.getPerms(path);
  }
  setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    return this.plain.setPerms(path, perms);
  }

  transaction<T>(fn: (tx: XsOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    return runTransaction(
      {
        start: () => this.op('transaction_start', undefined, () => this.store.beginTx()),
        bind: (id): TransactionHandle => this.ops0(id),
        end: (id, commit) => this.op('transaction_end', undefined, () => this.store.endTx(this, id, commit)),
      },
      fn,
      opts,
      undefined,
    );
  }

  watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    return this.op('watch', path, () => this.store.addWatch(this, path, opts.token, opts));
  }

  getDomainPath(domid: number): Promise<string> {
    return this.op('other', undefined, () => `/local/domain/${domid}`);
  }
  introduce(): Promise<void> {
    return this.op('other', undefined, () => undefined);
  }
  release(): Promise<void> {
    return this.op('other', undefined, () => undefined);
  }
  isIntroduced(): Promise<boolean> {
    return this.op('other', undefined, () => true);
  }
  setTarget(): Promise<void> {
    return this.op('other', undefined, () => undefined);
  }
  resume(): Promise<void> {
    return this.op('other', undefined, () => undefined);
  }
  resetWatches(): Promise<void> {
    return this.op('other', undefined, () => this.store.dropWatches(this));
  }
  getFeature(): Promise<number> {
    return this.op('other', undefined, () => 0);
  }
  getQuota(): Promise<Map<string, number>> {
    return this.op('other', undefined, () => new Map<string, number>());
  }
  onDisconnect(): () => void {
    return () => undefined;
  }
  close(): Promise<void> {
    this.open = false;
    this.store.dropWatches(this);
    return Promise.resolve();
  }
}
