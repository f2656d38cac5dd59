// What every CLI command shares: where output goes, --json, the config path, and a XenStore
// connection that is always closed again. Connection trouble becomes the UNAVAILABLE exit code.
import type { Writable } from 'node:stream';
import { loadConfig } from '../config/load.js';
import { ConfigError, type DevMigrateConfig } from '../config/schema.js';
import { connectAnyTransport } from '../agent/connect.js';
import type { XenStore } from '../xenstore/types.js';
import { CliError, ExitCode } from './exit-codes.js';
import type { Interrupt } from './interrupt.js';

export interface CliContext {
  json: boolean;
  out: Writable & { isTTY?: boolean; columns?: number };
  err: Writable;
  configPath?: string;
  /** Ctrl-C (SIGINT), SIGTERM, SIGHUP while the command runs; absent where nobody can interrupt. */
  interrupt?: Interrupt;
  /** The live view of waiting commands (default on, except with --json); the demo turns it off. */
  live?: boolean;
}

export function println(ctx: CliContext, line = ''): void {
  ctx.out.write(`${line}\n`);
}

export function printJson(ctx: CliContext, value: unknown): void {
  ctx.out.write(`${JSON.stringify(value)}\n`);
}

export async function cliConfig(ctx: CliContext): Promise<DevMigrateConfig> {
  try {
    return await loadConfig(ctx.configPath);
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new CliError(`configuration refused: ${err.keyPath || '(root)'}: ${err.reason}`, ExitCode.CONFIG);
    }
    throw err;
  }
}

export async function withXenStore<T>(ctx: CliContext, fn: (xs: XenStore) => Promise<T>): Promise<T> {
  const cfg = await cliConfig(ctx);
  let xs: XenStore;
  try {
    xs = await connectAnyTransport(cfg);
  } catch (err) {
    throw new CliError(
      `cannot reach xenstored: ${err instanceof Error ? err.message : String(err)}`,
      ExitCode.UNAVAILABLE,
      [
        'on a dom0: systemctl status xen.service (or xenstored.service)',
        'with a simulated host: eval "$(devmigrate sim up --dir DIR)" first',
      ],
    );
  }
  try {
    return await fn(xs);
  } finally {
    await xs.close().catch(() => undefined);
  }
}
