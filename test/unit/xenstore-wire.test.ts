// Golden-byte specification of the xs_wire codec: every request encoder, every reply parser,
// and the streaming frame decoder on split, coalesced and malformed input.

import { describe, expect, it } from 'vitest';
import { XenStoreInputError, XenStoreProtocolError } from '../../src/xenstore/errors.js';
import * as wire from '../../src/xenstore/wire.js';

/** Little-endian u32, built by hand (independent of the encoder under test). */
function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

/** A golden frame: header bytes then the payload given as a string with \0 escapes. */
function golden(type: number, reqId: number, txId: number, payload: string | Buffer): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  return Buffer.from([...u32(type), ...u32(reqId), ...u32(txId), ...u32(body.length), ...body]);
}

function decodeAll(...chunks: Buffer[]): Array<[number, number, number, string]> {
  const out: Array<[number, number, number, string]> = [];
  const d = new wire.FrameDecoder((type, reqId, txId, payload) =>
    out.push([type, reqId, txId, payload.toString('latin1')]),
  );
  for (const c of chunks) d.push(c);
  return out;
}

describe('message types (xs_wire.h)', () => {
  it('numbers every type as xs_wire.h does, 20 being invalid', () => {
    expect(wire.XsType.CONTROL).toBe(0);
    expect(wire.XsType.DEBUG).toBe(0);
    expect(wire.XsType.DIRECTORY).toBe(1);
    expect(wire.XsType.WATCH_EVENT).toBe(15);
    expect(wire.XsType.ERROR).toBe(16);
    expect(wire.XsType.SET_TARGET).toBe(19);
    expect(wire.XsType.RESET_WATCHES).toBe(21);
    expect(wire.XsType.DIRECTORY_PART).toBe(22);
    expect(wire.XsType.SET_QUOTA).toBe(26);
    for (let t = 0; t <= 26; t++) expect(wire.isValidType(t)).toBe(t !== 20);
    expect(wire.isValidType(27)).toBe(false);
    expect(wire.isValidType(wire.XS_INVALID)).toBe(false);
    expect(wire.typeName(2)).toBe('READ');
    expect(wire.typeName(20)).toBe('TYPE_20');
  });

  it('encodes and decodes the 16-byte little-endian header', () => {
    const h = { type: 2, reqId: 0xdeadbeef, txId: 7, len: 4096 };
    const buf = wire.encodeHeader(h);
    expect(buf).toEqual(Buffer.from([2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 7, 0, 0, 0, 0, 0x10, 0, 0]));
    expect(wire.decodeHeader(buf)).toEqual(h);
    expect(() => wire.decodeHeader(Buffer.alloc(15))).toThrow(XenStoreProtocolError);
  });
});

describe('request encoders: golden bytes', () => {
  const T = wire.XsType;
  const cases: Array<[string, Buffer, Buffer]> = [
    ['READ', wire.encodeRead('/a/b'), golden(T.READ, 0, 0, '/a/b\0')],
    ['READ in tx', wire.encodeRead('x', 9), golden(T.READ, 0, 9, 'x\0')],
    ['DIRECTORY', wire.encodeDirectory('/'), golden(T.DIRECTORY, 0, 0, '/\0')],
    ['GET_PERMS', wire.encodeGetPerms('/p', 3), golden(T.GET_PERMS, 0, 3, '/p\0')],
    ['MKDIR', wire.encodeMkdir('/m'), golden(T.MKDIR, 0, 0, '/m\0')],
    ['RM', wire.encodeRm('/r'), golden(T.RM, 0, 0, '/r\0')],
    ['WRITE string', wire.encodeWrite('/w', 'val'), golden(T.WRITE, 0, 0, '/w\0val')],
    [
      'WRITE binary',
      wire.encodeWrite('/w', Buffer.from([0, 0xff, 1]), 4),
      golden(T.WRITE, 0, 4, Buffer.from([0x2f, 0x77, 0, 0, 0xff, 1])),
    ],
    ['WRITE empty', wire.encodeWrite('/w', ''), golden(T.WRITE, 0, 0, '/w\0')],
    [
      'SET_PERMS',
      wire.encodeSetPerms('/s', [
        { domid: 0, access: 'n' },
        { domid: 5, access: 'r' },
      ]),
      golden(T.SET_PERMS, 0, 0, '/s\0n0\0r5\0'),
    ],
    ['WATCH', wire.encodeWatch('/x', 'tok'), golden(T.WATCH, 0, 0, '/x\0tok\0')],
    ['WATCH special', wire.encodeWatch('@releaseDomain', 't'), golden(T.WATCH, 0, 0, '@releaseDomain\0t\0')],
    ['UNWATCH', wire.encodeUnwatch('/x', 'tok'), golden(T.UNWATCH, 0, 0, '/x\0tok\0')],
    ['TRANSACTION_START', wire.encodeTransactionStart(), golden(T.TRANSACTION_START, 0, 0, '\0')],
    ['TRANSACTION_END commit', wire.encodeTransactionEnd(12, true), golden(T.TRANSACTION_END, 0, 12, 'T\0')],
    ['TRANSACTION_END abort', wire.encodeTransactionEnd(12, false), golden(T.TRANSACTION_END, 0, 12, 'F\0')],
    ['INTRODUCE', wire.encodeIntroduce(5, 0x1234n, 1005), golden(T.INTRODUCE, 0, 0, '5\x004660\x001005\0')],
    [
      'INTRODUCE 64-bit mfn',
      wire.encodeIntroduce(1, 0xffffffffffffffffn, 1),
      golden(T.INTRODUCE, 0, 0, '1\x0018446744073709551615\x001\0'),
    ],
    ['RELEASE', wire.encodeRelease(7), golden(T.RELEASE, 0, 0, '7\0')],
    ['GET_DOMAIN_PATH', wire.encodeGetDomainPath(3), golden(T.GET_DOMAIN_PATH, 0, 0, '3\0')],
    ['IS_DOMAIN_INTRODUCED', wire.encodeIsDomainIntroduced(4), golden(T.IS_DOMAIN_INTRODUCED, 0, 0, '4\0')],
    ['RESUME', wire.encodeResume(6), golden(T.RESUME, 0, 0, '6\0')],
    ['SET_TARGET', wire.encodeSetTarget(2, 8), golden(T.SET_TARGET, 0, 0, '2\x008\0')],
    ['RESET_WATCHES', wire.encodeResetWatches(), golden(T.RESET_WATCHES, 0, 0, '\0')],
    ['DIRECTORY_PART', wire.encodeDirectoryPart('/d', 120), golden(T.DIRECTORY_PART, 0, 0, '/d\x00120\0')],
    ['GET_FEATURE', wire.encodeGetFeature(), golden(T.GET_FEATURE, 0, 0, '')],
    ['GET_FEATURE domid', wire.encodeGetFeature(3), golden(T.GET_FEATURE, 0, 0, '3\0')],
    ['SET_FEATURE', wire.encodeSetFeature(3, 1), golden(T.SET_FEATURE, 0, 0, '3\x001\0')],
    ['GET_QUOTA names', wire.encodeGetQuota(), golden(T.GET_QUOTA, 0, 0, '')],
    ['GET_QUOTA one', wire.encodeGetQuota(2, 'nodes'), golden(T.GET_QUOTA, 0, 0, '2\0nodes\0')],
    ['SET_QUOTA', wire.encodeSetQuota('nodes', 9, 2), golden(T.SET_QUOTA, 0, 0, '2\0nodes\x009\0')],
    ['CONTROL', wire.encodeControl('log', Buffer.from('on\0')), golden(T.CONTROL, 0, 0, 'log\0on\0')],
  ];
  for (const [name, got, want] of cases) {
    it(`encodes ${name}`, () => {
      expect(got.toString('hex')).toBe(want.toString('hex'));
      // Every encoded request decodes back to itself.
      const [frame] = decodeAll(got);
      expect(frame?.[0]).toBe(want.readUInt32LE(0));
    });
  }

  it('refuses a payload above 4096 bytes before anything is sent', () => {
    const path = '/k';
    expect(() => wire.encodeWrite(path, Buffer.alloc(4096 - path.length - 1))).not.toThrow();
    expect(() => wire.encodeWrite(path, Buffer.alloc(4096 - path.length))).toThrow(XenStoreInputError);
    try {
      wire.encodeWrite(path, Buffer.alloc(5000));
    } catch (err) {
      expect((err as XenStoreInputError).field).toBe('value');
    }
  });
});

describe('reply parsers', () => {
  it('accepts exactly "OK\\0" as an acknowledgement', () => {
    expect(() => wire.parseAck(Buffer.from('OK\0'))).not.toThrow();
    for (const bad of ['OK', 'OK\0\0', 'NO\0', '']) {
      expect(() => wire.parseAck(Buffer.from(bad))).toThrow(XenStoreProtocolError);
    }
  });

  it('returns READ values raw, binary and empty included', () => {
    const v = Buffer.from([0, 1, 0xff]);
    expect(wire.parseValue(v)).toEqual(v);
    expect(wire.parseValue(Buffer.alloc(0)).length).toBe(0);
  });

  it('splits DIRECTORY lists, empty payload = no children, refuses a missing final NUL', () => {
    expect(wire.parseDirectory(Buffer.from('a\0bb\0c\0'))).toEqual(['a', 'bb', 'c']);
    expect(wire.parseDirectory(Buffer.alloc(0))).toEqual([]);
    expect(() => wire.parseDirectory(Buffer.from('a\0b'))).toThrow(XenStoreProtocolError);
  });

  it('parses GET_PERMS and refuses bad entries', () => {
    expect(wire.parseGetPerms(Buffer.from('n0\0r5\0b7\0w3\0'))).toEqual([
      { domid: 0, access: 'n' },
      { domid: 5, access: 'r' },
      { domid: 7, access: 'b' },
      { domid: 3, access: 'w' },
    ]);
    expect(() => wire.parseGetPerms(Buffer.from('x0\0'))).toThrow(XenStoreProtocolError);
    expect(() => wire.parseGetPerms(Buffer.alloc(0))).toThrow(XenStoreProtocolError);
  });

  it('parses transaction ids, domain paths and T/F answers', () => {
    expect(wire.parseTransactionId(Buffer.from('42\0'))).toBe(42);
    expect(() => wire.parseTransactionId(Buffer.from('0\0'))).toThrow(XenStoreProtocolError);
    expect(() => wire.parseTransactionId(Buffer.from('4x\0'))).toThrow(XenStoreProtocolError);
    expect(() => wire.parseTransactionId(Buffer.from('42'))).toThrow(XenStoreProtocolError);
    expect(wire.parseDomainPath(Buffer.from('/local/domain/3\0'))).toBe('/local/domain/3');
    expect(wire.parseIsIntroduced(Buffer.from('T\0'))).toBe(true);
    expect(wire.parseIsIntroduced(Buffer.from('F\0'))).toBe(false);
    expect(() => wire.parseIsIntroduced(Buffer.from('Y\0'))).toThrow(XenStoreProtocolError);
    expect(wire.parseNumber(Buffer.from('3\0'), 'GET_FEATURE')).toBe(3);
    expect(() => wire.parseNumber(Buffer.from('-3\0'), 'GET_FEATURE')).toThrow(XenStoreProtocolError);
  });

  it('parses DIRECTORY_PART chunks: generation, children, end marker', () => {
    expect(wire.parseDirectoryPart(Buffer.from('17\0a\0bc\0'))).toEqual({
      generation: '17',
      children: ['a', 'bc'],
      consumed: 5,
      done: false,
    });
    expect(wire.parseDirectoryPart(Buffer.from('17\0d\0\0'))).toEqual({
      generation: '17',
      children: ['d'],
      consumed: 3,
      done: true,
    });
    expect(wire.parseDirectoryPart(Buffer.from('5\0\0'))).toMatchObject({ children: [], done: true });
    expect(() => wire.parseDirectoryPart(Buffer.from('x\0a\0'))).toThrow(XenStoreProtocolError);
    expect(() => wire.parseDirectoryPart(Buffer.from('1\0a\0\0b\0'))).toThrow(XenStoreProtocolError);
  });

  it('maps ERROR payloads to errno names, unknown names to EINVAL', () => {
    expect(wire.parseError(Buffer.from('ENOENT\0'))).toBe('ENOENT');
    expect(wire.parseError(Buffer.from('EAGAIN\0'))).toBe('EAGAIN');
    expect(wire.parseError(Buffer.from('EWHATEVER\0'))).toBe('EINVAL');
    expect(() => wire.parseError(Buffer.from('ENOENT'))).toThrow(XenStoreProtocolError);
  });

  it('parses WATCH_EVENT path and token, refuses fewer than two strings', () => {
    expect(wire.parseWatchEvent(Buffer.from('/a/b\0tok\0'))).toEqual({ path: '/a/b', token: 'tok' });
    expect(() => wire.parseWatchEvent(Buffer.from('/a/b\0tok'))).toThrow(XenStoreProtocolError);
    expect(() => wire.parseWatchEvent(Buffer.from('/a/b\0'))).toThrow(XenStoreProtocolError);
  });

  it('parses quota lists in both shapes', () => {
    expect([...wire.parseQuotaList(Buffer.from('nodes 1000\0watches 128\0'))]).toEqual([
      ['nodes', 1000],
      ['watches', 128],
    ]);
    expect([...wire.parseQuotaList(Buffer.from('nodes\x001000\0'))]).toEqual([['nodes', 1000]]);
    expect(() => wire.parseQuotaList(Buffer.from('nodes\0'))).toThrow(XenStoreProtocolError);
  });
});

describe('FrameDecoder', () => {
  const T = wire.XsType;
  const a = golden(T.READ, 1, 0, 'value');
  const b = golden(T.WATCH_EVENT, 0, 0, '/p\0tok\0');
  const c = golden(T.ERROR, 3, 2, 'ENOENT\0');

  it('decodes coalesced frames from one chunk', () => {
    expect(decodeAll(Buffer.concat([a, b, c]))).toEqual([
      [T.READ, 1, 0, 'value'],
      [T.WATCH_EVENT, 0, 0, '/p\0tok\0'],
      [T.ERROR, 3, 2, 'ENOENT\0'],
    ]);
  });

  it('decodes frames split at every byte boundary', () => {
    const all = Buffer.concat([a, b, c]);
    for (let cut = 1; cut < all.length; cut++) {
      expect(decodeAll(all.subarray(0, cut), all.subarray(cut))).toHaveLength(3);
    }
    const bytes = [...all].map((x) => Buffer.from([x]));
    expect(decodeAll(...bytes)).toHaveLength(3);
  });

  it('decodes an empty-payload frame and a 4096-byte one', () => {
    const big = golden(T.READ, 9, 0, Buffer.alloc(4096, 0x41));
    const got = decodeAll(golden(T.DIRECTORY, 8, 0, ''), big);
    expect(got[0]).toEqual([T.DIRECTORY, 8, 0, '']);
    expect(got[1]?.[3]).toHaveLength(4096);
  });

  const malformed: Array<[string, Buffer]> = [
    ['len > 4096', Buffer.from([...u32(T.READ), ...u32(1), ...u32(0), ...u32(4097)])],
    ['type 20 (removed RESTRICT)', golden(20, 1, 0, 'OK\0')],
    ['unknown type 27', golden(27, 1, 0, 'OK\0')],
    ['XS_INVALID', golden(0xffff, 1, 0, '')],
    ['ERROR without NUL', golden(T.ERROR, 1, 0, 'ENOENT')],
    ['WATCH_EVENT with one string', golden(T.WATCH_EVENT, 0, 0, '/p\0')],
    ['WATCH_EVENT without NUL', golden(T.WATCH_EVENT, 0, 0, '/p')],
  ];
  for (const [name, bytes] of malformed) {
    it(`rejects ${name} and stays broken`, () => {
      const d = new wire.FrameDecoder(() => undefined);
      expect(() => d.push(bytes)).toThrow(XenStoreProtocolError);
      expect(() => d.push(a)).toThrow(XenStoreProtocolError);
    });
  }

  it('rejects an oversized length as soon as the header is complete', () => {
    const d = new wire.FrameDecoder(() => undefined);
    const hdr = Buffer.from([...u32(T.READ), ...u32(1), ...u32(0), ...u32(1 << 30)]);
    expect(() => d.push(hdr.subarray(0, 10))).not.toThrow();
    expect(() => d.push(hdr.subarray(10))).toThrow(/exceeds 4096/);
  });

  it('keeps an incomplete frame until the rest arrives', () => {
    const frames: number[] = [];
    const d = new wire.FrameDecoder((type) => frames.push(type));
    d.push(a.subarray(0, 18));
    expect(frames).toEqual([]);
    expect(d.buffered).toBe(18);
    d.push(a.subarray(18));
    expect(frames).toEqual([T.READ]);
    expect(d.buffered).toBe(0);
  });
});
