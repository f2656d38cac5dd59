// Specification of the external tool runner: argv only (shell metacharacters reach the tool as
// data or are refused before spawn), the xend argv contract, exit status decides, timeouts kill
// (SIGTERM, then SIGKILL for a tool that ignores it), output lines go to the log.
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkToolValue,
  externalDeviceMigrateArgs,
  ExternalToolMigrator,
  runTool,
  ToolInputError,
} from '../../src/devices/external-tool.js';
import type { DeviceRef, Logger, OpContext } from '../../src/devices/types.js';

let dir: string;
const lines: string[] = [];
const log: Logger = {
  error: (m) => lines.push(`E ${m}`),
  warn: (m) => lines.push(`W ${m}`),
  info: (m) => lines.push(`I ${m}`),
  debug: () => undefined,
};

async function script(name: string, body: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, `#!/bin/sh\n${body}\n`);
  await chmod(p, 0o755);
  return p;
}

function ctx(over: Partial<OpContext['job']> = {}, signal = new AbortController().signal): OpContext {
  return {
    job: { jobId: 'j1', domid: 7, target: 'host-b', live: true, domainName: 'guest7', ...over },
    signal,
    log,
    progress: () => undefined,
  };
}

const dev: DeviceRef = {
  domid: 7,
  backendDomid: 0,
  type: 'vtpm',
  devid: '0',
  backendPath: '/local/domain/0/backend/vtpm/7/0',
  backend: {},
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmigrate-tool-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('external tool', () => {
  it('builds external-device-migrate argv and passes it verbatim (no shell)', async () => {
    const out = join(dir, 'argv.txt');
    const tool = await script('echo-args.sh', `for a in "$@"; do echo "$a"; done > ${out}; echo "Step done"`);
    const args = externalDeviceMigrateArgs({
      step: 2,
      host: 'host-b',
      domname: 'guest7',
      type: 'vbd',
      subtype: 'phy',
      recover: true,
    });
    expect(args).toEqual([
      '-step',
      '2',
      '-host',
      'host-b',
      '-domname',
      'guest7',
      '-type',
      'vbd',
      '-subtype',
      'phy',
      '-recover',
    ]);
    const r = await runTool(tool, args, { timeoutMs: 5000, killGraceMs: 200, log });
    expect(r.code).toBe(0);
    expect((await readFile(out, 'utf8')).trim().split('\n')).toEqual(args);
    expect(lines.some((l) => l.includes('Step done'))).toBe(true);
  });

  it('a metacharacter in any argv word is refused before spawn', async () => {
    const marker = join(dir, 'pwned');
    const tool = await script('noop.sh', 'exit 0');
    // A rejection (not a synchronous throw): callers' async error paths see it.
    await expect(
      runTool(tool, ['-host', `x;touch ${marker}`], { timeoutMs: 1000, killGraceMs: 100, log }),
    ).rejects.toBeInstanceOf(ToolInputError);
    await expect(stat(marker)).rejects.toThrow();
  });

  it.each([
    'a b',
    'a;b',
    'a|b',
    '$(x)',
    '`x`',
    'a&b',
    "a'b",
    'a"b',
    'a>b',
    '-rf',
    '',
    'x'.repeat(300),
    'a\nb',
  ])('checkToolValue refuses %j', (v) => {
    expect(() => checkToolValue('-domname', v)).toThrow(ToolInputError);
  });

  it('the migrator refuses a bad domain name or host before spawning anything', async () => {
    const marker = join(dir, 'ran');
    const tool = await script('marker.sh', `touch ${marker}`);
    const m = new ExternalToolMigrator(
      dev,
      { path: tool, contract: 'external-device-migrate', timeoutMs: 2000, passSubtype: false },
      100,
    );
    const r1 = await m.test(ctx({ domainName: 'evil;reboot' }));
    expect(r1).toEqual({ ok: false, reason: expect.stringContaining('-domname') });
    const r2 = await m.test(ctx({ domainName: undefined }));
    expect(r2.ok).toBe(false);
    await expect(m.preSuspend(ctx({ target: '$(reboot)' }))).rejects.toThrow(/-host/);
    await expect(stat(marker)).rejects.toThrow();
  });

  it('the backend type (-subtype) and the device type (-type) are checked like every other value', async () => {
    const marker = join(dir, 'ran-subtype');
    const tool = await script('marker2.sh', `touch ${marker}`);
    const cfg = {
      path: tool,
      contract: 'external-device-migrate' as const,
      timeoutMs: 2000,
      passSubtype: true,
    };
    const evilSub = new ExternalToolMigrator({ ...dev, backend: { type: 'file;touch /tmp/x' } }, cfg, 100);
    expect(await evilSub.test(ctx())).toEqual({ ok: false, reason: expect.stringContaining('-subtype') });
    await expect(evilSub.recover(ctx(), 'preSuspend')).rejects.toThrow(/-subtype/);
    const evilType = new ExternalToolMigrator({ ...dev, type: 'vtpm$(id)' }, cfg, 100);
    expect(await evilType.test(ctx())).toEqual({ ok: false, reason: expect.stringContaining('-type') });
    await expect(stat(marker)).rejects.toThrow();
  });

  it('the exit status decides; the reason carries the last output line', async () => {
    const tool = await script('veto.sh', 'echo "Error: no vTPM manager at the target" >&2; exit 3');
    const m = new ExternalToolMigrator(
      dev,
      { path: tool, contract: 'external-device-migrate', timeoutMs: 2000, passSubtype: false },
      100,
    );
    const r = await m.test(ctx());
    expect(r).toEqual({
      ok: false,
      reason: expect.stringContaining('exit status 3: Error: no vTPM manager at the target'),
    });
    await expect(m.sync(ctx())).rejects.toThrow(/sync: exit status 3/);
  });

  it('a hanging tool is killed at its timeout; one ignoring SIGTERM gets SIGKILL', async () => {
    const hang = await script('hang.sh', 'sleep 30');
    const t0 = Date.now();
    const r = await runTool(hang, [], { timeoutMs: 200, killGraceMs: 200, log });
    expect(r.timedOut).toBe(true);
    expect(r.code).not.toBe(0);
    const stubborn = await script('stubborn.sh', "trap '' TERM; while :; do sleep 0.05; done");
    const r2 = await runTool(stubborn, [], { timeoutMs: 200, killGraceMs: 200, log });
    expect(r2.timedOut).toBe(true);
    expect(r2.signal).toBe('SIGKILL');
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('an abort signal stops the tool', async () => {
    const hang = await script('hang2.sh', 'sleep 30');
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('job aborted')), 100);
    const r = await runTool(hang, [], { timeoutMs: 10_000, killGraceMs: 200, log, signal: ac.signal });
    expect(r.aborted).toBe(true);
  });

  it('an operation aborted while its tool was being recorded never starts the tool', async () => {
    const marker = join(dir, 'late-tool-ran');
    const tool = await script('late.sh', `touch ${marker}`);
    const ac = new AbortController();
    let ended = 0;
    const run = runTool(tool, [], {
      timeoutMs: 10_000,
      killGraceMs: 200,
      log,
      signal: ac.signal,
      // The record's write (XenStore) completes only after the abort.
      track: async () => {
        ac.abort(new Error('job aborted'));
        await new Promise((r) => setTimeout(r, 20));
        return { env: {}, spawned: () => undefined, ended: () => void (ended += 1) };
      },
    });
    await expect(run).rejects.toThrow(/not run: the operation ended/);
    await new Promise((r) => setTimeout(r, 200));
    await expect(stat(marker)).rejects.toThrow();
    expect(ended).toBe(1);
  });

  it('a missing executable is a DeviceOpError, not a crash', async () => {
    await expect(
      runTool(join(dir, 'absent'), [], { timeoutMs: 1000, killGraceMs: 100, log }),
    ).rejects.toThrow(/cannot run/);
  });
});
