#!/bin/sh
# Check (issue 6 item 2c): the devmigrate agent as a daemon on the real Xen host:
# test/e2e/dom0/agent-check.sh: start/ready, then the job scenarios (auto/suspend=agent, a failing
# post-suspend tool, `devmigrate migrate` around xl migrate), then SIGTERM.
. "$E2E_LIB"
script=$E2E_DIR/dom0/agent-check.sh
[ -f "$script" ] || skip "not written yet: $script (needs the compiled agent, dist/src/cli/main.js)"
guest_running || fail "guest $GUEST is not running"
sh "$script"
