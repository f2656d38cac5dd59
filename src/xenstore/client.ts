// The XenStore interface over one SocketTransport: validates input, encodes each operation,
// routes watch events by token, runs bounded-retry transactions. Reconnection is explicit: a
// client whose connection dropped stays dead; call connectXenStore() again and re-register.

import { XenStoreDisconnectedError, XenStoreError, isXsErrno } from './errors.js';
import { XsOpsBase } from './ops-base.js';
import type { Perm, TransactionOptions, Watch, WatchOptions, XenStore, XsOps } from './types.js';
import {
  validateDomid,
  validateMfn,
  validateToken,
  validateU32,
  validateValue,
  validateWatchPath,
} from './paths.js';
import type { SocketTransport } from './socket-transport.js';
import { runTransaction, type TransactionCalls, type TransactionHandle } from './transaction-retry.js';
import { QueuedWatch, type WatchOwner } from './watch-queue.js';
import { WatchRegistry, ignoreWatchGone, nextWatchToken } from './watch-registry.js';
import * as wire from './wire.js';

const DIRECTORY_PART_RESTARTS = 16;

// Module-level parsers: passing these (not fresh closures) keeps each call to one allocation.
const parseValue = wire.parseValue;
const parseUtf8 = (b: Buffer): string => b.toString('utf8');
const parseAck = wire.parseAck;

/** Operations bound to one transaction id (0: none). */
class OpsImpl extends XsOpsBase {
  constructor(
    protected readonly t: SocketTransport,
    readonly txId: number,
  ) {
    super();
  }

  read(path: string): Promise<Buffer> {
    try {
      this.checkPath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.t.request(wire.encodeRead(path, this.txId), 'read', path, parseValue);
  }

  readString(path: string): Promise<string> {
    try {
      this.checkPath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.t.request(wire.encodeRead(path, this.txId), 'read', path, parseUtf8);
  }

  async write(path: string, value: Buffer | string): Promise<void> {
    this.checkPath(path);
    const bytes = validateValue(path, value);
    await this.t.request(wire.encodeWrite(path, bytes, this.txId), 'write', path, parseAck);
  }

  async mkdir(path: string): Promise<void> {
    this.checkPath(path);
    await this.t.request(wire.encodeMkdir(path, this.txId), 'mkdir', path, parseAck);
  }

  async rm(path: string): Promise<void> {
    this.checkPath(path);
    await this.t.request(wire.encodeRm(path, this.txId), 'rm', path, parseAck);
  }

  async directory(path: string): Promise<string[]> {
    this.checkPath(path);
    try {
      return await this.t.request(
        wire.encodeDirectory(path, this.txId),
        'directory',
        path,
        wire.parseDirectory,
      );
    } catch (err) {
      // A directory too big for one reply: xenstored answers E2BIG; read it in parts.
      if (!isXsErrno(err, 'E2BIG')) throw err;
    }
    return this.directoryPart(path);
  }

  /** DIRECTORY_PART loop, restarted when the node's generation changes between chunks. */
  async directoryPart(path: string): Promise<string[]> {
    this.checkPath(path);
    for (let restart = 0; restart < DIRECTORY_PART_RESTARTS; restart++) {
      const children: string[] = [];
      let offset = 0;
      let generation: string | undefined;
      let changed = false;
      for (;;) {
        const part = await this.t.request(
          wire.encodeDirectoryPart(path, offset, this.txId),
          'directory',
          path,
          wire.parseDirectoryPart,
        );
        if (generation === undefined) generation = part.generation;
        else if (generation !== part.generation) {
          changed = true;
          break;
        }
        children.push(...part.children);
        if (part.done) return children;
        if (part.consumed === 0) {
          throw new XenStoreError('EIO', 'directory', path);
        }
        offset += part.consumed;
      }
      if (!changed) break;
    }
    throw new XenStoreError('EAGAIN', 'directory', path);
  }

  async getPerms(path: string): Promise<Perm[]> {
    this.checkPath(path);
    return this.t.request(wire.encodeGetPerms(path, this.txId), 'getPerms', path, wire.parseGetPerms);
  }

  async setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    this.checkPath(path);
    await this.t.request(wire.encodeSetPerms(path, perms, this.txId), 'setPerms', path, parseAck);
  }
}

/** The transaction handle given to transaction(fn). */
class TxOps extends OpsImpl implements TransactionHandle {
  end(): void {
    this.ended = true;
  }
}

export interface SocketXenStoreOptions {
  /** Attempts/backoff defaults for transaction(). */
  transaction?: TransactionOptions;
}

export class SocketXenStore extends OpsImpl implements XenStore, WatchOwner {
  private readonly watches = new WatchRegistry();
  private readonly txDefaults: TransactionOptions;
  /** The three requests runTransaction() needs, bound once to this connection. */
  private readonly txCalls: TransactionCalls;

  constructor(transport: SocketTransport, opts: SocketXenStoreOptions = {}) {
    super(transport, 0);
    this.txDefaults = opts.transaction ?? {};
    this.txCalls = {
      start: () =>
        transport.request(
          wire.encodeTransactionStart(),
          'transaction_start',
          undefined,
          wire.parseTransactionId,
        ),
      bind: (txId) => new TxOps(transport, txId),
      end: async (txId, commit) => {
        await transport.request(
          wire.encodeTransactionEnd(txId, commit),
          commit ? 'transaction_commit' : 'transaction_abort',
          undefined,
          parseAck,
        );
      },
    };
    // Late events after unwatch are harmless: the registry drops unknown tokens.
    transport.onEvent = (path, token) => this.watches.route(path, token);
    transport.onDisconnect((err) => {
      for (const w of this.watches.takeAll()) w.kill(err);
    });
  }

  get connected(): boolean {
    return this.t.connected;
  }

  transaction<T>(fn: (tx: XsOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    return runTransaction(this.txCalls, fn, opts, this.txDefaults);
  }

  async watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    validateWatchPath(path);
    const token = validateToken(opts.token ?? nextWatchToken('xsw'));
    if (!this.t.connected) throw new XenStoreDisconnectedError('not connected to xenstored');
    const w = new QueuedWatch(this, path, token, opts.onEvent, opts.onError);
    await this.watches.register(w, () =>
      this.t.request(wire.encodeWatch(path, token), 'watch', path, parseAck),
    );
    return w;
  }

  /** Called by Watch.close(): forget locally, then UNWATCH while connected. */
  async unregister(w: QueuedWatch): Promise<void> {
    if (!this.watches.release(w) || !this.t.connected) return;
    await this.t
      .request(wire.encodeUnwatch(w.path, w.token), 'unwatch', w.path, parseAck)
      .catch(ignoreWatchGone);
  }

  async getDomainPath(domid: number): Promise<string> {
    validateDomid(domid);
    return this.t.request(wire.encodeGetDomainPath(domid), 'getDomainPath', undefined, wire.parseDomainPath);
  }

  async introduce(domid: number, mfn: bigint | number, port: number): Promise<void> {
    validateDomid(domid);
    validateMfn(mfn);
    validateU32(port, 'port');
    await this.t.request(wire.encodeIntroduce(domid, mfn, port), 'introduce', undefined, parseAck);
  }

  async release(domid: number): Promise<void> {
    validateDomid(domid);
    await this.t.request(wire.encodeRelease(domid), 'release', undefined, parseAck);
  }

  async isIntroduced(domid: number): Promise<boolean> {
    validateDomid(domid);
    return this.t.request(
      wire.encodeIsDomainIntroduced(domid),
      'isIntroduced',
      undefined,
      wire.parseIsIntroduced,
    );
  }

  async setTarget(domid: number, target: number): Promise<void> {
    validateDomid(domid);
    validateDomid(target, 'target');
    await this.t.request(wire.encodeSetTarget(domid, target), 'setTarget', undefined, parseAck);
  }

  async resume(domid: number): Promise<void> {
    validateDomid(domid);
    await this.t.request(wire.encodeResume(domid), 'resume', undefined, parseAck);
  }

  /** RESET_WATCHES drops every watch of this connection server-side; local watches end too. */
  async resetWatches(): Promise<void> {
    await this.t.request(wire.encodeResetWatches(), 'resetWatches', undefined, parseAck);
    for (const w of this.watches.takeAll()) w.finish();
  }

  /** GET_FEATURE; a server without it (4.17 answers ENOSYS) reports no features: 0. */
  async getFeature(domid?: number): Promise<number> {
    if (domid !== undefined) validateDomid(domid);
    try {
      return await this.t.request(wire.encodeGetFeature(domid), 'getFeature', undefined, (p) =>
        wire.parseNumber(p, 'GET_FEATURE'),
      );
    } catch (err) {
      if (isXsErrno(err, 'ENOSYS')) return 0;
      throw err;
    }
  }

  /**
   * GET_QUOTA: asks for the quota names, then each value (for domid when given). A server
   * without GET_QUOTA (4.17 answers ENOSYS) gives an empty map.
   */
  async getQuota(domid?: number): Promise<Map<string, number>> {
    if (domid !== undefined) validateDomid(domid);
    try {
      const names = await this.t.request(wire.encodeGetQuota(), 'getQuota', undefined, (p) =>
        wire.splitStrings(p, 'GET_QUOTA').filter((s) => s !== ''),
      );
      const out = new Map<string, number>();
      for (const name of names) {
        const value = await this.t.request(wire.encodeGetQuota(domid, name), 'getQuota', name, (p) =>
          wire.parseNumber(p, 'GET_QUOTA'),
        );
        out.set(name, value);
      }
      return out;
    } catch (err) {
      if (isXsErrno(err, 'ENOSYS')) return new Map();
      throw err;
    }
  }

  onDisconnect(cb: (err: Error) => void): () => void {
    return this.t.onDisconnect(cb);
  }

  async close(): Promise<void> {
    for (const w of this.watches.takeAll()) w.finish();
    await this.t.close();
  }

  /** Requests in flight and queued (for tests and metrics). */
  get pendingCount(): number {
    return this.t.inFlightCount + this.t.queuedCount;
  }
}
