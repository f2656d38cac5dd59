// A thin QMP client over a unix socket: connect, greeting and capabilities, commands with
// replies matched by id, events kept for waiters. Every wait is bounded; a command that times out
// closes the connection (its late reply could not be told from the next one's).
import { createConnection, type Socket } from 'node:net';
import { parseQmpLine, QmpLineSplitter, QmpProtocolError, type QmpVersion } from './qmp-codec.js';
import { QmpSession, type QmpEffect } from './qmp-session.js';

/** QEMU refused a command: `errorClass` is QMP's class (GenericError, DeviceNotActive, ...). */
export class QmpCommandError extends Error {
  override readonly name = 'QmpCommandError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${command}: ${errorClass}: ${desc}`);
  }
}

/** A bounded wait ran out: `what` names it (connect, greeting, a command, an event). */
export class QmpTimeoutError extends Error {
  override readonly name = 'QmpTimeoutError';
  constructor(
    readonly what: string,
    readonly ms: number,
  ) {
    super(`QMP ${what}: no answer within ${ms} ms`);
  }
}

/** The socket could not be reached, or closed under us. */
export class QmpConnectionError extends Error {
  override readonly name = 'QmpConnectionError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`QMP socket ${path}: ${reason}`);
  }
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
}

export interface QmpConnectOptions {
  /** Bound on connect + greeting + capabilities. A busy monitor (another client) never greets. */
  timeoutMs: number;
  signal?: AbortSignal;
}

interface Waiter {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  command: string;
}

const EVENT_BACKLOG = 256;

export class QmpClient {
  private readonly session = new QmpSession();
  private readonly splitter = new QmpLineSplitter();
  private readonly waiters = new Map<string, Waiter>();
  private readonly events: QmpEvent[] = [];
  private readonly eventListeners = new Set<(e: QmpEvent) => void>();
  private closedWith: Error | undefined;
  private onReady: ((v: QmpVersion) => void) | undefined;
  private onFail: ((e: Error) => void) | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpConnectionError(path, err.message)));
    socket.on('close', () => this.shutdown(new QmpConnectionError(path, 'closed by QEMU')));
  }

  /** Connects and negotiates; rejects within timeoutMs whatever the peer does. */
  static connect(path: string, opts: QmpConnectOptions): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      if (opts.signal?.aborted) {
        reject(new QmpConnectionError(path, 'aborted'));
        return;
      }
      const deadline = Date.now() + opts.timeoutMs;
      let done = false;
      let client: QmpClient | undefined;
      let retry: NodeJS.Timeout | undefined;
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearTimeout(retry);
        opts.signal?.removeEventListener('abort', onAbort);
        const c = client;
        if (c !== undefined) {
          c.onReady = undefined;
          c.onFail = undefined;
        }
        if (err !== undefined) {
          c?.destroy(err);
          reject(err);
        } else if (c !== undefined) resolve(c);
      };
      const timer = setTimeout(
        () =>
          finish(
            new QmpTimeoutError(
              client?.session.state === 'negotiating'
                ? 'capabilities'
                : 'greeting (monitor busy with another client?)',
              opts.timeoutMs,
            ),
          ),
        opts.timeoutMs,
      );
      const onAbort = (): void => finish(new QmpConnectionError(path, 'aborted'));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      const attempt = (): void => {
        const c = new QmpClient(createConnection({ path }), path);
        client = c;
        c.onReady = () => finish();
        c.onFail = (e) => {
          // A full accept queue (the monitor was hung, or is busy) answers EAGAIN: try again.
          if (!done && /EAGAIN/.test(e.message) && Date.now() + 20 < deadline) {
            c.onFail = undefined;
            retry = setTimeout(attempt, 20);
          } else finish(e);
        };
      };
      attempt();
    });
  }

  get version(): QmpVersion | undefined {
    return this.session.version;
  }

  /** Runs one command; resolves with its `return` value, rejects with QmpCommandError or a timeout. */
  execute(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    let sent: { id: string; line: string };
    try {
      sent = this.session.command(command, args);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(sent.id);
        this.session.abandon(sent.id);
        const err = new QmpTimeoutError(command, timeoutMs);
        this.destroy(err);
        reject(err);
      }, timeoutMs);
      this.waiters.set(sent.id, {
        command,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.socket.write(sent.line);
    });
  }

  /**
   * The first event matching `pred`, among those already received on this connection (oldest
   * first) and those to come; rejects after timeoutMs or when the connection ends.
   */
  waitForEvent(pred: (e: QmpEvent) => boolean, timeoutMs: number, what: string): Promise<QmpEvent> {
    const seen = this.events.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const listener = (e: QmpEvent | Error): void => {
        if (e instanceof Error) {
          cleanup();
          reject(e);
        } else if (pred(e)) {
          cleanup();
          resolve(e);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpTimeoutError(what, timeoutMs));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.eventListeners.delete(listener as (e: QmpEvent) => void);
      };
      this.eventListeners.add(listener as (e: QmpEvent) => void);
    });
  }

  /** Ends the connection; pending commands reject. */
  close(): Promise<void> {
    this.destroy(new QmpConnectionError(this.path, 'closed by us'));
    return new Promise((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  private destroy(err: Error): void {
    this.shutdown(err);
    this.socket.destroy();
  }

  private shutdown(err: Error): void {
    if (this.closedWith !== undefined) return;
    this.closedWith = err;
    this.session.close();
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
    for (const l of [...this.eventListeners]) (l as (e: QmpEvent | Error) => void)(err);
    this.onFail?.(err);
  }

  private onData(chunk: Buffer): void {
    let effects: QmpEffect[];
    try {
      effects = this.splitter.push(chunk).flatMap((line) => this.session.receive(parseQmpLine(line)));
    } catch (err) {
      this.destroy(err instanceof QmpProtocolError ? err : new QmpProtocolError(String(err)));
      return;
    }
    for (const e of effects) this.apply(e);
  }

  private apply(e: QmpEffect): void {
    switch (e.kind) {
      case 'send':
        this.socket.write(e.line);
        return;
      case 'ready':
        this.onReady?.(e.version);
        return;
      case 'reply': {
        const w = this.waiters.get(e.id);
        this.waiters.delete(e.id);
        if (w === undefined) return;
        if (e.ok) w.resolve(e.value);
        else w.reject(new QmpCommandError(w.command, e.errorClass, e.desc));
        return;
      }
      case 'event': {
        const ev = { event: e.event, data: e.data };
        this.events.push(ev);
        if (this.events.length > EVENT_BACKLOG) this.events.shift();
        for (const l of [...this.eventListeners]) l(ev);
        return;
      }
      case 'fail':
        this.destroy(e.error);
        return;
    }
  }
}
