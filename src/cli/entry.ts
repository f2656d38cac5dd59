// Where this program's entry point is, for the processes it starts itself (the agent of the demo
// and of `sim up --agent`, the `sim serve` supervisor): the same build, the same node.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function cliEntry(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), 'main.js');
}
