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
wait_until 60 tick_above $((before + 2)) || fail "migrated guest does not tick (last tick $(last_tick), before $before)"
wait_until 60 backends_connected || fail "migrated guest's backends not connected: $(backend_states)"
pass "domid $old -> $new in ${took}s, ticks $before -> $(last_tick), backends $(backend_states)"
