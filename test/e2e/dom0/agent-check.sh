#!/bin/sh
# The agent on the real Xen host, started as systemd would start xen-devmigrate.service (in the
# foreground, without systemd): it must announce itself ready under /tool/devmigrate/agent in the
# real xenstored and stop cleanly on SIGTERM. The job scenarios of issue 6 item 2c (auto job with
# suspend=agent, a failing post-suspend tool, `devmigrate migrate` around xl migrate) plug in
# between "ready" and SIGTERM once written; the ticking guest $GUEST is running here.
. "$E2E_LIB"
cli=/mnt/host/dist/src/cli/main.js
if [ ! -f "$cli" ]; then
  [ "$E2E_STRICT" = 1 ] && fail "$cli not built"
  skip "$cli not built (run npm run build)"
fi
cd /mnt/host || fail "no /mnt/host"
start=$(now)
"$E2E_NODE" "$cli" agent --log-format human --log-level debug >/tmp/agent.log 2>&1 &
pid=$!
agent_state() { xenstore-read /tool/devmigrate/agent/state 2>/dev/null; }
is_ready() { [ "$(agent_state)" = ready ]; }
if ! wait_until 90 is_ready; then
  tail -n 40 /tmp/agent.log
  kill -KILL $pid 2>/dev/null
  fail "agent not ready within 90 s (state '$(agent_state)', alive: $(kill -0 $pid 2>/dev/null && echo yes || echo no))"
fi
ready=$(since "$start")
apid=$(xenstore-read /tool/devmigrate/agent/pid 2>/dev/null)
version=$(xenstore-read /tool/devmigrate/agent/version 2>/dev/null)
[ "$apid" = "$pid" ] || {
  kill -KILL $pid
  fail "agent/pid says '$apid', the daemon is $pid"
}
kill -TERM $pid
gone() { ! kill -0 $pid 2>/dev/null; }
if ! wait_until 45 gone; then
  tail -n 40 /tmp/agent.log
  kill -KILL $pid
  fail "agent still running 45 s after SIGTERM"
fi
wait $pid
rc=$?
tail -n 20 /tmp/agent.log
[ $rc -eq 0 ] || fail "agent exited $rc on SIGTERM"
pass "agent $version ready in ${ready}s, stopped cleanly on SIGTERM (state now '$(agent_state)'); job scenarios (item 2c) not written yet"
