// Tests run against the real xenstored: each file starts its own daemon, so files may run in
// parallel, but one machine has 2 cores; keep the pool small and the timeouts generous.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
