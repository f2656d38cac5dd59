// Specification of QueuedWatch and WatchRegistry, the watch bookkeeping both transports share:
// callback vs iteration delivery, death after queued events, local finish, token routing,
// register/release around WATCH/UNWATCH, and which UNWATCH failures count as "already gone".

import { describe, expect, it } from 'vitest';
import { XenStoreDisconnectedError, XenStoreError } from '../../src/xenstore/errors.js';
import type { WatchEvent } from '../../src/xenstore/types.js';
import { QueuedWatch, type WatchOwner } from '../../src/xenstore/watch-queue.js';
import { WatchRegistry, ignoreWatchGone, nextWatchToken } from '../../src/xenstore/watch-registry.js';

class RecordingOwner implements WatchOwner {
  readonly unregistered: QueuedWatch[] = [];
  unregister(w: QueuedWatch): Promise<void> {
    this.unregistered.push(w);
    return Promise.resolve();
  }
}

const ev = (path: string, token = 't'): WatchEvent => ({ path, token });

describe('QueuedWatch', () => {
  it('queues events for iteration when there is no callback, in order', async () => {
    const w = new QueuedWatch(new RecordingOwner(), '/a', 't', undefined, undefined);
    w.deliver(ev('/a'));
    w.deliver(ev('/a/b'));
    const it = w[Symbol.asyncIterator]();
    expect(await it.next()).toEqual({ value: ev('/a'), done: false });
    expect(await it.next()).toEqual({ value: ev('/a/b'), done: false });
    const pending = it.next();
    w.deliver(ev('/a/c'));
    expect(await pending).toEqual({ value: ev('/a/c'), done: false });
  });

  it('with a callback, queues nothing until someone iterates; a throwing callback is contained', async () => {
    const seen: string[] = [];
    const w = new QueuedWatch(
      new RecordingOwner(),
      '/a',
      't',
      (e) => {
        seen.push(e.path);
        throw new Error('callback bug');
      },
      undefined,
    );
    w.deliver(ev('/a/before'));
    const it = w[Symbol.asyncIterator]();
    w.deliver(ev('/a/after'));
    expect(seen).toEqual(['/a/before', '/a/after']);
    expect(await it.next()).toEqual({ value: ev('/a/after'), done: false });
  });

  it('kill(): queued events first, then the error; onError hears it once', async () => {
    const errors: Error[] = [];
    const w = new QueuedWatch(new RecordingOwner(), '/a', 't', undefined, (e) => errors.push(e));
    w.deliver(ev('/a'));
    const dead = new XenStoreDisconnectedError('gone');
    w.kill(dead);
    w.kill(new XenStoreDisconnectedError('again'));
    const it = w[Symbol.asyncIterator]();
    expect(await it.next()).toEqual({ value: ev('/a'), done: false });
    await expect(it.next()).rejects.toBe(dead);
    expect(errors).toEqual([dead]);
  });

  it('kill() rejects a waiting next()', async () => {
    const w = new QueuedWatch(new RecordingOwner(), '/a', 't', undefined, undefined);
    const pending = w[Symbol.asyncIterator]().next();
    const dead = new XenStoreDisconnectedError('gone');
    w.kill(dead);
    await expect(pending).rejects.toBe(dead);
  });

  it('finish() ends iteration, drops the queue and later events, and sends no UNWATCH', async () => {
    const owner = new RecordingOwner();
    const w = new QueuedWatch(owner, '/a', 't', undefined, undefined);
    const it = w[Symbol.asyncIterator]();
    const pending = it.next();
    w.finish();
    expect(await pending).toEqual({ value: undefined, done: true });
    w.deliver(ev('/a'));
    expect(await it.next()).toEqual({ value: undefined, done: true });
    expect(owner.unregistered).toEqual([]);
  });

  it('close() and iterator return() hand the watch to its owner once', async () => {
    const owner = new RecordingOwner();
    const w = new QueuedWatch(owner, '/a', 't', undefined, undefined);
    const it = w[Symbol.asyncIterator]();
    expect(await it.return?.()).toEqual({ value: undefined, done: true });
    await w.close();
    expect(owner.unregistered).toEqual([w]);
  });

  it('matches its path and the paths below it; "@" paths and "/" by their own rules', () => {
    const o = new RecordingOwner();
    const a = new QueuedWatch(o, '/a', 't', undefined, undefined);
    expect([a.matches('/a'), a.matches('/a/b'), a.matches('/ab'), a.matches('/')]).toEqual([
      true,
      true,
      false,
      false,
    ]);
    const root = new QueuedWatch(o, '/', 't', undefined, undefined);
    expect([root.matches('/x/y'), root.matches('@introduceDomain')]).toEqual([true, false]);
    const special = new QueuedWatch(o, '@releaseDomain', 't', undefined, undefined);
    expect([special.matches('@releaseDomain'), special.matches('@releaseDomain/x')]).toEqual([true, false]);
  });
});

describe('WatchRegistry', () => {
  const collect = (reg: WatchRegistry, path: string, token: string, got: string[]): Promise<QueuedWatch> => {
    const w = new QueuedWatch(
      new RecordingOwner(),
      path,
      token,
      (e) => got.push(`${path}<-${e.path}`),
      undefined,
    );
    return reg.register(w, () => Promise.resolve()).then(() => w);
  };

  it('routes by token; with a shared token only to the watches whose path covers the event', async () => {
    const reg = new WatchRegistry();
    const got: string[] = [];
    await collect(reg, '/a', 'shared', got);
    await collect(reg, '/b', 'shared', got);
    await collect(reg, '/c', 'own', got);
    reg.route('/a/x', 'shared');
    reg.route('/c/y', 'own');
    reg.route('/a/x', 'unknown');
    expect(got).toEqual(['/a<-/a/x', '/c<-/c/y']);
  });

  it('a lone watch of a token gets every event of that token (the server already filtered)', async () => {
    const reg = new WatchRegistry();
    const got: string[] = [];
    await collect(reg, '/a', 'only', got);
    reg.route('/elsewhere', 'only');
    expect(got).toEqual(['/a<-/elsewhere']);
  });

  it('register() takes the watch out again when WATCH fails, and rethrows', async () => {
    const reg = new WatchRegistry();
    const w = new QueuedWatch(new RecordingOwner(), '/a', 't', undefined, undefined);
    const refused = new XenStoreError('EACCES', 'watch', '/a');
    await expect(reg.register(w, () => Promise.reject(refused))).rejects.toBe(refused);
    expect(reg.release(w)).toBe(false);
    expect(reg.takeAll()).toEqual([]);
  });

  it('an event arriving while WATCH is in flight already reaches the watch', async () => {
    const reg = new WatchRegistry();
    const got: string[] = [];
    const w = new QueuedWatch(new RecordingOwner(), '/a', 't', (e) => got.push(e.path), undefined);
    await reg.register(w, () => {
      reg.route('/a', 't');
      return Promise.resolve();
    });
    expect(got).toEqual(['/a']);
  });

  it('release() says whether the watch was registered; takeAll() empties the registry', async () => {
    const reg = new WatchRegistry();
    const got: string[] = [];
    const a = await collect(reg, '/a', 't', got);
    const b = await collect(reg, '/b', 't', got);
    expect(reg.release(a)).toBe(true);
    expect(reg.release(a)).toBe(false);
    expect(reg.takeAll()).toEqual([b]);
    expect(reg.takeAll()).toEqual([]);
    reg.route('/b', 't');
    expect(got).toEqual([]);
  });

  it('ignoreWatchGone swallows ENOENT and disconnection only', () => {
    expect(() => ignoreWatchGone(new XenStoreError('ENOENT', 'unwatch', '/a'))).not.toThrow();
    expect(() => ignoreWatchGone(new XenStoreDisconnectedError('gone'))).not.toThrow();
    const other = new XenStoreError('EACCES', 'unwatch', '/a');
    expect(() => ignoreWatchGone(other)).toThrow(other);
  });

  it('nextWatchToken gives distinct tokens carrying the prefix and the pid', () => {
    const a = nextWatchToken('xsw');
    const b = nextWatchToken('xsw');
    expect(a).not.toBe(b);
    expect(a.startsWith(`xsw${process.pid}-`)).toBe(true);
  });
});
