#!/bin/sh
# Check: dom0 is up as a Xen control domain: xenstored answers a write/read through the
# xenstore-utils, and `xl list` (libxenlight over libxenctrl) shows Domain-0.
. "$E2E_LIB"
xenstore-write /e2e/hello world || fail "xenstore-write failed"
v=$(xenstore-read /e2e/hello) || fail "xenstore-read failed"
[ "$v" = world ] || fail "xenstore-read gave '$v', wrote 'world'"
xl list >/tmp/xl-list 2>&1 || fail "xl list failed: $(tail -n 1 /tmp/xl-list)"
cat /tmp/xl-list
line=$(grep '^Domain-0 ' /tmp/xl-list) || fail "xl list shows no Domain-0"
xl info | grep -E '^(xen_version|xen_caps|virt_caps|total_memory|free_memory)' || true
pass "xenstored answers; $(echo "$line" | tr -s ' ' | cut -d' ' -f1-4)"
