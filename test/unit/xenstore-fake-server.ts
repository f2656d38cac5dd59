// A scripted in-process stand-in for xenstored, for unit tests of the transport and client:
// it decodes requests with our FrameDecoder and lets each test decide every reply.

import net from 'node:net';
import { FrameDecoder, XsType } from '../../src/xenstore/wire.js';

export interface Req {
  type: number;
  reqId: number;
  txId: number;
  payload: Buffer;
}

export function frame(type: number, reqId: number, txId: number, payload: string | Buffer): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(reqId, 4);
  h.writeUInt32LE(txId, 8);
  h.writeUInt32LE(body.length, 12);
  return Buffer.concat([h, body]);
}

/** A fake xenstored whose behaviour each test scripts through onRequest. */
export class FakeServer {
  server = net.createServer((s) => this.accept(s));
  conns: net.Socket[] = [];
  seen: Req[] = [];
  onRequest: (r: Req, sock: net.Socket) => void = (r, sock) => {
    sock.write(frame(r.type, r.reqId, r.txId, r.type === XsType.READ ? 'v' : 'OK\0'));
  };
  constructor(readonly socketPath: string) {}
  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.socketPath, resolve));
  }
  private accept(s: net.Socket): void {
    this.conns.push(s);
    const d = new FrameDecoder((type, reqId, txId, payload) => {
      const r = { type, reqId, txId, payload: Buffer.from(payload) };
      this.seen.push(r);
      this.onRequest(r, s);
    });
    s.on('data', (c: Buffer) => d.push(c));
    s.on('error', () => undefined);
  }
  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
