// Runs the XenStore conformance suite over the socket client (connectXenStore), as dom0 on
// xenstored's socket and as guest N on the harness's ring bridge for N.

import { connectXenStore } from '../../src/xenstore/index.js';
import { defineConformance, guestHandle } from './xenstore-conformance.js';

defineConformance('socket', (h, asGuest) =>
  connectXenStore({
    path: asGuest === undefined ? h.socketPath : guestHandle(h, asGuest).socketPath,
    timeoutMs: 20_000,
  }),
);
