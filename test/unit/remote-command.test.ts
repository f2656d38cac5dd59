// The destination's commands of `devmigrate migrate` (src/cli/remote-command.ts), against a
// stand-in remote shell that does what ssh does with its command words (joins them, runs them
// with sh -c) and a stand-in xl that records its argv: the armed unpause runs xl only on its
// word, never on an end of input, and says so when its remote side is not a shell.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ArmedCommand,
  armedUnpauseArgv,
  armedUnpauseScript,
  runBounded,
  shellQuote,
} from '../../src/cli/remote-command.js';

let dir: string;
let ssh: string;
let argvShell: string;
let calls: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'remote-command-'));
  calls = join(dir, 'xl-calls');
  // ssh: "<host> <words...>" -> the remote login shell runs the joined words.
  ssh = join(dir, 'fake-ssh');
  await writeFile(ssh, `#!/bin/sh\nshift\nexport PATH=${dir}:"$PATH"\nexec sh -c "$*"\n`);
  // A "remote shell" that is not a shell: runs its words as argv (what some stand-ins do).
  argvShell = join(dir, 'argv-shell');
  await writeFile(argvShell, '#!/bin/sh\nshift\nexec "$@"\n');
  await writeFile(
    join(dir, 'xl'),
    `#!/bin/sh\nfor a; do printf '[%s]' "$a"; done >>${calls}\necho >>${calls}\n`,
  );
  for (const f of [ssh, argvShell, join(dir, 'xl')]) await chmod(f, 0o755);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const xlCalls = async (): Promise<string[]> =>
  existsSync(calls) ? (await readFile(calls, 'utf8')).split('\n').filter(Boolean) : [];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('shellQuote', () => {
  it('leaves plain words alone and quotes the rest for a POSIX shell', () => {
    expect(shellQuote('web01')).toBe('web01');
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's;rm -rf /")).toBe("'it'\\''s;rm -rf /'");
    expect(shellQuote('$(reboot)')).toBe("'$(reboot)'");
  });
});

describe('armedUnpauseArgv', () => {
  it("xl's default remote shell gets BatchMode (no second password prompt beside xl's)", () => {
    expect(armedUnpauseArgv(undefined, 'root@host-b', 'web01')).toEqual([
      'ssh',
      '-o',
      'BatchMode=yes',
      'root@host-b',
      'read -r w && [ "$w" = unpause ] && exec xl unpause web01',
    ]);
  });
  it('a -s command is used as given', () => {
    expect(armedUnpauseArgv(['ssh', '-p', '2222'], 'host-b', 'web 01')).toEqual([
      'ssh',
      '-p',
      '2222',
      'host-b',
      `read -r w && [ "$w" = unpause ] && exec xl unpause 'web 01'`,
    ]);
  });
});

describe('ArmedCommand (the unpause, connected in advance)', () => {
  it('runs xl unpause <domain> at the destination on fire(), the name as one word', async () => {
    await rm(calls, { force: true });
    const name = "odd name;'$(touch x)";
    const armed = new ArmedCommand([ssh, 'host-b', armedUnpauseScript(name)]);
    await sleep(300);
    expect(armed.ready).toBe(true);
    expect(await xlCalls()).toEqual([]); // nothing before the word
    const r = await armed.fire(10_000);
    expect(r.code).toBe(0);
    expect(await xlCalls()).toEqual([`[unpause][${name}]`]);
    expect(armed.ready).toBe(false);
    expect(existsSync(join(process.cwd(), 'x'))).toBe(false);
  });

  it('disarm() ends it without running xl', async () => {
    await rm(calls, { force: true });
    const armed = new ArmedCommand([ssh, 'host-b', armedUnpauseScript('web01')]);
    await sleep(300);
    armed.disarm();
    const r = await armed.fire(10_000); // after disarm: only how it ended
    expect(r.code).not.toBe(0);
    expect(await xlCalls()).toEqual([]);
  });

  it('a remote side that is not a shell ends early; ready says so and the output is kept', async () => {
    const armed = new ArmedCommand([argvShell, 'host-b', armedUnpauseScript('web01')]);
    for (let i = 0; i < 100 && armed.ready; i++) await sleep(50);
    expect(armed.ready).toBe(false);
    const early = await armed.endedEarly();
    expect(early?.code).not.toBe(0);
    expect(early?.output).toMatch(/not found|No such file/);
  });

  it('a command that cannot start is not ready, with the reason', async () => {
    const armed = new ArmedCommand([join(dir, 'no-such-ssh'), 'host-b', armedUnpauseScript('web01')]);
    for (let i = 0; i < 100 && armed.ready; i++) await sleep(50);
    expect(armed.ready).toBe(false);
    expect((await armed.endedEarly())?.output).toMatch(/ENOENT/);
  });

  it('fire() is bounded: a remote command that hangs is killed at the bound', async () => {
    const hang = join(dir, 'hang-ssh');
    await writeFile(hang, '#!/bin/sh\nread -r w\nexec sleep 30\n');
    await chmod(hang, 0o755);
    const armed = new ArmedCommand([hang, 'host-b', 'ignored']);
    const t0 = Date.now();
    const r = await armed.fire(300);
    expect(r.signal).toBe('SIGTERM');
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});

describe('runBounded', () => {
  it('returns the code and the output', async () => {
    const r = await runBounded(['sh', '-c', 'echo said; exit 3'], 5_000);
    expect(r).toMatchObject({ code: 3, output: 'said\n' });
  });
  it('kills at the bound', async () => {
    const r = await runBounded(['sleep', '30'], 200);
    expect(r.signal).toBe('SIGTERM');
  });
  it('an empty command is exit 127', async () => {
    expect((await runBounded([], 1_000)).code).toBe(127);
  });
});
