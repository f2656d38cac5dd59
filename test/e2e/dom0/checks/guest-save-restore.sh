#!/bin/sh
# Check: `xl save` then `xl restore` of the ticking guest; it resumes counting where it was.
. "$E2E_LIB"
guest_running || fail "guest $GUEST is not running (guest-create failed?)"
before=$(last_tick)
start=$(now)
xl save "$GUEST" /tmp/$GUEST.save || fail "xl save failed"
saved=$(since "$start")
! guest_running || fail "guest still listed after xl save"
xl restore /tmp/$GUEST.save || fail "xl restore failed"
restored=$(since "$start")
rm -f /tmp/$GUEST.save
wait_until 60 tick_above $((before + 2)) || fail "restored guest does not tick (last tick $(last_tick), before save $before)"
wait_until 60 backends_connected || fail "restored guest's backends not connected: $(backend_states)"
pass "saved in ${saved}s, restored at ${restored}s, ticks $before -> $(last_tick), backends $(backend_states)"
