#!/bin/sh
# Check: live migration of the ticking PVH guest to localhost through xl's own protocol
# (`xl migrate -s ""` runs the receiver locally): new domid, the guest keeps counting.
. "$E2E_LIB"
old=$(guest_domid)
[ -n "$old" ] || fail "guest $GUEST is not running"
before=$(last_tick)
start=$(now)
xl migrate -s "" "$GUEST" "$XL migrate-receive" >/tmp/migrate.out 2>&1
rc=$?
cat /tmp/migrate.out
took=$(since "$start")
[ $rc -eq 0 ] || fail "xl migrate exited $rc after ${took}s: $(grep -iE 'error|fail' /tmp/migrate.out | tail -n 1)"
grep -q 'Migration successful' /tmp/migrate.out || fail "xl migrate did not report success"
new=$(guest_domid)
[ -n "$new" ] || fail "no $GUEST after migration"
[ "$new" != "$old" ] || fail "domid unchanged ($old) after migration"
xl list "$old" >/dev/null 2>&1 && fail "source domain $old still exists after migration"
# The guest ticks on at the source during the live rounds; only ticks printed after the source
# is gone prove that the NEW domain runs.
moved=$(last_tick)
wait_until 90 tick_above $((moved + 1)) || fail "migrated guest does not tick (last tick $(last_tick), at the switch $moved)"
wait_until 60 backends_connected || fail "migrated guest's backends not connected: $(backend_states)"
pass "domid $old -> $new in ${took}s, ticks $before (start) -> $moved (switch) -> $(last_tick), backends $(backend_states)"
