// Tests run against the real xenstored: each file starts its own daemon in its own folder, so
// files may run in parallel, but the machine has 2 cores: keep the pool small and the timeouts
// generous. The global setup builds xen-mocks (the shim, simulated libraries, ring bridge) once.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
