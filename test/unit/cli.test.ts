// The CLI's pure parts as specifications: exit codes for bad command lines and configs, command
// word checks (no shell, no odd characters), {host} expansion, backoff bounds, human rendering,
// and the engine log lines' job context.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { main } from '../../src/cli/main.js';
import { ExitCode } from '../../src/cli/exit-codes.js';
import { expand, parseCommand } from '../../src/cli/commands/migrate.js';
import { checkTarget } from '../../src/cli/job-client.js';
import { diskLines } from '../../src/cli/commands/config.js';
import { validateConfig } from '../../src/config/schema.js';
import { COMMANDS, GLOBAL_OPTIONS } from '../../src/cli/command-spec.js';
import { parseDestination, parseSshCommand } from '../../src/cli/target.js';
import { deviceLines, jobSummary } from '../../src/cli/render.js';
import { LiveDisplay } from '../../src/cli/live-view.js';
import { Backoff } from '../../src/agent/backoff.js';
import { engineLogger } from '../../src/agent/engine-adapter.js';
import { createLogger, LineCapture } from '../../src/agent/logger.js';

class Sink extends Writable {
  text = '';
  isTTY = false;
  override _write(c: Buffer | string, _e: BufferEncoding, cb: () => void): void {
    this.text += c.toString();
    cb();
  }
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = new Sink();
  const err = new Sink();
  const code = await main(argv, { out, err });
  return { code, out: out.text, err: err.text };
}

describe('command line', () => {
  // One style for every bad command line: "devmigrate: <command>: <what>", the usage as a hint, 64.
  const BAD: [string[], RegExp][] = [
    [
      ['frobnicate'],
      /^devmigrate: unknown command "frobnicate" \(one of agent, migrate, check, status, report, abort, step, config, sim, demo\)$/m,
    ],
    [['migrate', 'web01'], /^devmigrate: migrate: missing <\[user@\]host>$/m],
    [['migrate'], /^devmigrate: migrate: missing <domain> <\[user@\]host>$/m],
    [['migrate', 'web01', 'host-b', 'extra'], /^devmigrate: migrate: unexpected argument "extra"$/m],
    [['migrate', 'web01', 'host-b', '--bogus-flag'], /^devmigrate: migrate: unknown option --bogus-flag$/m],
    [
      ['agent', '--log-format', 'xml'],
      /^devmigrate: agent: --log-format "xml" is not one of auto, journal, human, json$/m,
    ],
    [
      ['agent', '--log-level', 'chatty'],
      /^devmigrate: agent: --log-level "chatty" is not one of error, warn, notice, info, debug$/m,
    ],
    [
      ['step', 'web01', 'jump'],
      /^devmigrate: step: <step> "jump" is not one of test, pre-suspend, post-suspend, sync, recover, abort$/m,
    ],
    [['status', 'web01', '--timeout'], /^devmigrate: status: --timeout needs a value$/m],
    [
      ['check', 'web01', '--timeout', 'soon'],
      /^devmigrate: check: --timeout must be a positive number of seconds/m,
    ],
    [['sim', 'up'], /^devmigrate: sim up: missing --dir$/m],
    [['sim', 'fly'], /^devmigrate: sim: unknown subcommand "fly" \(one of up, down\)$/m],
    [
      ['migrate', 'web01', 'root@host;reboot'],
      /^devmigrate: destination "root@host;reboot": "host;reboot" is not a host name/m,
    ],
    [
      ['migrate', '-s', 'ssh $(id)', 'web01', 'host-b'],
      /^devmigrate: -s \(ssh command\): "\$\(id\)" has characters that are not allowed/m,
    ],
    [['migrate', '-s', '', 'web01', 'host-b'], /^devmigrate: -s "": xl would run the destination itself/m],
    [[], /^devmigrate: give a command \(devmigrate --help lists them\)$/m],
  ];
  it.each(BAD)('%j is a usage error (64) in the one style', async (argv, msg) => {
    const r = await run(argv);
    expect(r.code, r.err).toBe(ExitCode.USAGE);
    expect(r.err).toMatch(msg);
    expect(r.err.split('\n')[0]).toMatch(/^devmigrate: /);
    const j = await run(['--json', ...argv]);
    expect(JSON.parse(j.out)).toMatchObject({ ok: false, exit: 64 });
  });

  it('a usage error of a command shows its synopsis as a hint', async () => {
    const r = await run(['migrate', 'web01']);
    expect(r.err).toContain('  - usage: devmigrate migrate [options] <domain> <[user@]host>');
  });

  it('--version prints the version and the job protocol; --help is captured, names the manual and every command', async () => {
    const v = await run(['--version']);
    expect(v.code).toBe(0);
    expect(v.out).toMatch(/^devmigrate \d+\.\d+\.\d+ \(job protocol 1\)\n$/);
    const h = await run(['--help']);
    expect(h.code).toBe(0);
    expect(h.out).toContain('man devmigrate');
    expect(h.out).not.toContain('docs/');
    for (const c of [
      'agent',
      'migrate',
      'check',
      'status',
      'report',
      'abort',
      'step',
      'config',
      'sim',
      'demo',
    ])
      expect(h.out).toContain(`devmigrate ${c}`);
    const m = await run(['migrate', '--help']);
    expect(m.out).toMatch(/-s, --ssh-command/);
    expect(m.out).toContain('--timeout');
    const a = await run(['agent', '--help']);
    expect(a.out).toMatch(/choices: "auto", "journal", "human", "json"/);
  });

  it('every option and argument of every command has a description; fixed sets have their choices', () => {
    for (const c of [...COMMANDS, { path: ['(global)'], options: GLOBAL_OPTIONS, positionals: [] }]) {
      for (const o of c.options)
        expect(o.describe.length, `${c.path.join(' ')} --${o.name}`).toBeGreaterThan(10);
      for (const p of c.positionals)
        expect(p.describe.length, `${c.path.join(' ')} <${p.name}>`).toBeGreaterThan(5);
    }
    const opt = (cmd: string, name: string) =>
      COMMANDS.find((c) => c.path.join(' ') === cmd)?.options.find((o) => o.name === name);
    expect(opt('agent', 'log-format')?.choices).toEqual(['auto', 'journal', 'human', 'json']);
    expect(opt('agent', 'log-level')?.choices).toEqual(['error', 'warn', 'notice', 'info', 'debug']);
    expect(COMMANDS.find((c) => c.path[0] === 'step')?.positionals[1]?.choices).toContain('pre-suspend');
  });

  it("xl's destination [user@]host: the host alone goes into the job; user names and hosts are checked", () => {
    expect(parseDestination('root@host-b.example.org')).toEqual({
      spec: 'root@host-b.example.org',
      host: 'host-b.example.org',
      user: 'root',
    });
    expect(parseDestination('2001:db8::1')).toEqual({ spec: '2001:db8::1', host: '2001:db8::1' });
    expect(parseDestination('admin@192.0.2.7').host).toBe('192.0.2.7');
    expect(() => parseDestination('ro ot@host')).toThrow(/not a user name/);
    expect(() => parseDestination('@host')).toThrow(/not a user name/);
    expect(() => parseDestination('root@[::1]')).toThrow(/not a host name/);
  });

  it("xl's -s is kept as words; a shell-unsafe word or an empty command is refused", () => {
    expect(parseSshCommand('ssh -p 2222 -o BatchMode=yes')).toEqual([
      'ssh',
      '-p',
      '2222',
      '-o',
      'BatchMode=yes',
    ]);
    expect(() => parseSshCommand('ssh -p 2222; reboot')).toThrow(/not allowed/);
    expect(() => parseSshCommand("ssh -o 'x y'")).toThrow(/not allowed/);
    expect(() => parseSshCommand('  ')).toThrow(/xl would run the destination/);
  });

  it('a target host with shell characters is refused before anything is written (64)', async () => {
    const r = await run(['--json', 'check', 'web01', 'host;rm -rf /']);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(JSON.parse(r.out)).toMatchObject({ ok: false, exit: 64 });
    expect(() => checkTarget('host-b.example.org')).not.toThrow();
    expect(() => checkTarget('2001:db8::1')).not.toThrow();
    expect(() => checkTarget('[::1]')).toThrow();
  });
});

describe('config check', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-cfg-'));
  const bad = join(dir, 'bad.json');
  const good = join(dir, 'good.json');
  writeFileSync(bad, JSON.stringify({ limits: { maxJobs: 0 } }));
  writeFileSync(good, JSON.stringify({ logLevel: 'debug', disks: { sharedPathPrefixes: ['/srv/nfs/'] } }));

  it('names the key and the reason of a malformed config and exits 78', async () => {
    const r = await run(['config', 'check', '--config', bad]);
    expect(r.code).toBe(ExitCode.CONFIG);
    expect(r.err).toContain('limits.maxJobs: must be between 1 and 1000, got 0');
    const j = await run(['--json', 'config', 'check', '--config', bad]);
    expect(JSON.parse(j.out)).toMatchObject({ ok: false, key: 'limits.maxJobs' });
  });

  it('accepts a good config (0) and summarises it', async () => {
    const r = await run(['config', 'check', '--config', good]);
    expect(r.code).toBe(ExitCode.OK);
    expect(r.out).toContain('log level debug');
    // How each kind of disk moves, as the disk policy will decide it.
    expect(r.out).toContain('shared storage (nothing to move): under /srv/nfs/; on nfs, nfs4');
    expect(r.out).toContain('disks served by QEMU (qdisk): no mirror (disks.mirror unset): refused');
    expect(r.out).toContain('other local file images: refused (disks.copy unset)');
    rmSync(dir, { recursive: true, force: true });
  });

  it('names the mirror and the copy method when both are configured', () => {
    const cfg = validateConfig({ disks: { copy: { method: 'rsync', rsh: ['/usr/bin/ssh'] } } });
    expect(diskLines(cfg).slice(1)).toEqual([
      'disks served by QEMU (qdisk): no mirror (disks.mirror unset): copied by rsync',
      'other local file images: copied by rsync (destination root /)',
    ]);
    const both = validateConfig({
      disks: { copy: { method: 'rsync' }, mirror: { rsh: ['/usr/bin/ssh'], remoteRoot: '/srv/dest' } },
    });
    expect(diskLines(both)[1]).toBe(
      'disks served by QEMU (qdisk): mirrored (write-blocking, destination root /srv/dest, remote shell /usr/bin/ssh)',
    );
  });
});

describe('external commands', () => {
  it('are split into words and refuse shell metacharacters', () => {
    expect(parseCommand(' xl  migrate -p ', 'x')).toEqual(['xl', 'migrate', '-p']);
    expect(() => parseCommand('xl migrate; reboot', 'x')).toThrow(/not allowed/);
    expect(() => parseCommand('xl $(id)', 'x')).toThrow(/not allowed/);
    expect(() => parseCommand('   ', 'x')).toThrow(/empty/);
  });

  it('{host} becomes the destination as given ([user@]host)', () => {
    expect(expand(['ssh', '{host}', 'xl', 'unpause'], 'root@host-b')).toEqual([
      'ssh',
      'root@host-b',
      'xl',
      'unpause',
    ]);
  });
});

describe('reconnect backoff', () => {
  it('grows exponentially with jitter, never above the cap, never zero, and resets', () => {
    const lo = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0 });
    expect([lo.next(), lo.next(), lo.next(), lo.next(), lo.next()]).toEqual([50, 100, 200, 400, 500]);
    const hi = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.999999 });
    const seq = Array.from({ length: 40 }, () => hi.next());
    expect(Math.max(...seq)).toBe(1000);
    expect(seq[0]).toBe(100);
    hi.reset();
    expect(hi.attempts).toBe(0);
    expect(hi.next()).toBe(100);
  });
});

describe('rendering', () => {
  const job = {
    domid: 2,
    name: 'vault01',
    id: 'j1',
    target: 'host-b',
    mode: 'auto',
    state: 'refused',
    error: 'refused by 1 device(s)',
    devices: [
      { type: 'vif', devid: '0', state: 'tested' },
      { type: 'vtpm', devid: '0', state: 'refused', reason: 'no tool configured' },
    ],
  };

  it('lists every device with its result and reason', () => {
    expect(deviceLines(job)).toEqual([
      '  vif/0     tested    ',
      '  vtpm/0    REFUSED     no tool configured',
    ]);
    expect(jobSummary(job)[0]).toBe('domain vault01 (id 2), job j1, -> host-b, mode auto');
    expect(jobSummary(job)).toContain('  error: refused by 1 device(s)');
  });

  it('the live view: plain lines per change off a TTY; on a TTY a block redrawn in place and erased at the end', () => {
    const plain = new Sink();
    let now = 0;
    const p = new LiveDisplay(plain, true, () => now);
    p.update({ ...job, state: 'testing', devices: [] });
    p.update({ ...job, state: 'testing', progress: '1/2', devices: [] });
    p.update({ ...job, state: 'refused', devices: [] });
    expect(plain.text).toBe('  testing\n  refused\n');
    const tty = new Sink();
    tty.isTTY = true;
    const t = new LiveDisplay(tty, true, () => now);
    t.update({ ...job, state: 'syncing', progress: '3/4', devices: [] });
    now = 1500;
    t.end();
    expect(tty.text).toBe(
      '\r\x1b[2Kvault01 -> host-b  syncing  3/4 devices  0.00 s\n' + '\x1b[1A\r\x1b[2K\n\x1b[1A',
    );
  });
});

describe('engine log context', () => {
  it("keeps the engine's metadata as fields and reads nothing out of the message text", async () => {
    const cap = new LineCapture();
    const log = engineLogger(createLogger({ format: 'json', stream: cap }));
    log.info('job 5 (cli-x): testing -> tested', { domid: 5, job: 'cli-x', phase: 'testing' });
    log.warn('job 7: vtpm/0 refused');
    await new Promise((r) => setImmediate(r));
    const [a, b] = cap.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(a).toMatchObject({ level: 'info', domid: 5, job: 'cli-x', phase: 'testing' });
    expect(a?.['device']).toBeUndefined();
    // No parsing: a line without metadata carries no job fields, whatever its text says.
    expect(b?.['domid']).toBeUndefined();
    expect(b?.['device']).toBeUndefined();
  });
});
