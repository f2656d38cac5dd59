// A minimal in-memory XenStore for UNIT tests of the engine only (integration tests use the real
// xenstored): nodes with values and permissions, subtree watches with an initial event,
// transactions applied directly (no conflicts), and an op counter.
import { XenStoreError } from '../../src/xenstore/errors.js';
import type { Perm, Watch, WatchEvent, WatchOptions, XenStore, XsOps } from '../../src/xenstore/types.js';

interface Node {
  value: string;
  perms: Perm[];
}

export class MemoryXenStore implements XenStore {
  readonly nodes = new Map<string, Node>([['/', { value: '', perms: [{ domid: 0, access: 'n' }] }]]);
  private watches: { path: string; token: string; cb: (ev: WatchEvent) => void }[] = [];
  ops = 0;
  connected = true;

  private parent(path: string): string {
    const i = path.lastIndexOf('/');
    return i <= 0 ? '/' : path.slice(0, i);
  }
  private fire(path: string): void {
    for (const w of [...this.watches]) {
      if (path === w.path || path.startsWith(`${w.path}/`)) {
        const ev = { path, token: w.token };
        queueMicrotask(() => w.cb(ev));
      }
    }
  }
  private ensure(path: string, perms?: Perm[]): void {
    if (this.nodes.has(path)) return;
    const p = this.parent(path);
    this.ensure(p);
    this.nodes.set(path, { value: '', perms: perms ?? [...(this.nodes.get(p)?.perms ?? [])] });
  }
  private get(path: string, op: string): Node {
    const n = this.nodes.get(path);
    if (n === undefined) throw new XenStoreError('ENOENT', op, path);
    return n;
  }

  read(path: string): Promise<Buffer> {
    this.ops += 1;
    try {
      return Promise.resolve(Buffer.from(this.get(path, 'READ').value));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  async readString(path: string): Promise<string> {
    return (await this.read(path)).toString();
  }
  async tryRead(path: string): Promise<string | undefined> {
    this.ops += 1;
    return this.nodes.get(path)?.value;
  }
  write(path: string, value: Buffer | string): Promise<void> {
    this.ops += 1;
    this.ensure(path);
    const n = this.get(path, 'WRITE');
    n.value = value.toString();
    this.fire(path);
    return Promise.resolve();
  }
  mkdir(path: string): Promise<void> {
    this.ops += 1;
    this.ensure(path);
    this.fire(path);
    return Promise.resolve();
  }
  rm(path: string): Promise<void> {
    this.ops += 1;
    if (!this.nodes.has(path)) return Promise.reject(new XenStoreError('ENOENT', 'RM', path));
    for (const k of [...this.nodes.keys()]) if (k === path || k.startsWith(`${path}/`)) this.nodes.delete(k);
    this.fire(path);
    return Promise.resolve();
  }
  directory(path: string): Promise<string[]> {
    this.ops += 1;
    if (!this.nodes.has(path)) return Promise.reject(new XenStoreError('ENOENT', 'DIRECTORY', path));
    const pre = path === '/' ? '/' : `${path}/`;
    const out = new Set<string>();
    for (const k of this.nodes.keys()) {
      if (k.startsWith(pre) && k !== path) {
        const rest = k.slice(pre.length);
        if (rest !== '' && !rest.includes('/')) out.add(rest);
      }
    }
    return Promise.resolve([...out]);
  }
  exists(path: string): Promise<boolean> {
    this.ops += 1;
    return Promise.resolve(this.nodes.has(path));
  }
  getPerms(path: string): Promise<Perm[]> {
    this.ops += 1;
    try {
      return Promise.resolve([...this.get(path, 'GET_PERMS').perms]);
    } catch (e) {
      return Promise.reject(e);
    }
  }
  setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    this.ops += 1;
    try {
      this.get(path, 'SET_PERMS').perms = [...perms];
    } catch (e) {
      return Promise.reject(e);
    }
    this.fire(path);
    return Promise.resolve();
  }
  async transaction<T>(fn: (tx: XsOps) => Promise<T>): Promise<T> {
    this.ops += 2;
    return fn(this);
  }
  watch(path: string, opts?: WatchOptions): Promise<Watch> {
    this.ops += 1;
    const token = opts?.token ?? `t${this.watches.length}`;
    const entry = { path, token, cb: (ev: WatchEvent) => opts?.onEvent?.(ev) };
    this.watches.push(entry);
    queueMicrotask(() => entry.cb({ path, token }));
    return Promise.resolve({
      path,
      token,
      close: () => {
        this.watches = this.watches.filter((w) => w !== entry);
        return Promise.resolve();
      },
      [Symbol.asyncIterator]: () => {
        throw new Error('iteration not supported by the fake');
      },
    });
  }
  getDomainPath(domid: number): Promise<string> {
    return Promise.resolve(`/local/domain/${domid}`);
  }
  introduce(): Promise<void> {
    return Promise.resolve();
  }
  release(): Promise<void> {
    return Promise.resolve();
  }
  isIntroduced(): Promise<boolean> {
    return Promise.resolve(true);
  }
  setTarget(): Promise<void> {
    return Promise.resolve();
  }
  resume(): Promise<void> {
    return Promise.resolve();
  }
  resetWatches(): Promise<void> {
    return Promise.resolve();
  }
  getFeature(): Promise<number> {
    return Promise.resolve(0);
  }
  getQuota(): Promise<Map<string, number>> {
    return Promise.resolve(new Map());
  }
  onDisconnect(): () => void {
    return () => undefined;
  }
  close(): Promise<void> {
    this.connected = false;
    return Promise.resolve();
  }

  /** Test helper: a node with explicit permissions, created silently. */
  put(path: string, value: string, perms?: Perm[]): void {
    this.ensure(path, perms);
    const n = this.get(path, 'PUT');
    n.value = value;
    if (perms !== undefined) n.perms = perms;
    this.fire(path);
  }
  value(path: string): string | undefined {
    return this.nodes.get(path)?.value;
  }
}
