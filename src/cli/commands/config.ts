// `devmigrate config check`: validates the configuration file the agent would load, naming the
// key and the reason of the first problem (exit 78), or summarising what is configured.
import { existsSync } from 'node:fs';
import { loadConfig } from '../../config/load.js';
import { ConfigError, DEFAULT_CONFIG_PATH } from '../../config/schema.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, type CliContext } from '../context.js';

export async function configCheckCommand(ctx: CliContext): Promise<ExitCodeValue> {
  const file = ctx.configPath ?? DEFAULT_CONFIG_PATH;
  try {
    const cfg = await loadConfig(ctx.configPath);
    if (ctx.json) printJson(ctx, { ok: true, file, config: cfg });
    else {
      println(ctx, existsSync(file) ? `${file}: ok` : `${file}: not present, built-in defaults apply`);
      const tools = Object.entries(cfg.devices)
        .filter(([, d]) => d.tool !== undefined)
        .map(([t, d]) => `${t}=${d.tool?.path ?? ''}`);
      println(
        ctx,
        `  log level ${cfg.logLevel}; unknown devices: ${cfg.unknownDevices}; at most ${cfg.limits.maxJobs} jobs`,
      );
      println(
        ctx,
        `  disk copy: ${cfg.disks.copy ? cfg.disks.copy.method : 'none (local file-backed disks are refused)'}`,
      );
      println(
        ctx,
        `  device tools: ${tools.length > 0 ? tools.join(', ') : 'none (vtpm and vusb are refused)'}`,
      );
    }
    return ExitCode.OK;
  } catch (err) {
    if (err instanceof ConfigError) {
      if (ctx.json) {
        printJson(ctx, { ok: false, file, key: err.keyPath || '(root)', reason: err.reason });
        return ExitCode.CONFIG;
      }
      throw new CliError(`${file}: ${err.keyPath || '(root)'}: ${err.reason}`, ExitCode.CONFIG);
    }
    throw err;
  }
}
