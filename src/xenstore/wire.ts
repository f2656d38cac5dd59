// The XenStore wire protocol (xen/io/xs_wire.h) as a pure codec: no sockets, no timers.
// Encoders build one complete frame (16-byte header + payload) per request, parsers turn a reply
// payload into a typed value, and FrameDecoder cuts a byte stream into frames, refusing garbage.

import { XenStoreInputError, XenStoreProtocolError, toXsErrno, type XsErrno } from './errors.js';
import type { Perm } from './types.js';
import { formatPerms, parsePermStrings } from './perms.js';

/** Message types of xs_wire.h (enum xsd_sockmsg_type), plus the 4.18+ feature/quota ones. */
export const XsType = {
  CONTROL: 0,
  DEBUG: 0,
  DIRECTORY: 1,
  READ: 2,
  GET_PERMS: 3,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  INTRODUCE: 8,
  RELEASE: 9,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  SET_PERMS: 14,
  WATCH_EVENT: 15,
  ERROR: 16,
  IS_DOMAIN_INTRODUCED: 17,
  RESUME: 18,
  SET_TARGET: 19,
  // 20 was XS_RESTRICT, removed: never valid on the wire.
  RESET_WATCHES: 21,
  DIRECTORY_PART: 22,
  GET_FEATURE: 23,
  SET_FEATURE: 24,
  GET_QUOTA: 25,
  SET_QUOTA: 26,
} as const;

export type XsTypeCode = (typeof XsType)[keyof typeof XsType];

/** XS_INVALID: guaranteed never to be a valid type. */
export const XS_INVALID = 0xffff;
export const HEADER_SIZE = 16;
/** XENSTORE_PAYLOAD_MAX: a bigger payload makes xenstored drop the connection. */
export const PAYLOAD_MAX = 4096;

/** True for every type a frame may carry (0..26 except the removed 20). */
export function isValidType(type: number): boolean {
  return Number.isInteger(type) && type >= 0 && type <= XsType.SET_QUOTA && type !== 20;
}

const TYPE_NAMES: readonly string[] = (() => {
  const names: string[] = [];
  for (const [name, code] of Object.entries(XsType)) {
    if (name !== 'DEBUG') names[code] = name;
  }
  return names;
})();

/** Name of a type for messages and errors ("READ", "TYPE_20", ...). */
export function typeName(type: number): string {
  return TYPE_NAMES[type] ?? `TYPE_${type}`;
}

export interface XsHeader {
  type: number;
  reqId: number;
  txId: number;
  len: number;
}

export function encodeHeader(h: XsHeader, buf: Buffer = Buffer.alloc(HEADER_SIZE), offset = 0): Buffer {
  buf.writeUInt32LE(h.type >>> 0, offset);
  buf.writeUInt32LE(h.reqId >>> 0, offset + 4);
  buf.writeUInt32LE(h.txId >>> 0, offset + 8);
  buf.writeUInt32LE(h.len >>> 0, offset + 12);
  return buf;
}

export function decodeHeader(buf: Buffer, offset = 0): XsHeader {
  if (buf.length - offset < HEADER_SIZE) {
    throw new XenStoreProtocolError(`header needs ${HEADER_SIZE} bytes, got ${buf.length - offset}`);
  }
  return {
    type: buf.readUInt32LE(offset),
    reqId: buf.readUInt32LE(offset + 4),
    txId: buf.readUInt32LE(offset + 8),
    len: buf.readUInt32LE(offset + 12),
  };
}

/** Offset of req_id in a frame: the transport stamps it there just before writing. */
export const REQ_ID_OFFSET = 4;

/** A frame whose payload is `parts` joined, each string followed by NUL; `tail` is appended raw. */
function frame(type: number, txId: number, strings: readonly string[], tail?: Buffer): Buffer {
  let len = 0;
  for (const s of strings) len += Buffer.byteLength(s, 'utf8') + 1;
  if (tail !== undefined) len += tail.length;
  if (len > PAYLOAD_MAX) {
    throw new XenStoreInputError(
      `${typeName(type)}: payload of ${len} bytes exceeds XENSTORE_PAYLOAD_MAX (${PAYLOAD_MAX})`,
      tail !== undefined ? 'value' : 'payload',
    );
  }
  const buf = Buffer.allocUnsafe(HEADER_SIZE + len);
  buf.writeUInt32LE(type, 0);
  buf.writeUInt32LE(0, 4);
  buf.writeUInt32LE(txId >>> 0, 8);
  buf.writeUInt32LE(len, 12);
  let off = HEADER_SIZE;
  for (const s of strings) {
    off += buf.write(s, off, 'utf8');
    buf[off++] = 0;
  }
  if (tail !== undefined) tail.copy(buf, off);
  return buf;
}

/**
 * The hot path (READ and friends): one path, already validated as ASCII, NUL-terminated.
 * Avoids the generic loop and the array allocation of frame().
 */
function pathFrame(type: number, txId: number, path: string): Buffer {
  const len = path.length + 1;
  if (len > PAYLOAD_MAX) {
    throw new XenStoreInputError(`${typeName(type)}: path too long`, 'path');
  }
  const buf = Buffer.allocUnsafe(HEADER_SIZE + len);
  buf.writeUInt32LE(type, 0);
  buf.writeUInt32LE(0, 4);
  buf.writeUInt32LE(txId >>> 0, 8);
  buf.writeUInt32LE(len, 12);
  buf.write(path, HEADER_SIZE, 'latin1');
  buf[HEADER_SIZE + len - 1] = 0;
  return buf;
}

// ---- Request encoders. req_id is left 0: the transport stamps it at REQ_ID_OFFSET. ----

export const encodeRead = (path: string, txId = 0): Buffer => pathFrame(XsType.READ, txId, path);
export const encodeDirectory = (path: string, txId = 0): Buffer => pathFrame(XsType.DIRECTORY, txId, path);
export const encodeGetPerms = (path: string, txId = 0): Buffer => pathFrame(XsType.GET_PERMS, txId, path);
export const encodeMkdir = (path: string, txId = 0): Buffer => pathFrame(XsType.MKDIR, txId, path);
export const encodeRm = (path: string, txId = 0): Buffer => pathFrame(XsType.RM, txId, path);

/** WRITE: `path\0value`, the value raw with no trailing NUL. */
export function encodeWrite(path: string, value: Buffer | string, txId = 0): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  return frame(XsType.WRITE, txId, [path], v);
}

export function encodeSetPerms(path: string, perms: readonly Perm[], txId = 0): Buffer {
  return frame(XsType.SET_PERMS, txId, [path, ...formatPerms(perms)]);
}

export const encodeWatch = (path: string, token: string): Buffer => frame(XsType.WATCH, 0, [path, token]);
export const encodeUnwatch = (path: string, token: string): Buffer => frame(XsType.UNWATCH, 0, [path, token]);

/** TRANSACTION_START carries one empty string, as libxenstore sends it. */
export const encodeTransactionStart = (): Buffer => frame(XsType.TRANSACTION_START, 0, ['']);
/** TRANSACTION_END: "T" commits, "F" aborts. */
export const encodeTransactionEnd = (txId: number, commit: boolean): Buffer =>
  frame(XsType.TRANSACTION_END, txId, [commit ? 'T' : 'F']);

export function encodeIntroduce(domid: number, mfn: bigint | number, port: number): Buffer {
  return frame(XsType.INTRODUCE, 0, [String(domid), mfn.toString(10), String(port)]);
}
export const encodeRelease = (domid: number): Buffer => frame(XsType.RELEASE, 0, [String(domid)]);
export const encodeGetDomainPath = (domid: number): Buffer =>
  frame(XsType.GET_DOMAIN_PATH, 0, [String(domid)]);
export const encodeIsDomainIntroduced = (domid: number): Buffer =>
  frame(XsType.IS_DOMAIN_INTRODUCED, 0, [String(domid)]);
export const encodeResume = (domid: number): Buffer => frame(XsType.RESUME, 0, [String(domid)]);
export const encodeSetTarget = (domid: number, target: number): Buffer =>
  frame(XsType.SET_TARGET, 0, [String(domid), String(target)]);
export const encodeResetWatches = (): Buffer => frame(XsType.RESET_WATCHES, 0, ['']);

/** DIRECTORY_PART: `path\0offset\0`, offset a byte offset into the children list. */
export const encodeDirectoryPart = (path: string, offset: number, txId = 0): Buffer =>
  frame(XsType.DIRECTORY_PART, txId, [path, String(offset)]);

/** GET_FEATURE `[domid\0]`: no domid asks for the server's own feature set. */
export const encodeGetFeature = (domid?: number): Buffer =>
  frame(XsType.GET_FEATURE, 0, domid === undefined ? [] : [String(domid)]);
export const encodeSetFeature = (domid: number, value: number): Buffer =>
  frame(XsType.SET_FEATURE, 0, [String(domid), String(value)]);
/** GET_QUOTA `[[domid\0]quota\0]`: no quota name lists the names the server knows. */
export function encodeGetQuota(domid?: number, quota?: string): Buffer {
  const parts: string[] = [];
  if (domid !== undefined) parts.push(String(domid));
  if (quota !== undefined) parts.push(quota);
  return frame(XsType.GET_QUOTA, 0, parts);
}
export function encodeSetQuota(quota: string, value: number, domid?: number): Buffer {
  const parts: string[] = [];
  if (domid !== undefined) parts.push(String(domid));
  parts.push(quota, String(value));
  return frame(XsType.SET_QUOTA, 0, parts);
}
/** CONTROL (xenstore-control): `cmd\0` then raw arguments. */
export const encodeControl = (cmd: string, args: Buffer = Buffer.alloc(0)): Buffer =>
  frame(XsType.CONTROL, 0, [cmd], args);

// ---- Reply parsers: payload -> typed value; a malformed payload is a protocol error. ----

/** Splits a payload of NUL-terminated strings. A last string without NUL is a protocol error. */
export function splitStrings(payload: Buffer, what: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.length; i++) {
    if (payload[i] === 0) {
      out.push(payload.toString('utf8', start, i));
      start = i + 1;
    }
  }
  if (start !== payload.length) {
    throw new XenStoreProtocolError(`${what}: reply is not NUL-terminated`);
  }
  return out;
}

/** The one string of a `"...\0"` reply. */
export function parseString(payload: Buffer, what: string): string {
  const n = payload.length;
  if (n === 0 || payload[n - 1] !== 0 || payload.indexOf(0) !== n - 1) {
    throw new XenStoreProtocolError(`${what}: expected one NUL-terminated string`);
  }
  return payload.toString('utf8', 0, n - 1);
}

/** "OK\0" acknowledgement. */
export function parseAck(payload: Buffer): void {
  if (payload.length !== 3 || payload[0] !== 0x4f || payload[1] !== 0x4b || payload[2] !== 0) {
    throw new XenStoreProtocolError(`expected "OK\\0" acknowledgement`);
  }
}

/** READ: the raw value (no NUL, may be binary), copied out of the (reused) receive buffer. */
export const parseValue = (payload: Buffer): Buffer => Buffer.from(payload);

/** DIRECTORY: children names, each NUL-terminated (an empty payload: no children). */
export const parseDirectory = (payload: Buffer): string[] => splitStrings(payload, 'DIRECTORY');

export const parseGetPerms = (payload: Buffer): Perm[] =>
  parsePermStrings(splitStrings(payload, 'GET_PERMS'));

export function parseTransactionId(payload: Buffer): number {
  const s = parseString(payload, 'TRANSACTION_START');
  if (!/^[0-9]{1,10}$/.test(s) || Number(s) > 0xffffffff || Number(s) === 0) {
    throw new XenStoreProtocolError(`TRANSACTION_START: bad transaction id "${s}"`);
  }
  return Number(s);
}

export const parseDomainPath = (payload: Buffer): string => parseString(payload, 'GET_DOMAIN_PATH');

export function parseIsIntroduced(payload: Buffer): boolean {
  const s = parseString(payload, 'IS_DOMAIN_INTRODUCED');
  if (s === 'T') return true;
  if (s === 'F') return false;
  throw new XenStoreProtocolError(`IS_DOMAIN_INTRODUCED: expected T or F, got "${s}"`);
}

/** GET_FEATURE / a single GET_QUOTA value: one decimal number. */
export function parseNumber(payload: Buffer, what: string): number {
  const s = parseString(payload, what);
  if (!/^[0-9]{1,15}$/.test(s)) throw new XenStoreProtocolError(`${what}: bad number "${s}"`);
  return Number(s);
}

export interface DirectoryPart {
  /** Generation count of the node: a change between chunks means start again. */
  generation: string;
  children: string[];
  /** Bytes of children (with their NULs) in this chunk: added to the offset of the next call. */
  consumed: number;
  /** The server marked the end of the list (an extra empty string). */
  done: boolean;
}

/** DIRECTORY_PART: `gencnt\0child\0...` and, in the last chunk, one more `\0`. */
export function parseDirectoryPart(payload: Buffer): DirectoryPart {
  const strings = splitStrings(payload, 'DIRECTORY_PART');
  const generation = strings.shift();
  if (generation === undefined || !/^[0-9]+$/.test(generation)) {
    throw new XenStoreProtocolError('DIRECTORY_PART: missing generation count');
  }
  const consumed = payload.length - (Buffer.byteLength(generation) + 1);
  let done = false;
  if (strings.length > 0 && strings[strings.length - 1] === '') {
    strings.pop();
    done = true;
  }
  if (strings.includes('')) throw new XenStoreProtocolError('DIRECTORY_PART: empty child name');
  return { generation, children: strings, consumed, done };
}

/** ERROR: the errno name, NUL-terminated; unknown names map to EINVAL like libxenstore. */
export function parseError(payload: Buffer): XsErrno {
  const nul = payload.indexOf(0);
  if (nul < 0) throw new XenStoreProtocolError('ERROR reply without NUL terminator');
  return toXsErrno(payload.toString('latin1', 0, nul));
}

/** WATCH_EVENT: `path\0token\0` (at least two strings; extra strings are ignored). */
export function parseWatchEvent(payload: Buffer): { path: string; token: string } {
  const a = payload.indexOf(0);
  const b = a < 0 ? -1 : payload.indexOf(0, a + 1);
  if (b < 0) throw new XenStoreProtocolError('WATCH_EVENT without path and token strings');
  return { path: payload.toString('utf8', 0, a), token: payload.toString('utf8', a + 1, b) };
}

/**
 * GET_QUOTA reply turned into name -> value. xenstored (4.18+) answers one value per quota;
 * a list reply holds "name value" strings or alternating name, value strings: both accepted.
 */
export function parseQuotaList(payload: Buffer): Map<string, number> {
  const strings = splitStrings(payload, 'GET_QUOTA').filter((s) => s !== '');
  const out = new Map<string, number>();
  const num = (s: string): number => {
    if (!/^[0-9]{1,15}$/.test(s)) throw new XenStoreProtocolError(`GET_QUOTA: bad number "${s}"`);
    return Number(s);
  };
  if (strings.every((s) => s.includes(' '))) {
    for (const s of strings) {
      const [name, value] = s.split(/\s+/, 2);
      if (name === undefined || value === undefined) throw new XenStoreProtocolError('GET_QUOTA');
      out.set(name, num(value));
    }
    return out;
  }
  if (strings.length % 2 !== 0) throw new XenStoreProtocolError('GET_QUOTA: odd list');
  for (let i = 0; i < strings.length; i += 2) out.set(strings[i] ?? '', num(strings[i + 1] ?? ''));
  return out;
}

// ---- Streaming frame decoder. ----

/**
 * Receives each complete frame. `payload` is a view into the receive buffer, valid only during
 * the call: copy what must outlive it.
 */
export type FrameHandler = (type: number, reqId: number, txId: number, payload: Buffer) => void;

/**
 * Cuts a byte stream into frames. Handles frames split across chunks and several frames in one
 * chunk. Throws XenStoreProtocolError (and stays broken) on: len > PAYLOAD_MAX, an unknown type,
 * an ERROR without NUL, a WATCH_EVENT without two strings.
 */
export class FrameDecoder {
  private pending: Buffer | undefined;
  private broken: XenStoreProtocolError | undefined;

  constructor(private readonly onFrame: FrameHandler) {}

  push(chunk: Buffer): void {
    if (this.broken) throw this.broken;
    let buf = chunk;
    if (this.pending !== undefined) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = undefined;
    }
    let off = 0;
    const end = buf.length;
    try {
      while (end - off >= HEADER_SIZE) {
        const type = buf.readUInt32LE(off);
        const len = buf.readUInt32LE(off + 12);
        if (len > PAYLOAD_MAX) {
          throw new XenStoreProtocolError(`frame length ${len} exceeds ${PAYLOAD_MAX}`);
        }
        if (!isValidType(type)) throw new XenStoreProtocolError(`unknown message type ${type}`);
        if (end - off < HEADER_SIZE + len) break;
        const payload = buf.subarray(off + HEADER_SIZE, off + HEADER_SIZE + len);
        if (type === XsType.ERROR && payload.indexOf(0) < 0) {
          throw new XenStoreProtocolError('ERROR reply without NUL terminator');
        }
        if (type === XsType.WATCH_EVENT) {
          const a = payload.indexOf(0);
          if (a < 0 || payload.indexOf(0, a + 1) < 0) {
            throw new XenStoreProtocolError('WATCH_EVENT without path and token strings');
          }
        }
        const reqId = buf.readUInt32LE(off + 4);
        const txId = buf.readUInt32LE(off + 8);
        off += HEADER_SIZE + len;
        this.onFrame(type, reqId, txId, payload);
      }
    } catch (err) {
      if (err instanceof XenStoreProtocolError) this.broken = err;
      throw err;
    }
    // Copy what is left: the caller may reuse `chunk` for its next read (net onread buffer).
    if (off < end) this.pending = Buffer.from(buf.subarray(off));
  }

  /** Bytes of an incomplete frame waiting for more input. */
  get buffered(): number {
    return this.pending?.length ?? 0;
  }
}
