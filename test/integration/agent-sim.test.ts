// `devmigrate sim up/down`: a simulated Xen host in the background whose printed environment
// lets xenstore-utils (and the agent) reach it, and which `sim down` stops without leftovers.
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { builtCli } from './agent-world.js';

const dir = mkdtempSync(join(tmpdir(), 'sim-cli-'));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

afterAll(() => {
  spawnSync(process.execPath, [builtCli(), 'sim', 'down', '--dir', dir], { timeout: 30_000 });
  rmSync(dir, { recursive: true, force: true });
});

describe('devmigrate sim', () => {
  it('up prints the environment, xenstore-utils see the host, a second up is refused, down stops it', () => {
    const up = spawnSync(process.execPath, [builtCli(), 'sim', 'up', '--dir', dir], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(up.status, up.stderr).toBe(0);
    const env: Record<string, string> = {};
    for (const m of up.stdout.matchAll(/^export ([A-Z_]+)=(\S+)$/gm)) env[m[1] ?? ''] = m[2] ?? '';
    expect(Object.keys(env).sort()).toEqual([
      'DEVMIGRATE_LIBXENCTRL',
      'DEVMIGRATE_LIBXENGUEST',
      'XENSTORED_PATH',
      'XEN_SIM_STATE',
    ]);
    const name = execFileSync('xenstore-read', ['/local/domain/1/name'], {
      env: { ...process.env, ...env },
      encoding: 'utf8',
    });
    expect(name.trim()).toBe('web01');
    const pid = Number(readFileSync(join(dir, 'sim.pid'), 'utf8'));
    expect(alive(pid)).toBe(true);
    const again = spawnSync(process.execPath, [builtCli(), 'sim', 'up', '--dir', dir], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(again.status).toBe(7);
    const down = spawnSync(process.execPath, [builtCli(), 'sim', 'down', '--dir', dir], {
      encoding: 'utf8',
      timeout: 30_000,
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
  }, 90_000);
});
