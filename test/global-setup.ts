// vitest global setup: builds xen-mocks/build (xenstored shim, simulated libxenctrl/libxenguest,
// ring bridge, xs-tool) once before any test file starts a xenstored.
import { buildMocks } from '../xen-mocks/harness.js';

export default async function setup(): Promise<void> {
  await buildMocks();
}
