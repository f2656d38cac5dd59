// One connection to xenstored's unix socket: stamps req_ids, matches replies, keeps many
// requests in flight, respects back-pressure and fails EVERY pending call when the connection
// breaks. It knows frames and errors, not operations (client.ts maps operations onto it).

import net from 'node:net';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreProtocolError,
  XenStoreTimeoutError,
} from './errors.js';
import { FrameDecoder, REQ_ID_OFFSET, XsType, parseError, parseWatchEvent, typeName } from './wire.js';

/** Turns a reply payload into the caller's value; throws XenStoreProtocolError on garbage. */
export type ReplyParser<T> = (payload: Buffer) => T;

export interface SocketTransportOptions {
  /** Requests written but not answered, at most; further calls wait their turn. Default 1024. */
  maxInFlight?: number;
  /** Default per-call deadline in ms; 0 or undefined: none. */
  timeoutMs?: number;
  /** Deadline for connect(), ms. Default 5000. */
  connectTimeoutMs?: number;
  /** First req_id to use (tests start near 2^32 to exercise the wrap-around). Default 1. */
  firstReqId?: number;
}

/**
 * One call. A class rather than closures keeps the hot path to one object per request
 * (plus the Promise itself).
 */
class Pending {
  reqId = 0;
  /** 0 queued, 1 written, 2 settled. */
  state = 0;
  timer: NodeJS.Timeout | undefined = undefined;
  constructor(
    readonly frame: Buffer,
    readonly type: number,
    readonly op: string,
    readonly path: string | undefined,
    readonly parse: ReplyParser<unknown>,
    readonly resolve: (v: unknown) => void,
    readonly reject: (e: Error) => void,
  ) {}
}

export type EventHandler = (path: string, token: string) => void;

export class SocketTransport {
  private readonly socket: net.Socket;
  private readonly decoder: FrameDecoder;
  private readonly inFlight = new Map<number, Pending>();
  /** Calls not yet written: over the in-flight cap, or the socket asked us to wait for 'drain'. */
  private queue: Pending[] = [];
  private queueHead = 0;
  /** req_ids whose caller gave up (timeout): their late replies are dropped, not protocol errors. */
  private readonly abandoned = new Set<number>();
  private nextReqId = 1;
  private blocked = false;
  private failure: Error | undefined;
  private closing = false;
  private readonly maxInFlight: number;
  private readonly timeoutMs: number;
  private readonly disconnectListeners = new Set<(err: Error) => void>();
  /**
   * Frames issued while a write of this tick is already out: sent together by one write when
   * the current microtasks are done. The first request of a tick goes out at once (no added
   * latency); a burst (64 pipelined continuations) costs two syscalls instead of 64.
   */
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private flushScheduled = false;
  private readonly flushBound = (): void => this.flush();
  /** Set by the client: receives every WATCH_EVENT. */
  onEvent: EventHandler | undefined;

  private constructor(socket: net.Socket, opts: SocketTransportOptions) {
    this.socket = socket;
    this.maxInFlight = Math.max(1, opts.maxInFlight ?? 1024);
    this.timeoutMs = opts.timeoutMs ?? 0;
    this.nextReqId = (opts.firstReqId ?? 1) >>> 0;
    this.decoder = new FrameDecoder((type, reqId, _txId, payload) => this.onFrame(type, reqId, payload));
    socket.on('drain', () => {
      this.blocked = false;
      this.pump();
    });
    socket.on('error', (err) => {
      this.fail(new XenStoreDisconnectedError(`xenstored connection error: ${err.message}`, { cause: err }));
    });
    socket.on('close', () => {
      this.fail(new XenStoreDisconnectedError('xenstored closed the connection'));
    });
  }

  /** Bytes from the socket (a view into the reused onread buffer, valid during the call). */
  private receive(chunk: Buffer): void {
    if (this.failure) return;
    try {
      this.decoder.push(chunk);
    } catch (err) {
      this.fail(err instanceof XenStoreProtocolError ? err : new XenStoreProtocolError(String(err)));
    }
  }

  /**
   * Connects to a unix socket; rejects with XenStoreDisconnectedError when it cannot. EAGAIN
   * (xenstored's small listen backlog is full) is retried until the deadline, as libxenstore's
   * blocking connect() would wait.
   */
  static async connect(path: string, opts: SocketTransportOptions = {}): Promise<SocketTransport> {
    const connectTimeoutMs = opts.connectTimeoutMs ?? 5000;
    const deadline = Date.now() + connectTimeoutMs;
    for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
      try {
        return await SocketTransport.connectOnce(path, opts, Math.max(1, deadline - Date.now()));
      } catch (err) {
        const code = (err as { cause?: { code?: string } }).cause?.code;
        if (code !== 'EAGAIN' || Date.now() + delay >= deadline) throw err;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private static connectOnce(
    path: string,
    opts: SocketTransportOptions,
    timeoutMs: number,
  ): Promise<SocketTransport> {
    return new Promise((resolve, reject) => {
      // onread: one receive buffer reused for every read, no Readable-stream machinery per chunk.
      const holder: { t?: SocketTransport } = {};
      const socket = net.createConnection({
        path,
        onread: {
          buffer: Buffer.allocUnsafe(64 * 1024),
          callback: (n: number, buf: Uint8Array): boolean => {
            holder.t?.receive(Buffer.from(buf.buffer, buf.byteOffset, n));
            return true;
          },
        },
      });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new XenStoreTimeoutError(`connect ${path}`, timeoutMs));
      }, timeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(new XenStoreDisconnectedError(`cannot connect to ${path}: ${err.message}`, { cause: err }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        holder.t = new SocketTransport(socket, opts);
        resolve(holder.t);
      });
    });
  }

  get connected(): boolean {
    return this.failure === undefined;
  }

  /** Requests written and not yet answered. */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Requests waiting to be written. */
  get queuedCount(): number {
    return this.queue.length - this.queueHead;
  }

  /**
   * Sends one request frame (req_id is stamped here) and resolves with parse(reply payload).
   * An ERROR reply rejects with XenStoreError(errno, op, path); a reply of another type than
   * the request is a protocol error that closes the connection, as libxenstore does.
   */
  request<T>(
    frame: Buffer,
    op: string,
    path: string | undefined,
    parse: ReplyParser<T>,
    timeoutMs: number = this.timeoutMs,
  ): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const type = frame.readUInt32LE(0);
    return new Promise<T>((resolve, reject) => {
      const p = new Pending(frame, type, op, path, parse, resolve as (v: unknown) => void, reject);
      if (timeoutMs > 0) p.timer = setTimeout(() => this.timeout(p, timeoutMs), timeoutMs);
      if (this.queueHead === this.queue.length && !this.blocked && this.inFlight.size < this.maxInFlight) {
        this.write(p);
      } else {
        this.queue.push(p);
      }
    });
  }

  private allocReqId(): number {
    // u32 wrap-around; skip ids still in use (a reply for them may yet come).
    let id = this.nextReqId;
    while (this.inFlight.has(id) || this.abandoned.has(id)) id = (id + 1) >>> 0;
    this.nextReqId = (id + 1) >>> 0;
    return id;
  }

  private write(p: Pending): void {
    const id = this.allocReqId();
    p.reqId = id;
    p.state = 1;
    p.frame.writeUInt32LE(id, REQ_ID_OFFSET);
    this.inFlight.set(id, p);
    if (this.flushScheduled) {
      this.batch.push(p.frame);
      this.batchBytes += p.frame.length;
      // Keep one write below the socket's high-water mark, so back-pressure still applies.
      if (this.batchBytes >= 65536) this.flush();
      return;
    }
    this.flushScheduled = true;
    queueMicrotask(this.flushBound);
    if (!this.socket.write(p.frame)) this.blocked = true;
  }

  private flush(): void {
    this.flushScheduled = false;
    const n = this.batch.length;
    if (n === 0 || this.failure) return;
    const out = n === 1 ? (this.batch[0] as Buffer) : Buffer.concat(this.batch, this.batchBytes);
    this.batch = [];
    this.batchBytes = 0;
    if (!this.socket.write(out)) this.blocked = true;
  }

  /** Writes queued calls while the cap and the socket allow. */
  private pump(): void {
    while (
      this.queueHead < this.queue.length &&
      !this.blocked &&
      this.inFlight.size < this.maxInFlight &&
      this.failure === undefined
    ) {
      const p = this.queue[this.queueHead++];
      if (p !== undefined && p.state === 0) this.write(p);
    }
    if (this.queueHead === this.queue.length && this.queueHead > 0) {
      this.queue = [];
      this.queueHead = 0;
    }
  }

  private onFrame(type: number, reqId: number, payload: Buffer): void {
    if (type === XsType.WATCH_EVENT) {
      const ev = parseWatchEvent(payload);
      this.onEvent?.(ev.path, ev.token);
      return;
    }
    const p = this.inFlight.get(reqId);
    if (p === undefined) {
      if (this.abandoned.delete(reqId)) return;
      throw new XenStoreProtocolError(`reply ${typeName(type)} for unknown req_id ${reqId}`);
    }
    this.inFlight.delete(reqId);
    p.state = 2;
    if (p.timer !== undefined) clearTimeout(p.timer);
    if (type === XsType.ERROR) {
      p.reject(new XenStoreError(parseError(payload), p.op, p.path));
    } else if (type !== p.type) {
      const err = new XenStoreProtocolError(
        `${p.op}: reply type ${typeName(type)} to a ${typeName(p.type)} request`,
      );
      p.reject(err);
      throw err;
    } else {
      let value: unknown;
      try {
        value = p.parse(payload);
      } catch (err) {
        const e = err instanceof Error ? err : new XenStoreProtocolError(String(err));
        p.reject(e);
        throw e;
      }
      p.resolve(value);
    }
    if (this.queueHead < this.queue.length) this.pump();
  }

  private timeout(p: Pending, ms: number): void {
    if (p.state === 2) return;
    if (p.state === 1) {
      this.inFlight.delete(p.reqId);
      this.abandoned.add(p.reqId);
      this.pump();
    }
    p.state = 2;
    p.reject(new XenStoreTimeoutError(p.op, ms));
  }

  /** Fails everything pending with err, once; the socket is destroyed. */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = this.closing ? new XenStoreDisconnectedError('connection closed by client') : err;
    const failure = this.failure;
    this.socket.destroy();
    const pending = [...this.inFlight.values(), ...this.queue.slice(this.queueHead)];
    this.inFlight.clear();
    this.batch = [];
    this.batchBytes = 0;
    this.queue = [];
    this.queueHead = 0;
    for (const p of pending) {
      if (p.state === 2) continue;
      p.state = 2;
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(failure);
    }
    if (!this.closing) {
      for (const cb of this.disconnectListeners) {
        try {
          cb(failure);
        } catch {
          // A listener's failure must not stop the others from hearing about the disconnect.
        }
      }
    }
    this.disconnectListeners.clear();
  }

  /** Called once when the connection is lost (not after close()). Returns an unsubscribe. */
  onDisconnect(cb: (err: Error) => void): () => void {
    this.disconnectListeners.add(cb);
    return () => this.disconnectListeners.delete(cb);
  }

  /** Closes the connection; pending calls reject with XenStoreDisconnectedError. */
  close(): Promise<void> {
    if (this.failure) return Promise.resolve();
    this.closing = true;
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.fail(new XenStoreDisconnectedError('connection closed by client'));
    });
  }
}
