#!/bin/sh
# Check (hook for issue 6 item 2c): the devmigrate agent as a daemon handling jobs on the real
# guest (auto/suspend=agent, a failing post-suspend tool, `devmigrate migrate` around xl migrate).
# Runs test/e2e/dom0/agent-check.sh once it and the compiled agent exist.
. "$E2E_LIB"
script=$E2E_DIR/dom0/agent-check.sh
[ -f "$script" ] || skip "not written yet: $script (needs the compiled agent, dist/src/cli/main.js)"
guest_running || fail "guest $GUEST is not running"
sh "$script"
