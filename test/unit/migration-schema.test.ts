// Specification of the job request: every field's allowed values, characters and lengths, the
// domid key (dom0 and reserved ids refused), and targets that are host names, IPv4 or IPv6 only.
import { describe, expect, it } from 'vitest';
import { JobValidationError } from '../../src/migration/errors.js';
import { classifyTarget, parseDomid, validateRequest } from '../../src/migration/job-schema.js';

const good = { id: 'job-1', target: 'host-b.example.org', mode: 'auto', suspend: 'agent', live: '1' };
function req(over: Record<string, string | undefined>): Map<string, string> {
  const m = new Map<string, string>();
  for (const [k, v] of Object.entries({ ...good, ...over })) if (v !== undefined) m.set(k, v);
  return m;
}
function fieldError(over: Record<string, string | undefined>): JobValidationError {
  try {
    validateRequest(req(over));
  } catch (err) {
    if (err instanceof JobValidationError) return err;
    throw err;
  }
  throw new Error('expected JobValidationError');
}

describe('job request validation', () => {
  it('accepts a complete request and applies defaults for suspend and live', () => {
    const r = validateRequest(req({ suspend: undefined, live: undefined, deadline: '600' }));
    expect(r).toEqual({
      id: 'job-1',
      target: 'host-b.example.org',
      targetKind: 'hostname',
      mode: 'auto',
      suspend: 'agent',
      live: true,
      deadlineSec: 600,
    });
  });

  it.each([
    [{ id: undefined }, 'id', 'missing'],
    [{ id: '' }, 'id', 'must be 1-64'],
    [{ id: '-x' }, 'id', 'must be 1-64'],
    [{ id: 'a b' }, 'id', 'must be 1-64'],
    [{ id: 'x'.repeat(65) }, 'id', 'must be 1-64'],
    [{ id: 'a;rm' }, 'id', 'must be 1-64'],
    [{ target: undefined }, 'target', 'missing'],
    [{ target: 'host b' }, 'target', 'not a host name'],
    [{ target: '-oProxyCommand=x' }, 'target', 'not a host name'],
    [{ target: 'user@host' }, 'target', 'not a host name'],
    [{ target: 'host:22' }, 'target', 'not a host name'],
    [{ target: '[::1]' }, 'target', 'not a host name'],
    [{ target: 'fe80::1%eth0' }, 'target', 'not a host name'],
    [{ target: '999.1.1.1' }, 'target', 'not a host name'],
    [{ target: 'a..b' }, 'target', 'not a host name'],
    [{ target: 'host-.example' }, 'target', 'not a host name'],
    [{ target: `${'a'.repeat(64)}.org` }, 'target', 'not a host name'],
    [{ target: 'x'.repeat(254) }, 'target', 'not a host name'],
    [{ target: 'host/path' }, 'target', 'not a host name'],
    [{ mode: undefined }, 'mode', 'missing'],
    [{ mode: 'AUTO' }, 'mode', 'auto or steps'],
    [{ suspend: 'guest' }, 'suspend', 'agent or toolstack'],
    [{ live: 'yes' }, 'live', '1 or 0'],
    [{ deadline: '0' }, 'deadline', 'whole seconds'],
    [{ deadline: '1.5' }, 'deadline', 'whole seconds'],
    [{ deadline: '086400' }, 'deadline', 'whole seconds'],
    [{ deadline: '86401' }, 'deadline', 'whole seconds'],
    [{ extra: '1' }, 'extra', 'unknown request field'],
  ])('refuses %j (field %s)', (over, field, reason) => {
    const err = fieldError(over);
    expect(err.field).toBe(field);
    expect(err.reason).toContain(reason);
    expect(err.message).toMatch(new RegExp(`^request/${field}: `));
  });

  it.each([
    ['host', 'hostname'],
    ['host-b.example.org', 'hostname'],
    ['123host', 'hostname'],
    ['192.0.2.10', 'ipv4'],
    ['2001:db8::1', 'ipv6'],
    ['::1', 'ipv6'],
    ['::ffff:192.0.2.1', 'ipv6'],
  ])('classifies target %s as %s', (t, kind) => {
    expect(classifyTarget(t)).toBe(kind);
  });

  it.each([
    ['1', 1],
    ['32751', 32751],
  ])('parses domid key %s', (k, d) => {
    expect(parseDomid(k)).toBe(d);
  });

  it.each([
    ['0', 'dom0 cannot be migrated'],
    ['32752', 'reserved'],
    ['01', 'not a decimal'],
    ['abc', 'not a decimal'],
    ['-1', 'not a decimal'],
    ['123456', 'not a decimal'],
  ])('refuses domid key %s', (k, reason) => {
    expect(() => parseDomid(k)).toThrow(reason);
  });
});
