#!/bin/sh
# Check (hook for issue 6 item 2b): the project's domain control (src/domains, through the real
# libxenctrl/libxenguest) pauses, suspends and resumes the ticking guest:
# test/e2e/dom0/domain-control-check.js, on the compiled dist/src/domains.
. "$E2E_LIB"
script=$E2E_DIR/dom0/domain-control-check.js
[ -f "$script" ] || skip "not written yet: $script (needs the compiled src/domains)"
guest_running || fail "guest $GUEST is not running"
cd /mnt/host || fail "no /mnt/host"
E2E_GUEST_DOMID=$(guest_domid) E2E_GUEST_LOGS=$GUEST_LOGS "$E2E_NODE" "$script"
