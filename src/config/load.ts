// Reads and validates the configuration file. A missing file at the default path means "all
// defaults"; a missing file named explicitly, bad JSON or a bad value is a ConfigError.
import { readFile } from 'node:fs/promises';
import {
  ConfigError,
  DEFAULT_CONFIG_PATH,
  defaultConfig,
  validateConfig,
  type DevMigrateConfig,
} from './schema.js';

export async function loadConfig(path?: string): Promise<DevMigrateConfig> {
  const file = path ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (path === undefined && (err as NodeJS.ErrnoException).code === 'ENOENT') return defaultConfig();
    throw new ConfigError('', `cannot read ${file}: ${(err as Error).message}`);
  }
  return parseConfig(text, file);
}

export function parseConfig(text: string, file = '(config)'): DevMigrateConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError('', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  return validateConfig(raw);
}
