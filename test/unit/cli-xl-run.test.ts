// xl-run's view of xl's process tree (read from /proc): what yieldCpu() lowers the priority of.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childrenOf, processTree } from '../../src/cli/xl-run.js';

describe('processTree', () => {
  let proc: string;
  const stat = async (pid: number, comm: string, ppid: number): Promise<void> => {
    await mkdir(join(proc, String(pid)));
    await writeFile(
      join(proc, String(pid), 'stat'),
      `${pid} (${comm}) S ${ppid} ${pid} ${pid} 0 -1 4194560\n`,
    );
  };
  beforeAll(async () => {
    proc = await mkdtemp(join(tmpdir(), 'proc-'));
    await stat(1, 'systemd', 0);
    await stat(100, 'sh', 1); // the --migrate-command wrapper
    await stat(101, 'xl', 100);
    // A command name with spaces and parentheses: the ppid is read after the last ')'.
    await stat(102, 'x) (2 S 1', 101);
    await stat(103, 'libxl-save-hel', 101);
    await stat(104, 'ssh', 102);
    await stat(200, 'xl', 1); // another xl: not ours
    await mkdir(join(proc, 'self'));
    await mkdir(join(proc, '300')); // ended between readdir and read: no stat file
  });
  afterAll(async () => {
    await rm(proc, { recursive: true, force: true });
  });

  it('holds the process and every descendant, nothing else', () => {
    expect(processTree(100, proc).sort((a, b) => a - b)).toEqual([100, 101, 102, 103, 104]);
    expect(processTree(104, proc)).toEqual([104]);
    expect(
      childrenOf(101, proc)
        .map((c) => c.comm)
        .sort(),
    ).toEqual(['libxl-save-hel', 'x) (2 S 1']);
  });

  it('is the process alone when /proc cannot be read', () => {
    expect(processTree(100, join(proc, 'missing'))).toEqual([100]);
  });
});
