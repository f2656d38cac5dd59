// buildMocks(): runs `make -s -C xen-mocks` once at a time across processes (a mkdir lock in
// build/), so vitest's global setup and any test file may call it in parallel.
import { execFile } from 'node:child_process';
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildDir, mocksDir } from './paths.js';

const execFileP = promisify(execFile);

export class MockBuildError extends Error {
  override readonly name = 'MockBuildError';
}

const LOCK_TIMEOUT_MS = 120_000;
const STALE_LOCK_MS = 120_000;

async function acquire(lock: string): Promise<void> {
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    try {
      await mkdir(lock);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    // A build killed half way leaves its lock: break it once it is clearly stale.
    const st = await stat(lock).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) await rmdir(lock).catch(() => undefined);
    if (Date.now() > deadline) throw new MockBuildError(`timed out waiting for build lock ${lock}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Builds xen-mocks/build/* (no-op when up to date). Throws MockBuildError with make's output. */
export async function buildMocks(): Promise<void> {
  await mkdir(buildDir(), { recursive: true });
  const lock = join(buildDir(), '.lock');
  await acquire(lock);
  try {
    await execFileP('make', ['-s', '-C', mocksDir()], { timeout: LOCK_TIMEOUT_MS, maxBuffer: 4 << 20 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new MockBuildError(
      `make -C ${mocksDir()} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
  } finally {
    await rmdir(lock).catch(() => undefined);
  }
}
