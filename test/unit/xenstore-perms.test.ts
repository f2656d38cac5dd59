// Specification of permission lists: the wire strings n0/r5/w3/b1 both ways, and refusals.

import { describe, expect, it } from 'vitest';
import { XenStoreInputError, XenStoreProtocolError } from '../../src/xenstore/errors.js';
import {
  formatPerms,
  parsePerm,
  parsePermList,
  parsePermStrings,
  permsToString,
} from '../../src/xenstore/perms.js';

describe('permission entries', () => {
  it('parses each access letter', () => {
    expect(parsePerm('n0')).toEqual({ domid: 0, access: 'n' });
    expect(parsePerm('r5')).toEqual({ domid: 5, access: 'r' });
    expect(parsePerm('w3')).toEqual({ domid: 3, access: 'w' });
    expect(parsePerm('b1')).toEqual({ domid: 1, access: 'b' });
    expect(parsePerm('b32752')).toEqual({ domid: 32752, access: 'b' });
  });

  it.each(['', 'n', 'x1', 'N0', 'r-1', 'r1a', 'r 1', 'r123456', 'r99999'])('rejects %j', (s) => {
    expect(parsePerm(s)).toBeUndefined();
  });

  it('round-trips lists', () => {
    const perms = parsePermStrings(['n0', 'r5', 'b7']);
    expect(formatPerms(perms)).toEqual(['n0', 'r5', 'b7']);
    expect(permsToString(perms)).toBe('n0 r5 b7');
    expect(parsePermList('n0 r5,b7')).toEqual(perms);
  });

  it('treats a bad server list as a protocol error and bad user input as an input error', () => {
    expect(() => parsePermStrings([])).toThrow(XenStoreProtocolError);
    expect(() => parsePermStrings(['n0', 'q1'])).toThrow(XenStoreProtocolError);
    expect(() => parsePermList('')).toThrow(XenStoreInputError);
    expect(() => parsePermList('n0 z4')).toThrow(XenStoreInputError);
  });

  it('refuses to format an empty list, a bad letter or a reserved domid', () => {
    expect(() => formatPerms([])).toThrow(XenStoreInputError);
    expect(() => formatPerms([{ domid: 0, access: 'x' as 'n' }])).toThrow(/perms\[0\]/);
    expect(() => formatPerms([{ domid: 0x7ff0, access: 'r' }])).toThrow(XenStoreInputError);
    expect(() => formatPerms([{ domid: 1.5, access: 'r' }])).toThrow(XenStoreInputError);
  });
});
