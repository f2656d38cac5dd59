// Runs the XenStore conformance suite over the libxenstore (FFI) client, as dom0 on xenstored's
// socket and as guest N on the harness's ring bridge for N, in both call modes: 'auto' (bounded
// synchronous calls on a socket) and 'async' (every call on libuv's pool, as on /dev/xen/xenbus).

import { buildMocks } from '../../xen-mocks/harness.js';
import { beforeAll } from 'vitest';
import { openFfiXenStore } from '../../src/xenstore/ffi-client.js';
import { defineConformance, guestHandle } from './xenstore-conformance.js';

beforeAll(async () => {
  await buildMocks();
});

for (const mode of ['auto', 'async'] as const) {
  defineConformance(`libxenstore-${mode}`, (h, asGuest) =>
    openFfiXenStore({
      path: asGuest === undefined ? h.socketPath : guestHandle(h, asGuest).socketPath,
      mode,
      callTimeoutMs: 20_000,
    }),
  );
}
