// README's main job: `devmigrate demo` on a machine without Xen tells one story, the same way
// every run: a check and a migration through the stand-in xl (a local disk copied by rsync), a
// refusal, and a guest that will not suspend (left running), each migration with its timeline.
// Run as the built program, as a user would; twice, and the two outputs are compared with the
// timings, pids and job ids masked.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { builtCli } from './agent-world.js';

/** What may differ between runs: durations, sizes, clock times, pids, job ids. */
function maskTimings(text: string): string {
  return text
    .replace(/cli-[a-z0-9]+-[0-9a-f]+/g, 'cli-JOB')
    .replace(/[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}/g, 'HH:MM:SS.mmm')
    .replace(/[0-9]+(\.[0-9]+)? [KMGT]?iB\/s/g, 'N iB/s')
    .replace(/[0-9]+\.[0-9]+ (s|MiB)/g, 'N $1')
    .replace(/pid [0-9]+/g, 'pid N')
    .replace(/ {2,}/g, ' ');
}

function demo(): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [builtCli(), 'demo'], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('devmigrate demo', () => {
  it('tells the same story every run and exits 0', () => {
    const a = demo();
    expect(a.status, a.out).toBe(0);
    const out = a.out;
    expect(out).toMatch(
      /1\. Can web01 go to host-b\?[\s\S]*web01 \(id 1\) -> host-b: can migrate[\s\S]*=> exit 0 as expected/,
    );
    expect(out).toMatch(/\$ devmigrate migrate -s sim-ssh web01 host-b/);
    expect(out).toMatch(/running: xl migrate -p -s sim-ssh web01 host-b/);
    expect(out).toMatch(/outcome: done \(migrated: the guest runs on host-b\)/);
    expect(out).toMatch(
      /total [0-9.]+ s; downtime [0-9.]+ s \(stopped [0-9:.]+, unpaused at the destination; devices ready after/,
    );
    expect(out).toMatch(/copied: 24\.0 MiB/);
    expect(out).toMatch(
      /timeline of web01[\s\S]*guest stopped[\s\S]*unpaused at the destination +\+[0-9.]+ s +downtime/,
    );
    expect(out).toMatch(/\$ sim-ssh host-b xl list web01\n +Name +ID[^\n]*\n +web01 +- +512 +1 +r-----/);
    expect(out).toMatch(/vtpm\/0 +REFUSED +vtpm needs an external tool/);
    expect(out).toMatch(/3\. db01[\s\S]*=> exit 3 as expected/);
    expect(out).toMatch(
      /4\. Migrate stubborn01[\s\S]*xl said: Migration failed, failed to suspend at sender\.[\s\S]*=> exit 4 as expected[\s\S]*the guest is RUNNING at the source/,
    );
    expect(out).toContain('agent stopped (exit 0)');
    expect(out).toContain('demo finished: every scene ended as expected');
    // The contradictions of old: one word per outcome, no path to a file it then removes.
    for (const line of out.split('\n').filter((l) => /outcome: /.test(l))) {
      const word = /outcome: (\w+)/.exec(line)?.[1];
      for (const other of ['done', 'aborted', 'failed', 'refused'].filter((w) => w !== word))
        expect(line, line).not.toMatch(new RegExp(`\\b${other}\\b`));
    }
    expect(out).not.toMatch(/devmigrate-demo-/);
    expect(out).not.toMatch(/refused \d+\/\d+/);

    const b = demo();
    expect(b.status, b.out).toBe(0);
    expect(maskTimings(b.out)).toBe(maskTimings(a.out));
  }, 250_000);
});
