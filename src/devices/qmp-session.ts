// The QMP conversation as a pure state machine: wait for the greeting, negotiate capabilities
// (qmp_capabilities, no optional features), then match replies to commands by id and pass events
// on. It takes parsed messages and returns what the I/O layer must do; it never touches a socket.
import {
  encodeQmpCommand,
  QmpProtocolError,
  type QmpId,
  type QmpMessage,
  type QmpVersion,
} from './qmp-codec.js';

export type QmpSessionState = 'greeting' | 'negotiating' | 'ready' | 'closed';

/** What the I/O layer must do after a message. */
export type QmpEffect =
  | { kind: 'send'; line: string }
  | { kind: 'ready'; version: QmpVersion }
  | { kind: 'reply'; id: QmpId; ok: true; value: unknown }
  | { kind: 'reply'; id: QmpId; ok: false; errorClass: string; desc: string }
  | { kind: 'event'; event: string; data: Record<string, unknown> }
  | { kind: 'fail'; error: QmpProtocolError };

const NEGOTIATE_ID = 'cap-0';

export class QmpSession {
  state: QmpSessionState = 'greeting';
  version: QmpVersion | undefined;
  private nextId = 1;
  private readonly pending = new Set<QmpId>();

  /** Commands sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** One message in, effects out. Protocol violations end the session with a `fail` effect. */
  receive(msg: QmpMessage): QmpEffect[] {
    if (this.state === 'closed') return [];
    switch (this.state) {
      case 'greeting':
        if (msg.kind !== 'greeting') return this.fail(`expected the greeting, got ${msg.kind}`);
        this.version = msg.version;
        this.state = 'negotiating';
        return [{ kind: 'send', line: encodeQmpCommand('qmp_capabilities', undefined, NEGOTIATE_ID) }];
      case 'negotiating':
        if (msg.kind === 'event') return [{ kind: 'event', event: msg.event, data: msg.data }];
        if (msg.kind === 'greeting') return this.fail('a second greeting');
        if (msg.id !== NEGOTIATE_ID)
          return this.fail(`unexpected ${msg.kind} during capabilities negotiation`);
        if (msg.kind === 'error')
          return this.fail(`qmp_capabilities refused: ${msg.errorClass}: ${msg.desc}`);
        this.state = 'ready';
        return [{ kind: 'ready', version: this.version ?? { major: -1, minor: -1, micro: -1 } }];
      case 'ready':
        if (msg.kind === 'event') return [{ kind: 'event', event: msg.event, data: msg.data }];
        if (msg.kind === 'greeting') return this.fail('a second greeting');
        if (msg.id === undefined || !this.pending.has(msg.id)) {
          return this.fail(`a ${msg.kind} for no command of ours (id ${String(msg.id)})`);
        }
        this.pending.delete(msg.id);
        return msg.kind === 'return'
          ? [{ kind: 'reply', id: msg.id, ok: true, value: msg.value }]
          : [{ kind: 'reply', id: msg.id, ok: false, errorClass: msg.errorClass, desc: msg.desc }];
    }
  }

  /** A command to send (only once ready): its id and the line to write. */
  command(execute: string, args?: Record<string, unknown>): { id: QmpId; line: string } {
    if (this.state !== 'ready')
      throw new QmpProtocolError(`cannot send ${execute}: session is ${this.state}`);
    const id = `c-${this.nextId++}`;
    this.pending.add(id);
    return { id, line: encodeQmpCommand(execute, args, id) };
  }

  /** Forgets a command whose caller gave up (a late reply is then a protocol error: we close). */
  abandon(id: QmpId): void {
    this.pending.delete(id);
  }

  close(): void {
    this.state = 'closed';
    this.pending.clear();
  }

  private fail(reason: string): QmpEffect[] {
    this.close();
    return [{ kind: 'fail', error: new QmpProtocolError(reason) }];
  }
}
