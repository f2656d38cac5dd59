#!/bin/sh
# The agent on the real Xen host, started as systemd would start xen-devmigrate.service (in the
# foreground, without systemd), handling real jobs on the ticking guest $GUEST (issue 6 item 2c):
#  (a) auto + suspend=agent: disk copied by rsync (to a local folder), vif through a device tool;
#      done with the guest suspended, per-device results in XenStore; control=recover resumes it;
#  (b) the vif tool exits 1 at post-suspend (step 2): devices recovered, guest resumed, failed;
#  (c) `devmigrate migrate -s <ssh> <guest> localhost` around `xl migrate -p` (suspend=toolstack):
#      new domid, device phases recorded (--keep-job), the guest ticks at the destination, and the
#      job's timeline drawn by `devmigrate report` (text and SVG in the results folder).
#  (e) SIGTERM while a job syncs: the agent aborts it, recovers, resumes the guest, exits 0.
#  (d) (c) with a device sync slower than xl's end of migration: xl destroys the source while the
#      device still syncs; the job must still end done and the guest tick at the destination.
#  (f) opt-in, a test of the test: (a) with rsync's final pass skipped on purpose: the disk check
#      (the copy must hold every block the guest acknowledged before the suspend) must FAIL.
# The guest writes checksummed blocks to its disk all the time (guest/disk-writer.sh); (a) and (c)
# check the copy with lib/disk-verify.js against the guest's "disk-wrote seq=<n>" console lines.
# E2E_AGENT_SCENARIOS (default "a b c d e"; e last: it stops the agent) picks scenarios.
. "$E2E_LIB"
cli=/mnt/host/dist/src/cli/main.js
if [ ! -f "$cli" ]; then
  [ "$E2E_STRICT" = 1 ] && fail "$cli not built"
  skip "$cli not built (run npm run build)"
fi
cd /mnt/host || fail "no /mnt/host"
SCENARIOS=${E2E_AGENT_SCENARIOS:-a b c d e}
DISK=/tmp/e2e-disk.img
COPY_ROOT=/tmp/e2e-copy
TOOL=/tmp/e2e-vif-tool
TOOL_LOG=/tmp/e2e-vif-tool.log
FAIL_FLAG=/tmp/e2e-vif-fail
SLOW_FLAG=/tmp/e2e-vif-slow-sync
SLOW_PRE_FLAG=/tmp/e2e-vif-slow-pre
RSYNC=/tmp/e2e-rsync
SKIP_FINAL=/tmp/e2e-skip-final
RSH=/tmp/e2e-rsh
SSH=/tmp/e2e-ssh
CONF=/tmp/e2e-devmigrate.json
ALOG=/tmp/agent.log
JOBS=/tool/devmigrate/jobs

# The vif's device tool (Xen's external-device-migrate contract): logs each call, and fails the
# post-suspend step (2) on purpose while $FAIL_FLAG exists, and makes sync (3) last 60 s while
# $SLOW_FLAG exists (scenario d: a device sync slower than xl's last memory round).
cat >$TOOL <<EOF
#!/bin/sh
echo "\$* domid=\$DEVMIGRATE_DOMID devid=\$DEVMIGRATE_DEVID job=\$DEVMIGRATE_JOB_ID" >>$TOOL_LOG
step=; rec=0
while [ \$# -gt 0 ]; do
  case \$1 in -step) step=\$2; shift ;; -recover) rec=1 ;; esac
  shift
done
if [ "\$step" = 2 ] && [ \$rec = 0 ] && [ -f $FAIL_FLAG ]; then
  echo "e2e vif tool: post-suspend refused on purpose"
  exit 1
fi
if [ "\$step" = 1 ] && [ \$rec = 0 ] && [ -f $SLOW_PRE_FLAG ]; then
  echo "e2e vif tool: slow pre-suspend (3 s)"
  sleep 3
fi
if [ "\$step" = 3 ] && [ \$rec = 0 ] && [ -f $SLOW_FLAG ]; then
  echo "e2e vif tool: slow sync (60 s)"
  sleep 60
fi
echo "e2e vif tool: step \$step ok"
EOF
# rsync's remote shell for localhost: drop the host name, run the command here. xl's "ssh" does
# what ssh does with its words (joins them for the remote shell): devmigrate's unpause, connected
# while xl runs, is a shell command line ("read -r w && ... && exec xl unpause <guest>").
printf '#!/bin/sh\nshift\nexec "$@"\n' >$RSH
printf '#!/bin/sh\nshift\nexec sh -c "$*"\n' >$SSH
# The agent's rsync: the real one, except for the test of the test (f): while $SKIP_FINAL exists
# every second call (a job's final pass, in the guest's downtime) copies nothing and says ok.
cat >$RSYNC <<EOF
#!/bin/sh
if [ -f $SKIP_FINAL ]; then
  n=\$((\$(cat $SKIP_FINAL) + 1))
  echo \$n >$SKIP_FINAL
  if [ \$((n % 2)) -eq 0 ]; then
    echo "e2e rsync: final pass skipped on purpose (test of the test)" >&2
    exit 0
  fi
fi
exec /usr/bin/rsync "\$@"
EOF
chmod 755 $TOOL $RSH $SSH $RSYNC
: >$TOOL_LOG
rm -f $FAIL_FLAG $SLOW_FLAG $SLOW_PRE_FLAG $SKIP_FINAL
rm -rf $COPY_ROOT
# The disk is a local file image: copied by the built-in rsync method to a local folder
# (remoteRoot) over $RSH, as it would be to another host over ssh.
cat >$CONF <<EOF
{
  "\$comment": "e2e (test/e2e/dom0/agent-check.sh): rsync copy to a local folder, a device tool for vifs",
  "timeouts": { "testMs": 60000, "postSuspendMs": 120000, "syncMs": 120000, "recoverMs": 60000 },
  "disks": {
    "copy": { "method": "rsync", "rsync": "$RSYNC", "rsh": ["$RSH"], "remoteRoot": "$COPY_ROOT" }
  },
  "devices": { "vif": { "tool": { "path": "$TOOL", "timeoutMs": 90000 } } }
}
EOF

start=$(now)
"$E2E_NODE" "$cli" agent --config $CONF --log-format human --log-level debug >$ALOG 2>&1 &
pid=$!
cleanup() {
  if kill -0 $pid 2>/dev/null; then
    kill -TERM $pid 2>/dev/null
    wait_until 30 gone || kill -KILL $pid 2>/dev/null
  fi
  rm -f $FAIL_FLAG $SLOW_FLAG $SLOW_PRE_FLAG $SKIP_FINAL
  cp $ALOG "$E2E_RESULTS/agent.log" 2>/dev/null
  cp $TOOL_LOG "$E2E_RESULTS/agent-vif-tool.log" 2>/dev/null
}
gone() { ! kill -0 $pid 2>/dev/null; }
trap cleanup EXIT
agent_state() { xenstore-read /tool/devmigrate/agent/state 2>/dev/null; }
is_ready() { [ "$(agent_state)" = ready ]; }
# node loads its modules over 9p under emulation: 36-69 s seen in CI, over 90 s once the
# machine running QEMU was busy with other work.
if ! wait_until 240 is_ready; then
  tail -n 40 $ALOG
  fail "agent not ready within 240 s (state '$(agent_state)', alive: $(kill -0 $pid 2>/dev/null && echo yes || echo no))"
fi
ready=$(since "$start")
apid=$(xenstore-read /tool/devmigrate/agent/pid 2>/dev/null)
version=$(xenstore-read /tool/devmigrate/agent/version 2>/dev/null)
[ "$apid" = "$pid" ] || fail "agent/pid says '$apid', the daemon is $pid"
[ "$(xenstore-read /tool/devmigrate/protocol-version 2>/dev/null)" = 1 ] || fail "protocol-version is not 1"
echo "agent $version ready in ${ready}s (pid $pid)"

# --- job helpers -------------------------------------------------------------------------------
jget() { xenstore-read "$JOBS/$1/$2" 2>/dev/null; }
# follow <domid> <seconds> [end states]: prints each state change with its time until the job
# is in one of the end states (default: done and the terminal ones); returns 1 on timeout.
follow() {
  local d=$1 limit=$2 ends=${3:-done failed aborted refused} t0 last="" s
  t0=$(now)
  while :; do
    s=$(jget "$d" state)
    if [ "$s" != "$last" ]; then
      echo "  job $d: state '$s' at +$(since "$t0")s"
      last=$s
    fi
    case " $ends " in *" $s "*) [ -n "$s" ] && return 0 ;; esac
    awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && return 1
    sleep 0.3
  done
}
dump_job() { xenstore-ls -f "$JOBS/$1" 2>/dev/null | sed 's/^/  /'; }
# jfail <domid> <message>: the job's nodes and the agent's last lines, then fail.
jfail() {
  dump_job "$1"
  tail -n 40 $ALOG
  fail "$2"
}
devstate() { jget "$1" "devices/$2/state"; }
# The guest's devices as the agent sees them: vbd/<devid> and vif/<devid>.
VBD=; VIF=
find_devices() {
  local d
  d=$(guest_domid)
  VBD=vbd/$(xenstore-list "/local/domain/0/backend/vbd/$d" 2>/dev/null | head -n 1)
  VIF=vif/$(xenstore-list "/local/domain/0/backend/vif/$d" 2>/dev/null | head -n 1)
}
# The guest is suspended (xl's state column shows s) and not ticking.
guest_xl_state() { $XL list "$GUEST" 2>/dev/null | awk 'NR == 2 { print $5 }'; }
new_job() {
  # new_job <domid> <id> <suspend>: one transaction, as the protocol asks.
  xenstore-rm "$JOBS/$1" 2>/dev/null
  xenstore-write "$JOBS/$1/request/id" "$2" "$JOBS/$1/request/target" localhost \
    "$JOBS/$1/request/mode" auto "$JOBS/$1/request/suspend" "$3" "$JOBS/$1/request/live" 1 ||
    fail "cannot write the request of job $1"
}
# The highest "disk-wrote seq=<n>" the guest printed so far (its console logs).
last_acked() {
  cat "$GUEST_LOGS"*.log 2>/dev/null | sed -n 's/.*disk-wrote seq=\([0-9]*\).*/\1/p' | sort -n | tail -n 1
}
# disk_verify [upto]: the copy holds, intact, the last 64 blocks the guest acknowledged (all of
# them up to seq <upto> when given) -- lib/disk-verify.js; prints its JSON line, exit 0 when ok.
disk_verify() {
  local args="" f
  for f in "$GUEST_LOGS"*.log; do args="$args --console $f"; done
  # shellcheck disable=SC2086
  "$E2E_NODE" test/e2e/lib/disk-verify.js --image "$COPY_ROOT$DISK" $args ${1:+--upto $1}
}
SUMMARY=""
note() {
  echo "$*"
  SUMMARY="$SUMMARY; $*"
}

# --- (a) auto job, suspend=agent: done, then recover ---------------------------------------------
scenario_a() {
  local d t0 took done_tick s pol err
  d=$(guest_domid)
  find_devices
  echo "(a) auto/suspend=agent on domain $d ($VBD, $VIF)"
  t0=$(now)
  new_job "$d" e2e-a agent
  follow "$d" 180 || jfail "$d" "(a) job not finished within 180 s (state '$(jget "$d" state)')"
  took=$(since "$t0")
  dump_job "$d"
  s=$(jget "$d" state)
  [ "$s" = done ] || jfail "$d" "(a) job ended '$s', not done: $(jget "$d" error)"
  for dev in $VBD $VIF; do
    [ "$(devstate "$d" "$dev")" = synced ] || jfail "$d" "(a) $dev state '$(devstate "$d" "$dev")', not synced"
  done
  pol=$(jget "$d" "devices/$VBD/policy")
  [ "$pol" = copy:rsync ] || jfail "$d" "(a) $VBD policy '$pol', not copy:rsync"
  pol=$(jget "$d" "devices/$VIF/policy")
  case "$pol" in external:$TOOL) ;; *) jfail "$d" "(a) $VIF policy '$pol', not external:$TOOL" ;; esac
  cmp -s $DISK "$COPY_ROOT$DISK" || jfail "$d" "(a) the copy $COPY_ROOT$DISK differs from $DISK (or is missing)"
  # The guest is suspended: every block it acknowledged before the suspend must be in the copy.
  sleep 2 # lines printed just before the suspend reach xenconsoled's log
  dv=$(disk_verify) || jfail "$d" "(a) the disk copy lacks what the guest wrote before the suspend: $dv"
  echo "  disk check: $dv"
  for st in 0 1 2 3; do
    grep -q -- "-step $st .*domid=$d .*job=e2e-a" $TOOL_LOG || jfail "$d" "(a) the vif tool was not called with -step $st"
  done
  case "$(guest_xl_state)" in *s*) ;; *) jfail "$d" "(a) done, but xl shows the guest '$(guest_xl_state)', not suspended" ;; esac
  done_tick=$(last_tick)
  sleep 3
  [ "$(last_tick)" -le $((done_tick + 1)) ] || jfail "$d" "(a) the guest ticks while done/suspended ($done_tick -> $(last_tick))"
  # What a toolstack does when its own migration failed: recover (devices, then resume).
  t0=$(now)
  xenstore-write "$JOBS/$d/control" recover || fail "(a) cannot write control"
  # done is not an end here: the job is still done until the agent takes the control.
  follow "$d" 120 "failed aborted" || jfail "$d" "(a) recover not finished within 120 s"
  s=$(jget "$d" state)
  [ "$s" = aborted ] || jfail "$d" "(a) after recover: state '$s', not aborted: $(jget "$d" error)"
  [ "$(jget "$d" recovered)" = 1 ] || jfail "$d" "(a) after recover: recovered='$(jget "$d" recovered)'"
  wait_until 90 tick_above $((done_tick + 1)) || jfail "$d" "(a) guest does not tick after recover (last $(last_tick), at done $done_tick, xl '$(guest_xl_state)')"
  wait_until 60 backends_connected || jfail "$d" "(a) backends not connected after resume: $(backend_states)"
  note "(a) done in ${took}s ($VBD copy:rsync, $VIF external tool steps 0-3; the copy holds the guest's writes up to seq $(echo "$dv" | sed -n 's/.*"lastSeq":\([0-9]*\).*/\1/p')), recover->aborted+resumed in $(since "$t0")s, ticks $done_tick -> $(last_tick)"
  xenstore-rm "$JOBS/$d"
}

# --- (b) post-suspend fails (vif tool exits 1 at step 2) -----------------------------------------
scenario_b() {
  local d t0 took s err before
  d=$(guest_domid)
  find_devices
  echo "(b) failing post-suspend on domain $d"
  touch $FAIL_FLAG
  t0=$(now)
  new_job "$d" e2e-b agent
  follow "$d" 180 || jfail "$d" "(b) job not finished within 180 s (state '$(jget "$d" state)')"
  took=$(since "$t0")
  rm -f $FAIL_FLAG
  dump_job "$d"
  s=$(jget "$d" state)
  err=$(jget "$d" error)
  [ "$s" = failed ] || jfail "$d" "(b) job ended '$s', expected failed (error: $err)"
  [ -n "$err" ] || jfail "$d" "(b) failed without an error line"
  echo "$err" | grep -q "post-suspend refused on purpose" || jfail "$d" "(b) error does not carry the tool's line: $err"
  [ "$(jget "$d" recovered)" = 1 ] || jfail "$d" "(b) recovered='$(jget "$d" recovered)'"
  [ "$(jget "$d" suspended-by)" = agent ] || jfail "$d" "(b) suspended-by='$(jget "$d" suspended-by)'"
  for dev in $VBD $VIF; do
    [ "$(devstate "$d" "$dev")" = recovered ] || jfail "$d" "(b) $dev state '$(devstate "$d" "$dev")', not recovered"
  done
  grep -q -- "-step 2 .*-recover.*job=e2e-b" $TOOL_LOG || jfail "$d" "(b) the vif tool was not called with -step 2 -recover"
  before=$(last_tick)
  wait_until 90 tick_above $((before + 1)) || jfail "$d" "(b) guest does not tick after the failed job (last $(last_tick), xl '$(guest_xl_state)')"
  wait_until 60 backends_connected || jfail "$d" "(b) backends not connected after resume: $(backend_states)"
  note "(b) failed+recovered in ${took}s, guest ticks again ($before -> $(last_tick)); error: $err"
  xenstore-rm "$JOBS/$d"
}

# watch_source <domid> <file>: records (seconds from its start) when the job of <domid> reaches
# suspending/done and when XenStore forgets the domain (xl destroyed the source), for at most
# 300 s. Shows how much room the devices' sync had before xl's end of migration.
watch_source() {
  local d=$1 out=$2 t0 i=0 s susp="" fin="" gone=""
  t0=$(now)
  : >"$out"
  while [ $i -lt 1000 ] && { [ -z "$fin" ] || [ -z "$gone" ]; }; do
    s=$(jget "$d" state)
    if [ -z "$susp" ] && [ "$s" = suspending ]; then susp=$(since "$t0") && echo "suspending $susp" >>"$out"; fi
    # Until done the destination stays paused (xl migrate -p): any write acknowledged by then was
    # made by the source, before its suspend, so the copy must hold it.
    case "$s" in suspending | post-suspend | post-suspended | syncing) echo "$(last_acked)" >"$out.acked" ;; esac
    if [ -z "$fin" ] && case "$s" in done | failed | aborted) true ;; *) false ;; esac; then
      fin=$(since "$t0") && echo "$s $fin" >>"$out"
    fi
    if [ -z "$gone" ] && ! xenstore-read "/local/domain/$d/name" >/dev/null 2>&1; then
      gone=$(since "$t0") && echo "source-gone $gone" >>"$out"
    fi
    i=$((i + 1))
    sleep 0.3
  done
}
# "suspending at 12.1s, done at 20.3s, source gone at 24.0s" from watch_source's file.
times_of() { awk '{ printf "%s%s at %ss", (NR > 1 ? ", " : ""), $1, $2 }' "$1"; }

# --- (c) devmigrate migrate <guest> localhost around xl migrate -p ------------------------------
scenario_c() {
  local old new t0 took rc moved s
  old=$(guest_domid)
  find_devices
  echo "(c) devmigrate migrate $GUEST localhost (domain $old)"
  rm -rf $COPY_ROOT
  t0=$(now)
  watch_source "$old" /tmp/e2e-c-times &
  watcher=$!
  # xl's own -s, through devmigrate: xl runs "$SSH localhost xl migrate-receive -p", and the unpause
  # goes through the same remote shell, started with xl ("$SSH localhost 'read -r w && ... xl unpause e2e-guest'").
  "$E2E_NODE" "$cli" migrate --keep-job --timeout 300 -s "$SSH" \
    "$GUEST" localhost >/tmp/devmigrate-migrate.out 2>&1
  rc=$?
  took=$(since "$t0")
  sleep 1
  kill $watcher 2>/dev/null
  wait $watcher 2>/dev/null
  sed 's/^/  | /' /tmp/devmigrate-migrate.out
  cat /tmp/e2e-c-times
  [ $rc -eq 0 ] || jfail "$old" "(c) devmigrate migrate exited $rc after ${took}s: $(tail -n 1 /tmp/devmigrate-migrate.out)"
  grep -q 'remote shell connected while xl ran' /tmp/devmigrate-migrate.out ||
    jfail "$old" "(c) the unpause did not go through the remote shell connected while xl ran"
  new=$(guest_domid)
  [ -n "$new" ] || jfail "$old" "(c) no $GUEST after the migration"
  [ "$new" != "$old" ] || jfail "$old" "(c) domid unchanged ($old)"
  $XL list "$old" >/dev/null 2>&1 && jfail "$old" "(c) source domain $old still exists"
  dump_job "$old"
  s=$(jget "$old" state)
  [ "$s" = done ] || jfail "$old" "(c) job of domain $old ended '$s', not done: $(jget "$old" error)"
  [ "$(jget "$old" suspended-by)" = toolstack ] || jfail "$old" "(c) suspended-by='$(jget "$old" suspended-by)'"
  for dev in $VBD $VIF; do
    [ "$(devstate "$old" "$dev")" = synced ] || jfail "$old" "(c) $dev state '$(devstate "$old" "$dev")', not synced"
  done
  for st in 0 1 2 3; do
    grep -q -- "-step $st .*domid=$old " $TOOL_LOG || jfail "$old" "(c) the vif tool was not called with -step $st"
  done
  # The destination writes the same image now: the copy is checked against what the source had
  # acknowledged before its suspend (a lower bound read while the job was suspending .. syncing).
  acked=$(cat /tmp/e2e-c-times.acked 2>/dev/null)
  [ -n "$acked" ] || jfail "$old" "(c) no disk write acknowledged by the guest before its suspend"
  dv=$(disk_verify "$acked") || jfail "$old" "(c) the disk copy lacks what the guest wrote before the suspend: $dv"
  echo "  disk check (acknowledged up to seq $acked): $dv"
  moved=$(last_tick)
  wait_until 90 tick_above $((moved + 1)) || fail "(c) migrated guest (domain $new, xl '$(guest_xl_state)') does not tick (last $(last_tick))"
  wait_until 60 backends_connected || fail "(c) migrated guest's backends not connected: $(backend_states)"
  # The job's timeline, drawn (the operator's `devmigrate report`), kept with the results.
  "$E2E_NODE" "$cli" report "$old" --width 100 --svg "$E2E_RESULTS/report-c.svg" >"$E2E_RESULTS/report-c.txt" 2>&1 ||
    jfail "$old" "(c) devmigrate report failed: $(tail -n 1 "$E2E_RESULTS/report-c.txt")"
  sed 's/^/  report | /' "$E2E_RESULTS/report-c.txt"
  note "(c) domid $old -> $new in ${took}s, job done ($VBD, $VIF synced; $(times_of /tmp/e2e-c-times)), ticks $moved -> $(last_tick)"
  xenstore-rm "$JOBS/$old"
}

# --- (d) (c) with a vif sync of 60 s: xl finishes (and destroys the source) while syncing --------
scenario_d() {
  local old new t0 took rc s err
  old=$(guest_domid)
  find_devices
  echo "(d) devmigrate migrate with a 60 s device sync (domain $old)"
  touch $SLOW_FLAG
  t0=$(now)
  "$E2E_NODE" "$cli" migrate --keep-job --timeout 300 \
    --migrate-command "xl migrate -s $SSH -p" --unpause-command "xl unpause" \
    "$GUEST" localhost >/tmp/devmigrate-migrate.out 2>&1
  rc=$?
  took=$(since "$t0")
  rm -f $SLOW_FLAG
  sed 's/^/  | /' /tmp/devmigrate-migrate.out
  new=$(guest_domid)
  echo "  after ${took}s: exit $rc, $GUEST is domain '$new' (xl state '$(guest_xl_state)'), source $old $($XL list "$old" >/dev/null 2>&1 && echo exists || echo gone)"
  dump_job "$old"
  grep -E "job $old|domain $old" $ALOG | tail -n 25
  s=$(jget "$old" state)
  if [ $rc -ne 0 ] || [ "$s" != done ]; then
    err=$(jget "$old" error)
    # Leave the guest running for the next checks: unpause it wherever it is.
    [ -n "$new" ] && $XL unpause "$GUEST" 2>/dev/null
    xenstore-rm "$JOBS/$old"
    fail "(d) devmigrate migrate exited $rc after ${took}s, job of domain $old '$s' (error: $err); cli: $(grep -E '^(UNCERTAIN|aborted|not migrated|migrated)' /tmp/devmigrate-migrate.out | tail -n 1)"
  fi
  [ "$(devstate "$old" "$VIF")" = synced ] || fail "(d) $VIF state '$(devstate "$old" "$VIF")'"
  wait_until 90 tick_above $(($(last_tick) + 1)) || fail "(d) migrated guest does not tick"
  note "(d) slow sync: domid $old -> $new in ${took}s, job done"
  xenstore-rm "$JOBS/$old"
}

# --- (e) SIGTERM while a job is syncing (suspend=agent, a 60 s vif sync, longer than the drain) -------------------------
# The protocol: a stopping agent aborts and recovers running jobs first and never leaves a guest
# suspended. Must be the last scenario: the agent is gone afterwards.
scenario_e() {
  local d t0 s before
  d=$(guest_domid)
  find_devices
  echo "(e) SIGTERM during sync on domain $d"
  touch $SLOW_FLAG
  new_job "$d" e2e-e agent
  follow "$d" 120 "syncing done failed aborted refused" || jfail "$d" "(e) job not syncing within 120 s"
  [ "$(jget "$d" state)" = syncing ] || jfail "$d" "(e) job '$(jget "$d" state)' instead of syncing"
  before=$(last_tick)
  t0=$(now)
  kill -TERM $pid
  wait_until 60 gone || jfail "$d" "(e) agent still running 60 s after SIGTERM (state '$(jget "$d" state)')"
  wait $pid
  rc=$?
  rm -f $SLOW_FLAG
  dump_job "$d"
  tail -n 15 $ALOG
  [ $rc -eq 0 ] || fail "(e) agent exited $rc on SIGTERM during a job"
  s=$(jget "$d" state)
  case "$s" in aborted | failed) ;; *) jfail "$d" "(e) after SIGTERM: job '$s', expected aborted or failed" ;; esac
  [ "$(jget "$d" recovered)" = 1 ] || jfail "$d" "(e) recovered='$(jget "$d" recovered)'"
  wait_until 90 tick_above $((before + 1)) || fail "(e) guest does not tick after the agent stopped (xl '$(guest_xl_state)')"
  note "(e) SIGTERM while syncing: agent exit 0 in $(since "$t0")s, job $s ($(jget "$d" error)), guest resumed"
  xenstore-rm "$JOBS/$d"
}

# --- (f) test of the test: the disk check must catch a broken final pass (opt-in) -------------------
# As (a), with the agent's rsync skipping the final pass (the one in the guest's downtime) and the
# vif's pre-suspend made 3 s slow, so that the guest surely writes between the bulk pass and the
# suspend: the copy then lacks blocks the guest acknowledged, and the check must say so.
scenario_f() {
  local d t0 s dv
  d=$(guest_domid)
  find_devices
  echo "(f) test of the test on domain $d: rsync's final pass skipped on purpose, the disk check must fail"
  rm -rf $COPY_ROOT
  echo 0 >$SKIP_FINAL
  touch $SLOW_PRE_FLAG
  t0=$(now)
  new_job "$d" e2e-f agent
  follow "$d" 180 || jfail "$d" "(f) job not finished within 180 s (state '$(jget "$d" state)')"
  rm -f $SKIP_FINAL $SLOW_PRE_FLAG
  s=$(jget "$d" state)
  [ "$s" = done ] || jfail "$d" "(f) job ended '$s', not done: $(jget "$d" error)"
  grep -q "final pass skipped on purpose" $ALOG || jfail "$d" "(f) the final pass was not skipped (agent log)"
  sleep 2
  if dv=$(disk_verify); then
    jfail "$d" "(f) the disk check PASSED although the final pass was skipped: $dv"
  fi
  echo "  disk check, as it must, FAILED: $dv"
  xenstore-write "$JOBS/$d/control" recover || fail "(f) cannot write control"
  follow "$d" 120 "failed aborted" || jfail "$d" "(f) recover not finished within 120 s"
  wait_until 90 tick_above $(($(last_tick) + 1)) || jfail "$d" "(f) guest does not tick after recover"
  note "(f) test of the test: final pass skipped -> the disk check failed in $(since "$t0")s: $(echo "$dv" | cut -c1-300)"
  xenstore-rm "$JOBS/$d"
}

for s in $SCENARIOS; do
  guest_running || fail "guest $GUEST is not running before scenario ($s)"
  # Each scenario's destination starts empty: a migration's destination keeps its copy (on two
  # hosts the guest would then run from it; here it still runs from the source image), and the
  # copy method refuses to write over an existing file.
  rm -rf "$COPY_ROOT"
  "scenario_$s"
done

if ! gone; then
  kill -TERM $pid
  if ! wait_until 45 gone; then
    tail -n 40 $ALOG
    fail "agent still running 45 s after SIGTERM"
  fi
  wait $pid
  rc=$?
  tail -n 20 $ALOG
  [ $rc -eq 0 ] || fail "agent exited $rc on SIGTERM"
fi
pass "agent $version ready in ${ready}s$SUMMARY; SIGTERM: exit 0"
