// README's main job: `devmigrate demo` on a machine without Xen migrates a guest with several
// devices, shows a refusal (vtpm without a tool) and an abort (a guest that will not suspend,
// left running), and exits 0. Run as the built program, as a user would.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { builtCli } from './agent-world.js';

describe('devmigrate demo', () => {
  it('runs the three scenes on a simulated host and exits 0', () => {
    const r = spawnSync(process.execPath, [builtCli(), 'demo'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = r.stdout;
    expect(out).toMatch(/1\. migrate web01[\s\S]*=> migrated \(job state done\)/);
    expect(out).toMatch(/vtpm\/0\s+REFUSED\s+vtpm needs an external tool/);
    expect(out).toMatch(
      /2\. migrate vault01[\s\S]*=> refused, nothing was changed[\s\S]*guest is RUNNING at the source/,
    );
    expect(out).toMatch(
      /3\. migrate stubborn01[\s\S]*=> aborted: devices recovered[\s\S]*guest is RUNNING at the source/,
    );
    expect(out).toContain('agent stopped (exit 0)');
    expect(out).toContain('demo finished: every scene ended as expected');
  }, 130_000);
});
