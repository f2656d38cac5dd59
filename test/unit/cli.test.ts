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
import { deviceLines, jobSummary, ProgressDisplay } from '../../src/cli/render.js';
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
  it('an unknown command is a usage error (64)', async () => {
    const r = await run(['frobnicate']);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.err).toMatch(/Unknown argument: frobnicate/);
  });

  it('a missing argument is a usage error (64)', async () => {
    expect((await run(['migrate', 'web01'])).code).toBe(ExitCode.USAGE);
  });

  it('a target host with shell characters is refused before anything is written (64)', async () => {
    const r = await run(['--json', 'check', 'web01', 'host;rm -rf /']);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(JSON.parse(r.out)).toMatchObject({ ok: false, exit: 64 });
    expect(() => checkTarget('host-b.example.org')).not.toThrow();
    expect(() => checkTarget('2001:db8::1')).not.toThrow();
    expect(() => checkTarget('[::1]')).toThrow();
  });

  it('an unknown step is refused (64)', async () => {
    expect((await run(['step', 'web01', 'jump'])).code).toBe(ExitCode.USAGE);
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
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('external commands', () => {
  it('are split into words and refuse shell metacharacters', () => {
    expect(parseCommand(' xl  migrate -p ', 'x')).toEqual(['xl', 'migrate', '-p']);
    expect(() => parseCommand('xl migrate; reboot', 'x')).toThrow(/not allowed/);
    expect(() => parseCommand('xl $(id)', 'x')).toThrow(/not allowed/);
    expect(() => parseCommand('   ', 'x')).toThrow(/empty/);
  });

  it('{host} becomes the destination', () => {
    expect(expand(['ssh', '{host}', 'xl', 'unpause'], 'host-b')).toEqual(['ssh', 'host-b', 'xl', 'unpause']);
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

  it('progress: one line per state off a TTY, rewritten in place on a TTY', () => {
    const plain = new Sink();
    const p = new ProgressDisplay(plain);
    p.update({ ...job, state: 'testing', devices: [] });
    p.update({ ...job, state: 'testing', progress: '1/2', devices: [] });
    p.update({ ...job, state: 'refused', devices: [] });
    expect(plain.text).toBe('  testing\n  refused\n');
    const tty = new Sink();
    tty.isTTY = true;
    const t = new ProgressDisplay(tty);
    t.update({ ...job, state: 'syncing', progress: '3/4', devices: [] });
    t.end();
    expect(tty.text).toBe('\r\x1b[2Ksyncing 3/4\n');
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
