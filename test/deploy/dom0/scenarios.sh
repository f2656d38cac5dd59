#!/bin/sh
# The deployment e2e's scenarios, run on host a (output: the Xen console, read by the harness):
#  install  dpkg -i of the project's .deb on both hosts; the service enabled, active, logging
#  a        devmigrate migrate of a PVH guest writing its local disk, with a vif whose tool moves a
#           state file, from a to b; then plain xl migrate of the same guest back (downtimes)
#  b        (source a) b's tool refuses: the guest keeps running on a, recovered
#  c        (source a) systemctl stop on a mid-job: drained, the guest on exactly one host
#  d        (source a) SIGKILL of a's agent mid-sync: systemd restarts it, the job resolves
#  e        dpkg -i of a newer build while idle: restarted, nothing lost
#  remove   dpkg -r, then dpkg -P on both hosts: stopped, files and state gone
# Each check prints "DEPLOY-RESULT <scenario>:<check> PASS|FAIL <detail>" (docs/deploy-e2e.md).
. /mnt/run/env.sh
. /mnt/host/test/deploy/dom0/lib.sh
exec 2>&1
cd /
echo "DEPLOY-PLAN $DEPLOY_SCENARIOS"
# A scenario that hangs must still leave both hosts' journals: collected shortly before the
# harness's bound (DEPLOY_DEADLINE, wall clock) stops both QEMUs.
# Started twice detached (not a job of this shell: the scenarios' bare `wait`s must not wait for it).
if [ -n "${DEPLOY_DEADLINE:-}" ]; then
  (
    (
      while [ "$(date +%s)" -lt "$DEPLOY_DEADLINE" ]; do sleep 5; done
      note "the harness's bound is near: collecting both hosts' logs now"
      collect_logs
    ) &
    echo $! >/run/deploy-watchdog.pid
  )
fi

# --- set-up shared by the scenarios ---------------------------------------------------------------
wait_until 300 "on $B true" || echo "DEPLOY-FAIL host-a cannot ssh to host-b"
mkdir -p $TOOLS
# Timed wrappers around xl for devmigrate migrate (--migrate-command / --unpause-command): they
# record when xl ran, on this host's clock, for the downtime breakdown.
cat >$TOOLS/xl-lines <<'EOF'
#!/bin/sh
# xl-lines <file> <command...>: runs the command; every line it writes to stderr (xl's stages,
# the receiver's included) is passed on at once and recorded in <file> with the host's uptime
# (a shell builtin: no process per line); the file's first line pairs uptime with wall time.
out=$1
shift
read up _ </proc/uptime
echo "epoch $(date +%s.%N) $up" >"$out"
exec 3>&1
{ "$@" 2>&1 1>&3 3>&-; echo $? >"$out.rc"; } | while IFS= read -r l; do
  printf '%s\n' "$l" >&2
  read up _ </proc/uptime
  printf '%s %s\n' "$up" "$l" >>"$out"
done
rc=$(cat "$out.rc")
rm -f "$out.rc"
exit $rc
EOF
cat >$TOOLS/xl-migrate-timed <<'EOF'
#!/bin/sh
echo "xl-start $(date +%s.%N)" >>/run/deploy-times
/usr/local/lib/deploy-e2e/xl-lines /run/deploy-xl-lines.dm-ab xl migrate -p "$@"
rc=$?
echo "xl-end $(date +%s.%N) $rc" >>/run/deploy-times
exit $rc
EOF
cat >$TOOLS/unpause-timed <<'EOF'
#!/bin/sh
host=$1
shift
echo "unpause-start $(date +%s.%N)" >>/run/deploy-times
ssh -o BatchMode=yes "$host" xl unpause "$@"
rc=$?
echo "unpause-end $(date +%s.%N) $rc" >>/run/deploy-times
exit $rc
EOF
chmod 755 $TOOLS/xl-lines $TOOLS/xl-migrate-timed $TOOLS/unpause-timed
scp -q $CM $TOOLS/xl-lines $TOOLS/xl-migrate-timed $TOOLS/unpause-timed $B:$TOOLS/

# The agent's configuration on both hosts: the disk copied by rsync over ssh to the same path on
# the destination, the vif through the stateful test tool. Generous timeouts: emulated hosts.
CONF_JSON='{
  "$comment": "deployment e2e (test/deploy/dom0/scenarios.sh)",
  "logLevel": "debug",
  "timeouts": { "testMs": 120000, "preSuspendMs": 600000, "postSuspendMs": 300000, "syncMs": 300000, "recoverMs": 120000, "toolstackSuspendMs": 900000 },
  "disks": { "copy": { "method": "rsync", "rsync": "/usr/bin/rsync", "rsh": ["/usr/bin/ssh", "-o", "BatchMode=yes"], "remoteRoot": "/" } },
  "devices": { "vif": { "tool": { "path": "/usr/local/lib/deploy-e2e/state-tool", "timeoutMs": 200000 } } }
}'

create_guest() {
  on $A "truncate -s 8M $DISK && echo 'deploy-e2e device state: created $(date -u +%FT%TZ) counter=42' >$STATE"
  cat >/var/lib/deploy/$GUEST.cfg <<CFG
name = "$GUEST"
type = "pvh"
kernel = "/var/lib/deploy/vmlinuz"
ramdisk = "/var/lib/deploy/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init quiet mitigations=off"
memory = 96
vcpus = 1
# Its own pCPU (dom0 has pCPU 0) and half of it at most: the disk writer computes all the time,
# and its QEMU thread shares this machine's 2 cores with both dom0s.
cpus = "${DEPLOY_GUEST_CPUS:-0}"
cap = 50
disk = [ "format=raw,vdev=xvda,access=rw,target=$DISK" ]
vif = [ "bridge=xenbr0,mac=00:16:3e:de:00:01" ]
on_crash = "preserve"
CFG
  xl create /var/lib/deploy/$GUEST.cfg || return 1
  wait_until 300 '[ "$(last_seq $A)" -ge 3 ]'
}

scenario() {
  SC=$1
  SC_FAILED=0
  echo "DEPLOY-BEGIN $SC $(now)"
}
scenario_end() {
  echo "DEPLOY-END $SC $([ $SC_FAILED = 0 ] && echo ok || echo failed)"
}

# --- install ---------------------------------------------------------------------------------------
sc_install() {
  local h v out
  # Both hosts at once (each dpkg waits for its agent's readiness: tens of seconds emulated).
  on $B "dpkg -i $DEPLOY_DEB" >/run/deploy-install-b.out 2>&1 &
  on $A "dpkg -i $DEPLOY_DEB" >/run/deploy-install-a.out 2>&1
  wait
  for h in $A $B; do
    v=${h#host-}
    out=$(cat /run/deploy-install-$v.out)
    check "install:dpkg-$v" "dpkg -i $(basename $DEPLOY_DEB) on $h: $(pkg_status $h)" "[ \"\$(pkg_status $h)\" = 'install ok installed' ]" ||
      echo "$out" | tail -n 20
    check "install:enabled-$v" "systemctl is-enabled on $h" "[ \"\$(on $h 'systemctl is-enabled xen-devmigrate')\" = enabled ]"
    check "install:active-$v" "systemctl is-active on $h after dpkg's start" "wait_until 120 '[ \"\$(on $h \"systemctl is-active xen-devmigrate\")\" = active ]'" ||
      on $h "systemctl status xen-devmigrate --no-pager -n 0; journalctl -u xen-devmigrate --no-pager -o short-monotonic -n 40" | sed 's/^/  | /'
    check "install:ready-$v" "agent announced ready with version $DEPLOY_VERSION on $h" \
      "wait_until 60 '[ \"\$(on $h \"xenstore-read /tool/devmigrate/agent/state\")\" = ready ]' && [ \"\$(on $h 'xenstore-read /tool/devmigrate/agent/version')\" = $DEPLOY_VERSION ]"
    check "install:journal-$v" "journalctl -u xen-devmigrate has the agent's start" \
      "on $h 'journalctl -u xen-devmigrate --no-pager -o cat' | grep -qi 'ready\\|watching'"
  done
  # The e2e configuration, checked by the installed command and applied by a reload (SIGHUP).
  for h in $A $B; do
    on $h "printf '%s\n' '$CONF_JSON' >/etc/xen/devmigrate.json && devmigrate config check && systemctl reload xen-devmigrate" \
      >/run/deploy-config-${h#host-}.out 2>&1 &
  done
  wait
  for h in $A $B; do
    check "install:config-${h#host-}" "e2e config valid (devmigrate config check) and reloaded; still active" \
      "on $h 'journalctl -u xen-devmigrate --no-pager -o cat' | grep -q 'configuration reloaded' && [ \"\$(on $h 'systemctl is-active xen-devmigrate')\" = active ]" ||
      cat /run/deploy-config-${h#host-}.out
  done
  on $A "systemctl status xen-devmigrate --no-pager | head -n 12"
}

# --- a: devmigrate migrate vs plain xl migrate -------------------------------------------------------
# migrate_measure <name> <src> <command>: runs the migration command on src with both hosts'
# consoles marked first; prints the guest's largest clock gap (ms) around it into $GAP_MS and
# saves the console excerpts in /run/deploy-<name>.{src,dst}.
migrate_measure() {
  local name=$1 src=$2 dst rc t0
  shift 2
  dst=$(other $src)
  console_mark $src
  console_mark $dst
  t0=$(now)
  on $src "$*" >/run/deploy-$name.out 2>&1
  rc=$?
  MIG_SECONDS=$(since $t0)
  sleep 3
  console_new $src >/run/deploy-$name.src
  console_new $dst >/run/deploy-$name.dst
  set -- $(largest_gap_ms /run/deploy-$name.src /run/deploy-$name.dst)
  GAP_MS=$1
  GAP_AT=$2
  sed 's/^/  | /' /run/deploy-$name.out | tail -n 25
  echo "  $name: exit $rc after ${MIG_SECONDS}s, guest clock gap ${GAP_MS} ms (after t=$GAP_AT)"
  return $rc
}

# profile start|stop <tag>: with --profile (DEPLOY_PROFILE=1), process accounting and a
# once-a-second /proc sampler on both hosts around a migration (the harness's lib/profile.js).
profile() {
  [ "${DEPLOY_PROFILE:-0}" = 1 ] || return 0
  record $1 procs $2
}
# xl_lines <host> <tag> <offset ms of that host's clock>: the xl-lines record of a migration as
# "xl-line <wall time on host a> <line>", also kept as /mnt/run/<host>/xl-lines-<tag>.log.
xl_lines() {
  on $1 "cat /run/deploy-xl-lines.$2" >/run/deploy-xl-lines.$2.got 2>/dev/null || return 0
  cp /run/deploy-xl-lines.$2.got /mnt/run/${1#host-}/xl-lines-$2.log
  awk -v off="$3" 'NR == 1 { e = $2; u = $3; next }
    { t = $1; $1 = ""; printf "  xl-line %s %.3f%s\n", tag, e + (t - u) - off / 1000, $0 }' tag="$2" /run/deploy-xl-lines.$2.got
}

sc_a() {
  local off rtt xl blocks verify s t_susp t_post t_sync t_xl_end t_unp_end t_xl_start
  if [ -z "$(where)" ]; then
    create_guest || true
  fi
  check "a:guest-created" "PVH guest on $A writing its disk ($(last_seq $A) writes acknowledged)" "running_on $A && [ \"\$(last_seq $A)\" -ge 3 ]" || return
  set -- $(clock_offset_ms $B)
  off=$1
  rtt=$2
  metric clock_offset_b_minus_a_ms "$off"
  echo "  host-b's clock minus host-a's: ${off} ms (round trip ${rtt} ms)"

  # devmigrate migrate a -> b, the destination starting empty.
  on $B "rm -f $DISK $DEV/$GUEST.state $DEV/$GUEST.state.incoming"
  # The verified window is the last 64 writes before the suspend (all of them, if fewer): every
  # one of them made on a in this run. The emulated guest writes about one block in 5-10 s.
  wait_until 120 '[ "$(last_seq $A)" -ge 5 ]'
  on $A ": >/run/deploy-times"
  since_j=$(date '+%Y-%m-%d %H:%M:%S')
  # The unpause is the command's own (no --unpause-command): its remote shell connected while
  # xl runs; its end is the job's toolstack/unpaused mark.
  profile start dm-ab
  record start console dm-ab
  migrate_measure dm-ab $A "devmigrate migrate --keep-job --timeout 900 --migrate-command $TOOLS/xl-migrate-timed $GUEST $B"
  rc=$?
  profile stop dm-ab
  record stop console dm-ab
  DM_GAP=$((GAP_MS - off))
  check "a:migrate-exit" "devmigrate migrate $GUEST $B exited $rc in ${MIG_SECONDS}s" "[ $rc -eq 0 ]"
  check "a:unpause-connected" "the unpause went through the remote shell connected while xl ran" \
    "grep -q 'remote shell connected while xl ran' /run/deploy-dm-ab.out"
  check "a:runs-on-b" "the guest runs on $B (xl state $(state_on $B))" "wait_until 60 'running_on $B'"
  check "a:gone-from-a" "no $GUEST domain left on $A" "absent_on $A"
  t=$(last_t $B)
  check "a:ticks-on-b" "the guest's clock advances on $B" "wait_until 60 'ticks_on $B $t'"
  old=$(sed -n 's/.*migrating [^ ]* (id \([0-9]*\)).*/\1/p' /run/deploy-dm-ab.out | head -n 1)
  check "a:job-done" "job of domain $old on $A: $(jget $A "$old" state), suspended-by $(jget $A "$old" suspended-by)" \
    "[ \"\$(jget $A '$old' state)\" = done ] && [ \"\$(jget $A '$old' suspended-by)\" = toolstack ]"
  on $A "xenstore-ls -f $JOBS/$old 2>/dev/null" | sed 's/^/  /' | head -n 30
  check "a:devices-synced" "vbd and vif synced ($(on $A "xenstore-ls -f $JOBS/$old/devices 2>/dev/null | grep '/state = ' | tr -d '\"' | awk '{ print \$1 \"=\" \$3 }' | sed 's|.*/devices/||' | tr '\n' ' '"))" \
    "! on $A 'xenstore-ls -f $JOBS/$old/devices' | grep '/state = ' | grep -v synced && on $A 'xenstore-ls -f $JOBS/$old/devices' | grep -q 'vbd/.*state = \"synced\"'"
  check "a:tool-state-on-b" "the device state file arrived on $B, no incoming copy left" \
    "on $B 'test -s $STATE && ! test -e $STATE.incoming'"
  check "a:nothing-left-on-a" "on $A: no domain, no device state, no loop device on the image" \
    "absent_on $A && on $A '! test -e $STATE && ! test -e $STATE.incoming && [ -z \"\$(losetup -j $DISK)\" ]'"
  # The disk on b against what the guest acknowledged on a before its suspend.
  cp /run/deploy-dm-ab.src /mnt/run/a/dm-ab-source-console.log
  verify=$(on $B "node /mnt/host/test/e2e/lib/disk-verify.js --image $DISK --console /mnt/run/a/dm-ab-source-console.log")
  echo "  disk-verify on $B: $verify"
  blocks=$(echo "$verify" | sed -n 's/.*"verified":\([0-9]*\).*/\1/p')
  check "a:disk-on-b" "the disk on $B holds every block acknowledged on $A before the suspend: $verify" \
    "echo '$verify' | grep -q '\"ok\":true'"
  metric disk_blocks_verified "${blocks:-0}"
  metric downtime_ms "$DM_GAP"
  set -- $(wall_gap_ms dm-ab "$off")
  DM_WALL=$1
  metric downtime_wall_ms "$DM_WALL"
  echo "  dm-ab: the dom0s logged the guest's last line before its gap and the first after it $DM_WALL ms apart (guest clock $2 -> $3)"
  metric downtime_raw_ms "$GAP_MS"

  # Where the downtime went (host a's clock; zero = the agent saw the suspend).
  transitions $A "$since_j" >/run/deploy-dm-ab.transitions
  on $A "cat /run/deploy-times" >/run/deploy-dm-ab.times
  t_susp=$(awk '$3 == "post-suspend" { print $1; exit }' /run/deploy-dm-ab.transitions)
  t_post=$(awk '$2 == "post-suspend" { print $1; exit }' /run/deploy-dm-ab.transitions)
  t_sync=$(awk '$3 == "done" { print $1; exit }' /run/deploy-dm-ab.transitions)
  t_xl_start=$(awk '$1 == "xl-start" { print $2 }' /run/deploy-dm-ab.times)
  t_xl_end=$(awk '$1 == "xl-end" { print $2 }' /run/deploy-dm-ab.times)
  t_unp_end=$(on $A "xenstore-read $JOBS/$old/toolstack/unpaused" | awk '{ printf "%.3f", $1 / 1000 }')
  echo "unpaused $t_unp_end" >>/run/deploy-dm-ab.times
  cat /run/deploy-dm-ab.transitions /run/deploy-dm-ab.times | sed 's/^/  timeline: /'
  ms() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "?"; else printf "%d", (b - a) * 1000 }'; }
  metric stage_xl_start_to_suspend_seen_ms "$(ms "$t_xl_start" "$t_susp")"
  metric stage_post_suspend_done_ms "$(ms "$t_susp" "$t_post")"
  metric stage_sync_done_ms "$(ms "$t_susp" "$t_sync")"
  metric stage_xl_finished_ms "$(ms "$t_susp" "$t_xl_end")"
  metric stage_unpaused_ms "$(ms "$t_susp" "$t_unp_end")"
  on $A "xenstore-rm $JOBS/$old" 2>/dev/null

  # Reference: plain xl migrate of the same guest, back b -> a (a still has the disk image the
  # guest left there, as shared storage would; the device state is carried back by hand after).
  profile start xl-ba
  record start console xl-ba
  migrate_measure xl-ba $B "$TOOLS/xl-lines /run/deploy-xl-lines.xl-ba xl migrate $GUEST $A"
  profile stop xl-ba
  record stop console xl-ba
  xl=$((GAP_MS + off))
  # xl's lines with their times, both migrations on host a's clock (b's offset removed).
  xl_lines $A dm-ab 0
  xl_lines $B xl-ba "$off"
  check "a:xl-migrate" "plain xl migrate b->a in ${MIG_SECONDS}s; guest gap ${GAP_MS} ms raw, ${xl} ms clock-corrected" \
    "wait_until 120 'running_on $A' && absent_on $B"
  # The gap is only the downtime if the guest runs again: a guest whose kernel died on resume
  # (seen once: an oops in xenwatch right after xl's migration) leaves a small, meaningless gap.
  t=$(last_t $A)
  check "a:xl-ticks-on-a" "after plain xl migrate the guest's clock advances on $A (the gap above is its downtime)" \
    "wait_until 60 'ticks_on $A $t'"
  metric xl_downtime_ms "$xl"
  set -- $(wall_gap_ms xl-ba "$off")
  XL_WALL=$1
  metric xl_downtime_wall_ms "$XL_WALL"
  echo "  xl-ba: the dom0s logged the guest's last line before its gap and the first after it $XL_WALL ms apart (guest clock $2 -> $3)"
  metric xl_downtime_raw_ms "$GAP_MS"
  # b keeps nothing of the guest: its disk copy would make the next migration's rsync refuse.
  on $B "scp -q $STATE $A:$STATE && rm -f $STATE $DISK"
  echo "  downtime (guest's view): devmigrate ${DM_GAP} ms (a->b), plain xl ${xl} ms (b->a); ratio $(awk -v a=$DM_GAP -v b=$xl 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }')"
  echo "  downtime (dom0s' log times): devmigrate ${DM_WALL} ms, plain xl ${XL_WALL} ms; ratio $(awk -v a="$DM_WALL" -v b="$XL_WALL" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "?" }')"
}

# --- b: the destination's tool refuses (pre-suspend), source a, destination b ---------------------
sc_b() {
  local src=$A dst=$B rc old
  [ -n "$(where)" ] || create_guest
  running_on $src || { check "b:guest-on-$src" "the guest must run on $src first" false; return; }
  old=$(domid_on $src)
  on $dst "touch $DEV/refuse-step-1 && rm -f $DISK.b-probe"
  on $dst "test -e $DISK && mv $DISK $DISK.before-b"
  migrate_measure dm-b $src "devmigrate migrate --keep-job --timeout 600 --migrate-command $TOOLS/xl-migrate-timed --unpause-command '$TOOLS/unpause-timed {host}' $GUEST $dst"
  rc=$?
  on $dst "rm -f $DEV/refuse-step-1"
  check "b:exit-aborted" "devmigrate migrate exited $rc (4 = aborted, running at the source)" "[ $rc -eq 4 ]"
  check "b:job-failed-recovered" "job $old on $src: $(jget $src $old state), recovered=$(jget $src $old recovered): $(jget $src $old error)" \
    "[ \"\$(jget $src $old state)\" = failed ] && [ \"\$(jget $src $old recovered)\" = 1 ]"
  check "b:devices-recovered" "every device of the job recovered" \
    "! on $src 'xenstore-ls -f $JOBS/$old/devices' | grep '/state = ' | grep -v recovered"
  check "b:still-on-$src" "the guest runs on $src only (domid $old, xl $(state_on $src))" "running_on $src && absent_on $dst && [ \"\$(domid_on $src)\" = $old ]"
  check "b:state-kept" "the device state is on $src, nothing of it on $dst" \
    "on $src 'test -s $STATE' && on $dst '! test -e $STATE && ! test -e $STATE.incoming'"
  check "b:no-disk-on-$dst" "no copy of the guest's disk left on $dst" "on $dst '! test -e $DISK'"
  on $dst "rm -f $DISK; test -e $DISK.before-b && mv $DISK.before-b $DISK"
  on $src "xenstore-rm $JOBS/$old"
}

# --- c: systemctl stop on the source mid-job ----------------------------------------------------------
sc_c() {
  local src=$A dst=$B old t0 stop_s rc
  [ -n "$(where)" ] || create_guest
  running_on $src || { check "c:guest-on-$src" "the guest must run on $src first" false; return; }
  old=$(domid_on $src)
  on $dst "rm -f $DISK $STATE $STATE.incoming"
  on $src "touch $DEV/slow-step-1-40"
  on $src "nohup devmigrate migrate --keep-job --timeout 600 --migrate-command $TOOLS/xl-migrate-timed --unpause-command '$TOOLS/unpause-timed {host}' $GUEST $dst >/run/deploy-c.out 2>&1; echo \$? >/run/deploy-c.rc" &
  # The command's start and the test phase (rsync's destination probe, the tool's step 0 over ssh)
  # took over 180 s emulated on 2026-11-29 (b's whole refused migration: 208 s).
  wait_until 420 "[ \"\$(jget $src $old state)\" = pre-suspend ]"
  check "c:mid-job" "job in pre-suspend on $src before the stop" "[ \"\$(jget $src $old state)\" = pre-suspend ]"
  t0=$(now)
  on $src "systemctl stop xen-devmigrate"
  stop_s=$(since $t0)
  on $src "rm -f $DEV/slow-step-1-40"
  wait_until 120 "on $src 'test -s /run/deploy-c.rc'"
  rc=$(on $src "cat /run/deploy-c.rc")
  on $src "cat /run/deploy-c.out" | sed 's/^/  | /' | tail -n 12
  check "c:stopped" "systemctl stop returned in ${stop_s}s; agent state $(on $src 'xenstore-read /tool/devmigrate/agent/state')" \
    "[ \"\$(on $src 'systemctl is-active xen-devmigrate')\" != active ] && [ \"\$(on $src 'xenstore-read /tool/devmigrate/agent/state')\" = stopped ]"
  check "c:drained" "job $old: $(jget $src $old state), recovered=$(jget $src $old recovered): $(jget $src $old error)" \
    "[ \"\$(jget $src $old state)\" = aborted ] && [ \"\$(jget $src $old recovered)\" = 1 ]"
  check "c:one-host" "the guest runs on exactly one host ($(where)), exit of migrate $rc" "running_on $src && absent_on $dst"
  on $src "systemctl start xen-devmigrate"
  check "c:restarted" "systemctl start brings it back" "[ \"\$(on $src 'systemctl is-active xen-devmigrate')\" = active ]"
  on $src "xenstore-rm $JOBS/$old"
  on $dst "rm -f $DISK $STATE.incoming"
}

# --- d: SIGKILL of the source's agent mid-sync -----------------------------------------------------
sc_d() {
  local src=$A dst=$B old pid0 pid1 n0 n1
  [ -n "$(where)" ] || create_guest
  running_on $src || { check "d:guest-on-$src" "the guest must run on $src first" false; return; }
  old=$(domid_on $src)
  on $dst "rm -f $DISK $STATE $STATE.incoming"
  on $src "touch $DEV/slow-step-3-40"
  pid0=$(on $src "systemctl show -P MainPID xen-devmigrate")
  n0=$(on $src "systemctl show -P NRestarts xen-devmigrate")
  on $src "xenstore-write $JOBS/$old/request/id deploy-d $JOBS/$old/request/target $dst $JOBS/$old/request/mode auto $JOBS/$old/request/suspend agent $JOBS/$old/request/live 1"
  wait_until 240 "[ \"\$(jget $src $old state)\" = syncing ]"
  check "d:syncing" "job $old reached syncing (guest suspended by the agent)" "[ \"\$(jget $src $old state)\" = syncing ]"
  on $src "systemctl kill --kill-whom=main -s KILL xen-devmigrate"
  wait_until 120 "[ \"\$(on $src 'systemctl show -P NRestarts xen-devmigrate')\" -gt ${n0:-0} ] && [ \"\$(on $src 'systemctl is-active xen-devmigrate')\" = active ]"
  pid1=$(on $src "systemctl show -P MainPID xen-devmigrate")
  n1=$(on $src "systemctl show -P NRestarts xen-devmigrate")
  on $src "rm -f $DEV/slow-step-3-40"
  check "d:restarted" "systemd restarted the agent (pid $pid0 -> $pid1, restarts $n0 -> $n1)" "[ '$pid1' != '$pid0' ] && [ '${n1:-0}' -gt '${n0:-0}' ]"
  wait_until 180 "case \"\$(jget $src $old state)\" in failed|aborted|done) true ;; *) false ;; esac"
  check "d:resolved" "job $old: $(jget $src $old state), recovered=$(jget $src $old recovered): $(jget $src $old error)" \
    "[ \"\$(jget $src $old state)\" = failed ] && [ \"\$(jget $src $old recovered)\" = 1 ]"
  t=$(last_t $src)
  check "d:one-host" "the guest runs on exactly one host ($(where)), resumed on $src" "wait_until 60 'running_on $src' && absent_on $dst && wait_until 60 'ticks_on $src $t'"
  check "d:state-back" "the device state is on $src only" "on $src 'test -s $STATE' && on $dst '! test -e $STATE && ! test -e $STATE.incoming'"
  # This job stays as a record: scenario e checks that an upgrade keeps it.
  on $dst "rm -f $DISK"
  D_JOB=$old
}

# --- e: dpkg -i of a newer build while idle ----------------------------------------------------------
sc_e() {
  local h v pid0 pid1 sum0 sum1
  for h in $A $B; do
    v=${h#host-}
    on $h "systemctl show -P MainPID xen-devmigrate; md5sum </etc/xen/devmigrate.json" >/run/deploy-e-before-$v
  done
  # Both hosts at once: each dpkg waits for its agent's stop (drain) and the new one's readiness.
  on $B "dpkg -i --force-confold $DEPLOY_DEB_NEWER" >/run/deploy-e-b.out 2>&1 &
  on $A "dpkg -i --force-confold $DEPLOY_DEB_NEWER" >/run/deploy-e-a.out 2>&1
  wait
  for h in $A $B; do
    v=${h#host-}
    pid0=$(sed -n 1p /run/deploy-e-before-$v)
    sum0=$(sed -n 2p /run/deploy-e-before-$v)
    pid1=$(on $h "systemctl show -P MainPID xen-devmigrate")
    sum1=$(on $h "md5sum </etc/xen/devmigrate.json")
    check "e:upgraded-$v" "dpkg -i $(basename $DEPLOY_DEB_NEWER) on $h: $(pkg_version $h)" \
      "[ \"\$(pkg_version $h)\" = $DEPLOY_VERSION_NEWER ]" || tail -n 15 /run/deploy-e-$v.out
    check "e:restarted-$v" "service restarted (pid $pid0 -> $pid1), active, announcing $DEPLOY_VERSION_NEWER" \
      "[ '$pid0' != '$pid1' ] && [ \"\$(on $h 'systemctl is-active xen-devmigrate')\" = active ] && wait_until 60 '[ \"\$(on $h \"xenstore-read /tool/devmigrate/agent/version\")\" = $DEPLOY_VERSION_NEWER ]'"
    check "e:config-kept-$v" "the administrator's /etc/xen/devmigrate.json kept" "[ '$sum0' = '$sum1' ]"
  done
  check "e:nothing-lost" "the guest still runs on $A; job record ${D_JOB:-none} kept" \
    "running_on $A && { [ -z '${D_JOB:-}' ] || [ -n \"\$(jget $A '${D_JOB:-0}' state)\" ]; }"
  [ -n "${D_JOB:-}" ] && on $A "xenstore-rm $JOBS/$D_JOB"
}

# --- remove: dpkg -r, then purge -------------------------------------------------------------------
sc_remove() {
  local h v
  on $B "dpkg -r xen-devmigrate" >/run/deploy-remove-b.out 2>&1 &
  on $A "dpkg -r xen-devmigrate" >/run/deploy-remove-a.out 2>&1
  wait
  for h in $A $B; do
    v=${h#host-}
    check "remove:removed-$v" "dpkg -r on $h: unit stopped, program gone, conffile kept" \
      "[ \"\$(on $h 'systemctl is-active xen-devmigrate')\" != active ] && on $h '! test -e /usr/lib/xen-devmigrate && ! test -e /usr/sbin/devmigrate && test -e /etc/xen/devmigrate.json'" ||
      tail -n 10 /run/deploy-remove-$v.out
    check "remove:stopped-$v" "the agent said stopped on its way out" "[ \"\$(on $h 'xenstore-read /tool/devmigrate/agent/state')\" = stopped ]"
  done
  on $B "dpkg -P xen-devmigrate" >>/run/deploy-remove-b.out 2>&1 &
  on $A "dpkg -P xen-devmigrate" >>/run/deploy-remove-a.out 2>&1
  wait
  for h in $A $B; do
    v=${h#host-}
    check "remove:purged-$v" "dpkg -P on $h: conffile, state and presence nodes gone" \
      "[ -z \"\$(pkg_status $h)\" ] && on $h '! test -e /etc/xen/devmigrate.json && ! test -e /var/lib/xen-devmigrate && ! xenstore-exists /tool/devmigrate/agent'"
  done
  check "remove:guest-untouched" "the guest still runs on $A" "running_on $A"
}

for s in $DEPLOY_SCENARIOS; do
  scenario "$s"
  "sc_$s"
  scenario_end
done

[ -f /run/deploy-watchdog.pid ] && kill "$(cat /run/deploy-watchdog.pid)" 2>/dev/null
collect_logs
echo "DEPLOY-SUMMARY passed=$PASSED failed=$FAILED"
rc=0
[ $FAILED -eq 0 ] || rc=1
echo "DEPLOY-DONE rc=$rc"
sync
on $B "sync; (sleep 1; poweroff -f) >/dev/null 2>&1 &" 
sleep 3
poweroff -f
