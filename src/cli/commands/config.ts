// `devmigrate config check`: validates the configuration file the agent would load, naming the
// key and the reason of the first problem (exit 78), or summarising what is configured.
import { existsSync } from 'node:fs';
import { loadConfig } from '../../config/load.js';
import { ConfigError, DEFAULT_CONFIG_PATH, type DevMigrateConfig } from '../../config/schema.js';
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
      for (const line of diskLines(cfg)) println(ctx, `  ${line}`);
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

/** How each kind of disk will be moved, in the order the disk policy decides it. */
export function diskLines(cfg: DevMigrateConfig): string[] {
  const { copy, mirror, sharedPathPrefixes, sharedFsTypes } = cfg.disks;
  const prefixes = sharedPathPrefixes.length > 0 ? `under ${sharedPathPrefixes.join(', ')}; ` : '';
  return [
    `shared storage (nothing to move): ${prefixes}on ${sharedFsTypes.join(', ')}`,
    `disks served by QEMU (qdisk): ${
      mirror === undefined
        ? `no mirror (disks.mirror unset): ${copy === undefined ? 'refused' : `copied by ${copy.method}`}`
        : `mirrored (${mirror.copyMode}, destination root ${mirror.remoteRoot}, remote shell ${mirror.rsh[0] ?? ''})`
    }`,
    `other local file images: ${
      copy === undefined
        ? 'refused (disks.copy unset)'
        : `copied by ${copy.method} (destination root ${copy.remoteRoot})`
    }`,
  ];
}
