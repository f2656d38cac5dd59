#!/bin/sh
# Check: the guest is destroyed cleanly: gone from xl list, its backends and loop device released.
. "$E2E_LIB"
guest_running || skip "no guest to destroy"
d=$(guest_domid)
xl destroy "$GUEST" || fail "xl destroy failed"
wait_until 30 sh -c "! xenstore-exists /local/domain/0/backend/vbd/$d" || fail "vbd backend of domain $d still in xenstore"
left=$(losetup -a 2>/dev/null | grep -c e2e-disk)
[ "$left" = 0 ] || fail "loop device still attached: $(losetup -a)"
pass "domain $d destroyed, backends released"
