// Specification of the rsync copy's argv through the real tool runner: the documented default
// remote shell (`ssh -o BatchMode=yes`, several words joined for rsync's -e) and an IPv6 target
// (`[addr]:path`) reach rsync, while shell metacharacters never do. Regression: the runner's
// plain-word check used to refuse both, so every copy with the default config failed.
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/config/schema.js';
import { ToolInputError } from '../../src/devices/external-tool.js';
import { RsyncDiskMigrator, rsyncArgOk } from '../../src/devices/rsync-copy.js';
import type { Logger, OpContext } from '../../src/devices/types.js';

let dir: string;
const log: Logger = {
  error: () => undefined,
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};
function ctx(target: string): OpContext {
  return {
    job: { jobId: 'j', domid: 5, target, live: true, domainName: 'g5' },
    signal: new AbortController().signal,
    log,
    progress: () => undefined,
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmigrate-rsync-argv-'));
});
afterAll(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

describe('rsync argv through the tool runner', () => {
  it('default remote shell and an IPv6 target reach rsync as separate argv entries', async () => {
    // A stand-in rsync that records its argv one per line.
    const fake = join(dir, 'rsync');
    await writeFile(fake, `#!/bin/sh\nfor a in "$@"; do echo "$a"; done > ${dir}/argv\n`);
    await chmod(fake, 0o755);
    const copy = validateConfig({ disks: { copy: { method: 'rsync', rsync: fake } } }).disks.copy;
    expect(copy?.rsh).toEqual(['ssh', '-o', 'BatchMode=yes']);
    if (copy === undefined) throw new Error('no copy config');
    const m = new RsyncDiskMigrator('/var/lib/xen/a.img', 10, copy, 5000, 200);
    await m.preSuspend(ctx('2001:db8::2'));
    const argv = (await readFile(join(dir, 'argv'), 'utf8')).trim().split('\n');
    expect(argv.slice(-5)).toEqual([
      '-e',
      'ssh -o BatchMode=yes',
      '--',
      '/var/lib/xen/a.img',
      '[2001:db8::2]:/var/lib/xen/a.img',
    ]);
    await m.preSuspend(ctx('host-b.example.org'));
    expect((await readFile(join(dir, 'argv'), 'utf8')).trim().split('\n').at(-1)).toBe(
      'host-b.example.org:/var/lib/xen/a.img',
    );
  });

  it('refuses quotes, $, ;, |, &, backquotes, control characters and doubled spaces', () => {
    for (const bad of ['a;b', 'a|b', '$(x)', '`x`', "a'b", 'a"b', 'a&b', 'a\nb', 'a  b', ' a', 'a ', '']) {
      expect(rsyncArgOk(bad), JSON.stringify(bad)).toBe(false);
    }
    for (const ok of ['ssh -o BatchMode=yes', '[2001:db8::2]:/x', '--bwlimit=10M', '/a/b.img']) {
      expect(rsyncArgOk(ok), ok).toBe(true);
    }
  });

  it('an unsafe value is refused before anything is spawned (rejection, not a throw)', async () => {
    const fake = join(dir, 'never');
    const copy = {
      method: 'rsync' as const,
      rsync: fake,
      rsh: ['ssh'],
      remoteRoot: '/',
      extraArgs: [],
    };
    const m = new RsyncDiskMigrator('/var/a.img', 10, copy, 5000, 200);
    // The job target is validated upstream; a value that slipped through must still not run.
    const p = m.preSuspend(ctx('host;reboot'));
    await expect(p).rejects.toBeInstanceOf(ToolInputError);
  });
});
