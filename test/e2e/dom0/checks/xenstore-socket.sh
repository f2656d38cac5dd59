#!/bin/sh
# Check: the project's compiled XenStore client (socket transport) against dom0's real xenstored.
. "$E2E_LIB"
cd /mnt/host || fail "no /mnt/host"
"$E2E_NODE" "$E2E_DIR/dom0/xenstore-check.js" socket
