// Specification of the configuration file: safe defaults, and every malformed value refused
// with an error naming the key path and the reason.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';

function errorOf(raw: unknown): ConfigError {
  try {
    validateConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('config', () => {
  it('an empty object gives the safe defaults (unknown devices refused, no copy method)', () => {
    const c = validateConfig({});
    expect(c).toEqual(defaultConfig());
    expect(c.unknownDevices).toBe('refuse');
    expect(c.disks.copy).toBeUndefined();
    expect(c.limits.maxJobs).toBe(6);
  });

  it('accepts the documented example file', async () => {
    const { readFile } = await import('node:fs/promises');
    const text = await readFile(new URL('../../config/devmigrate.example.json', import.meta.url), 'utf8');
    const c = parseConfig(text);
    expect(c.disks.copy?.method).toBe('rsync');
    expect(c.devices.vtpm?.tool?.path).toBe('/etc/xen/scripts/external-device-migrate');
    expect(c.devices.vtpm?.tool?.contract).toBe('external-device-migrate');
  });

  it.each([
    [{ bogus: 1 }, 'bogus', 'unknown key'],
    [{ logLevel: 'loud' }, 'logLevel', 'must be one of'],
    [{ unknownDevices: 'allow' }, 'unknownDevices', 'must be one of'],
    [{ backendDomains: [0, -1] }, 'backendDomains[1]', 'between 0 and 32751'],
    [{ backendDomains: 'dom0' }, 'backendDomains', 'must be an array'],
    [{ timeouts: { testMs: 'soon' } }, 'timeouts.testMs', 'must be an integer'],
    [{ timeouts: { testMs: 1.5 } }, 'timeouts.testMs', 'must be an integer'],
    [{ timeouts: { testMs: 1 } }, 'timeouts.testMs', 'between 10'],
    [{ timeouts: { tesMs: 100 } }, 'timeouts.tesMs', 'unknown key'],
    [{ limits: { maxJobs: 0 } }, 'limits.maxJobs', 'between 1'],
    [{ limits: { maxDeviceOps: 4, reservedCriticalOps: 4 } }, 'limits.reservedCriticalOps', 'smaller than'],
    [{ disks: { sharedPathPrefixes: ['relative/'] } }, 'disks.sharedPathPrefixes[0]', 'absolute path'],
    [{ disks: { sharedPathPrefixes: ['/a/../b'] } }, 'disks.sharedPathPrefixes[0]', 'absolute path'],
    [{ disks: { sharedFsTypes: ['NFS here'] } }, 'disks.sharedFsTypes[0]', 'filesystem type'],
    [{ disks: { copy: { method: 'scp' } } }, 'disks.copy.method', 'must be one of'],
    [
      { disks: { copy: { method: 'rsync', rsh: ['ssh', '-o', 'ProxyCommand=$(x)'] } } },
      'disks.copy.rsh[2]',
      'plain word',
    ],
    [{ disks: { copy: { method: 'rsync', rsh: [] } } }, 'disks.copy.rsh', 'must name a command'],
    [{ disks: { copy: { method: 'rsync', extraArgs: ['-z'] } } }, 'disks.copy.extraArgs[0]', 'long option'],
    [{ disks: { copy: { method: 'rsync', remoteRoot: 'x' } } }, 'disks.copy.remoteRoot', 'absolute path'],
    [{ devices: { 'Bad Type': {} } }, 'devices.Bad Type', 'device type'],
    [{ devices: { vtpm: { tool: {} } } }, 'devices.vtpm.tool.path', 'is required'],
    [{ devices: { vtpm: { tool: { path: 'tool.sh' } } } }, 'devices.vtpm.tool.path', 'absolute path'],
    [{ devices: { vtpm: { tool: { path: '/x;rm -rf /' } } } }, 'devices.vtpm.tool.path', 'absolute path'],
    [
      { devices: { vtpm: { tool: { path: '/x', contract: 'other' } } } },
      'devices.vtpm.tool.contract',
      'must be one of',
    ],
    [
      { devices: { vtpm: { tool: { path: '/x', timeoutMs: 5 } } } },
      'devices.vtpm.tool.timeoutMs',
      'between 100',
    ],
    [
      { devices: { vtpm: { tool: { path: '/x', passSubtype: 'yes' } } } },
      'devices.vtpm.tool.passSubtype',
      'true or false',
    ],
    [{ devices: { vbd: { timeoutMs: -1 } } }, 'devices.vbd.timeoutMs', 'between 10'],
    [{ xenstoredPath: 'socket' }, 'xenstoredPath', 'absolute path'],
  ])('refuses %j at %s', (raw, keyPath, reason) => {
    const err = errorOf(raw);
    expect(err.keyPath).toBe(keyPath);
    expect(err.reason).toContain(reason);
    expect(err.message).toContain(keyPath);
  });

  it('refuses a root that is not an object', () => {
    expect(errorOf([]).reason).toContain('must be an object');
  });

  it('loadConfig: missing default file -> defaults; missing named file, bad JSON -> ConfigError', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'devmigrate-config-'));
    try {
      await expect(loadConfig(join(dir, 'absent.json'))).rejects.toBeInstanceOf(ConfigError);
      const bad = join(dir, 'bad.json');
      await writeFile(bad, '{ "logLevel": ');
      await expect(loadConfig(bad)).rejects.toThrow(/not valid JSON/);
      const good = join(dir, 'good.json');
      await writeFile(good, JSON.stringify({ limits: { maxJobs: 3 } }));
      expect((await loadConfig(good)).limits.maxJobs).toBe(3);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
