// Specification of the client-side input checks: paths as xenstored's is_valid_nodename()
// accepts them, special watch paths, domids, tokens, value sizes; every refusal names its field.

import { describe, expect, it } from 'vitest';
import { XenStoreInputError } from '../../src/xenstore/errors.js';
import {
  ABS_PATH_MAX,
  DOMID_MAX,
  REL_PATH_MAX,
  validateDomid,
  validateMfn,
  validatePath,
  validateToken,
  validateU32,
  validateValue,
  validateWatchPath,
} from '../../src/xenstore/paths.js';

function fieldOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof XenStoreInputError) return err.field;
    throw err;
  }
  return undefined;
}

describe('validatePath', () => {
  it('accepts absolute, relative and root paths with the allowed characters', () => {
    for (const p of ['/', '/local/domain/0', 'device/vbd/768', 'a', '/tool/x_y-z@1', '/A9']) {
      expect(validatePath(p)).toBe(p);
    }
  });

  it.each([
    ['', 'empty'],
    ['/a//b', 'double slash'],
    ['//', 'double slash at root'],
    ['/a/', 'trailing slash'],
    ['a/', 'relative trailing slash'],
    ['/a b', 'space'],
    ['/a.b', 'dot'],
    ['/a\0b', 'NUL'],
    ['/é', 'non-ASCII'],
    ['@releaseDomain', 'special outside a watch'],
    ['@foo', 'unknown special'],
  ])('refuses %j (%s), naming the field', (p) => {
    expect(fieldOf(() => validatePath(p, 'backendPath'))).toBe('backendPath');
  });

  it('refuses non-strings', () => {
    expect(fieldOf(() => validatePath(undefined))).toBe('path');
    expect(fieldOf(() => validatePath(42))).toBe('path');
  });

  it('limits absolute paths to 3072 and relative ones to 2048 characters', () => {
    const abs = (n: number): string => '/' + 'a'.repeat(n - 1);
    expect(() => validatePath(abs(ABS_PATH_MAX))).not.toThrow();
    expect(() => validatePath(abs(ABS_PATH_MAX + 1))).toThrow(XenStoreInputError);
    expect(() => validatePath('a'.repeat(REL_PATH_MAX))).not.toThrow();
    expect(() => validatePath('a'.repeat(REL_PATH_MAX + 1))).toThrow(/relative maximum 2048/);
  });
});

describe('validateWatchPath', () => {
  it('accepts node paths and exactly the two special paths', () => {
    expect(validateWatchPath('@introduceDomain')).toBe('@introduceDomain');
    expect(validateWatchPath('@releaseDomain')).toBe('@releaseDomain');
    expect(validateWatchPath('/local/domain')).toBe('/local/domain');
    expect(validateWatchPath('device')).toBe('device');
  });
  it('refuses other special names and bad paths', () => {
    expect(fieldOf(() => validateWatchPath('@introduceDomains'))).toBe('path');
    expect(fieldOf(() => validateWatchPath('@'))).toBe('path');
    expect(fieldOf(() => validateWatchPath('/a//b'))).toBe('path');
  });
});

describe('validateDomid and numbers', () => {
  it('accepts 0..0x7FEF', () => {
    expect(validateDomid(0)).toBe(0);
    expect(validateDomid(DOMID_MAX)).toBe(0x7fef);
  });
  it.each([[-1], [0x7ff0], [32767], [1.5], [NaN], ['5'], [undefined]])('refuses %j', (d) => {
    expect(fieldOf(() => validateDomid(d, 'target'))).toBe('target');
  });
  it('checks ports and mfns', () => {
    expect(validateU32(0xffffffff, 'port')).toBe(0xffffffff);
    expect(fieldOf(() => validateU32(-1, 'port'))).toBe('port');
    expect(validateMfn(2n ** 63n)).toBe(2n ** 63n);
    expect(fieldOf(() => validateMfn(2n ** 64n))).toBe('mfn');
    expect(fieldOf(() => validateMfn(-1))).toBe('mfn');
  });
});

describe('validateToken', () => {
  it('accepts a plain token, refuses empty, NUL and huge ones', () => {
    expect(validateToken('t1')).toBe('t1');
    expect(fieldOf(() => validateToken(''))).toBe('token');
    expect(fieldOf(() => validateToken('a\0b'))).toBe('token');
    expect(fieldOf(() => validateToken('x'.repeat(2000)))).toBe('token');
  });
});

describe('validateValue', () => {
  it('keeps path + NUL + value within 4096 bytes', () => {
    const path = '/local/domain/1/x';
    const room = 4096 - path.length - 1;
    expect(validateValue(path, Buffer.alloc(room)).length).toBe(room);
    expect(fieldOf(() => validateValue(path, Buffer.alloc(room + 1)))).toBe('value');
    // UTF-8 counts bytes, not characters.
    expect(fieldOf(() => validateValue(path, 'é'.repeat(room / 2 + 1)))).toBe('value');
  });
  it('refuses values that are neither string nor Buffer', () => {
    expect(fieldOf(() => validateValue('/a', 5))).toBe('value');
  });
});
