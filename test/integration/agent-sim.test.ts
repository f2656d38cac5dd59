// `devmigrate sim up/down`: a simulated Xen host in the background whose printed environment lets
// xenstore-utils, the stand-in xl and devmigrate reach it, and which `sim down` stops without
// leftovers; and docs/operations.md's walkthrough, run as written: the default host's guests
// migrate end to end with the commands an operator types.
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { builtCli } from './agent-world.js';

const dir = mkdtempSync(join(tmpdir(), 'sim-cli-'));
const walk = mkdtempSync(join(tmpdir(), 'sim-walk-'));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

afterAll(() => {
  for (const d of [dir, walk]) {
    spawnSync(process.execPath, [builtCli(), 'sim', 'down', '--dir', d], { timeout: 60_000 });
    rmSync(d, { recursive: true, force: true });
  }
});

/** The fenced block of docs/operations.md between the sim-walkthrough markers. */
function walkthrough(): string {
  const doc = readFileSync(fileURLToPath(new URL('../../docs/operations.md', import.meta.url)), 'utf8');
  const m = /<!-- sim-walkthrough:start -->\s*```sh\n([\s\S]*?)```\s*<!-- sim-walkthrough:end -->/.exec(doc);
  if (m?.[1] === undefined) throw new Error('docs/operations.md has no sim-walkthrough block');
  return m[1];
}

describe('devmigrate sim', () => {
  it('up prints the environment, the stand-in xl and xenstore-utils see the host, a second up is refused, down stops it', () => {
    const up = spawnSync(process.execPath, [builtCli(), 'sim', 'up', '--dir', dir], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(up.status, up.stderr).toBe(0);
    const env: Record<string, string> = {};
    for (const m of up.stdout.matchAll(/^export ([A-Z_]+)=(\S+)$/gm)) env[m[1] ?? ''] = m[2] ?? '';
    expect(Object.keys(env).sort()).toEqual([
      'DEVMIGRATE_CONFIG',
      'DEVMIGRATE_LIBXENCTRL',
      'DEVMIGRATE_LIBXENGUEST',
      'PATH',
      'XENSTORED_PATH',
      'XEN_SIM_STATE',
    ]);
    expect(env['PATH']).toBe(`${join(dir, 'bin')}:"$PATH"`);
    // It says how to use it: the stand-in xl, sim-ssh, and the commands to try.
    expect(up.stdout).toContain('# `xl` is a stand-in (migrate, unpause, list)');
    expect(up.stdout).toContain('devmigrate migrate -s sim-ssh web01 host-b');
    const shellEnv = { ...process.env, ...env, PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}` };
    const name = execFileSync('xenstore-read', ['/local/domain/1/name'], { env: shellEnv, encoding: 'utf8' });
    expect(name.trim()).toBe('web01');
    const xl = execFileSync('xl', ['list'], { env: shellEnv, encoding: 'utf8' });
    expect(xl).toMatch(/^web01 +1 +512 +1 +r-----/m);
    expect(xl).toMatch(/^app01 +4 /m);
    const pid = Number(readFileSync(join(dir, 'sim.pid'), 'utf8'));
    expect(alive(pid)).toBe(true);
    const again = spawnSync(process.execPath, [builtCli(), 'sim', 'up', '--dir', dir], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(again.status).toBe(7);
    const down = spawnSync(process.execPath, [builtCli(), 'sim', 'down', '--dir', dir], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(down.status).toBe(0);
    expect(down.stdout).toContain('stopped');
    expect(alive(pid)).toBe(false);
    expect(existsSync(join(dir, 'sim.pid'))).toBe(false);
    // Nothing answers on the socket any more, and the xenstored it started is gone too.
    const read = spawnSync('xenstore-read', ['/local/domain/1/name'], {
      env: { ...process.env, ...env },
      timeout: 10_000,
    });
    expect(read.status).not.toBe(0);
    const xsdPid = Number(/xenstored pid (\d+)/.exec(readFileSync(join(dir, 'sim.log'), 'utf8'))?.[1]);
    expect(xsdPid).toBeGreaterThan(0);
    expect(alive(xsdPid)).toBe(false);
  }, 120_000);

  it("docs/operations.md's walkthrough migrates web01 end to end and refuses db01", () => {
    const script = [
      'set -u',
      `cd ${JSON.stringify(join(fileURLToPath(new URL('../..', import.meta.url))))}`,
      walkthrough().split('/tmp/sim').join(walk),
    ].join('\n');
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 150_000 });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).toContain('web01 (id 1) -> host-b: can migrate');
    expect(out).toContain('migrated web01 to host-b; it is running there');
    expect(out).toMatch(/outcome: done \(migrated: the guest runs on host-b\)/);
    expect(out).toMatch(/downtime [0-9.]+ s \(stopped/);
    expect(out).toMatch(/copied: 128\.0 MiB/);
    expect(out).toMatch(/^web01 +- +512 +1 +r-----/m); // sim-ssh host-b xl list
    expect(out).toContain('db01 (id 2) -> host-b: REFUSED');
    expect(out).toMatch(/pci\/0 +REFUSED/);
    expect(out).toContain(`simulated host in ${walk} stopped`);
    const svg = readFileSync(join(walk, 'web01.svg'), 'utf8');
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain('class="stopped-window"');
    // The copy arrived where the sim's remote shell put it, byte for byte.
    const src = readFileSync(join(walk, 'images', 'web01-data.img'));
    const dst = readFileSync(join(walk, 'remote', walk, 'images', 'web01-data.img'));
    expect(dst.equals(src)).toBe(true);
    expect(existsSync(join(walk, 'sim.pid'))).toBe(false);
  }, 180_000);
});
