// The agent on a dom0 whose Xen it does not support (here 4.16, read from a stand-in for
// /sys/hypervisor): it connects, then refuses to start with one plain line naming the running
// version and the supported ones, and exits 78 (systemd's unit does not restart on it).
import { spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import { builtCli } from './agent-world.js';

describe('agent on an unsupported Xen', () => {
  let xs: XenstoredHarness;
  let dir: string;

  beforeAll(async () => {
    builtCli(); // fails clearly when dist/ is missing
    dir = await mkdtemp(join(tmpdir(), 'agent-xen-'));
    xs = await startXenstored();
  });
  afterAll(async () => {
    await xs?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const agentOn = async (major: string, minor: string) => {
    const sys = join(dir, `sys-${major}.${minor}`);
    await mkdir(join(sys, 'version'), { recursive: true });
    await writeFile(join(sys, 'type'), 'xen\n');
    await writeFile(join(sys, 'version/major'), `${major}\n`);
    await writeFile(join(sys, 'version/minor'), `${minor}\n`);
    const cfg = join(dir, 'devmigrate.json');
    await writeFile(cfg, '{}\n');
    return spawnSync(process.execPath, [builtCli(), 'agent', '--config', cfg, '--log-format', 'journal'], {
      // The simulated libraries stay named: an override never lifts the version check.
      env: { ...xs.env, DEVMIGRATE_SYS_HYPERVISOR: sys },
      encoding: 'utf8',
      timeout: 30_000,
    });
  };

  it('Xen 4.16: exit 78 with the running version and the supported list', async () => {
    const r = await agentOn('4', '16');
    expect(r.status).toBe(78);
    expect(r.stdout).toMatch(
      /^<3>not starting: Xen 4\.16 is not supported: xen-devmigrate supports Xen 4\.17, 4\.18, 4\.19, 4\.20, 4\.21, 4\.22 on x86_64 /m,
    );
  });

  it('Xen 4.23 (newer than any verified): refused the same way', async () => {
    const r = await agentOn('4', '23');
    expect(r.status).toBe(78);
    expect(r.stdout).toMatch(/not starting: Xen 4\.23 is not supported/);
  });
});
