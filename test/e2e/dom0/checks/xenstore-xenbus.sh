#!/bin/sh
# Check: the project's libxenstore binding (FFI) over /dev/xen/xenbus (the kernel's ring to
# xenstored, as when xenstored runs in a stub domain) against dom0's real xenstored.
. "$E2E_LIB"
[ -e /dev/xen/xenbus ] || fail "no /dev/xen/xenbus in dom0"
cd /mnt/host || fail "no /mnt/host"
XENSTORED_PATH=/dev/xen/xenbus "$E2E_NODE" "$E2E_DIR/dom0/xenstore-check.js" xenbus
