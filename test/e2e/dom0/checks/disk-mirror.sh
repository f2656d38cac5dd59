#!/bin/sh
# Check (issue 13 item 5): a guest whose disk QEMU serves (backendtype=qdisk: libxl starts
# /usr/libexec/xen-qemu-system-i386 with its QMP socket) and that writes that disk all the time
# (guest/init.sh, e2e.diskwriter=) is migrated by the agent with the mirror method: qemu-nbd
# serves the target on the "destination" (a local folder reached through test/support/fake-ssh.js,
# which forwards the unix socket as ssh -L would), the guest's QEMU runs blockdev-mirror to it,
# post-suspend ends the READY job, sync sees the export stop. Verified: the destination image
# equals the source image byte for byte once the guest is suspended, the guest wrote all along,
# nothing is left running; then control=recover resumes the guest and it writes on.
. "$E2E_LIB"
cli=/mnt/host/dist/src/cli/main.js
if [ ! -f "$cli" ]; then
  [ "$E2E_STRICT" = 1 ] && fail "$cli not built"
  skip "$cli not built (run npm run build)"
fi
[ -x /usr/libexec/xen-qemu-system-i386 ] || fail "no /usr/libexec/xen-qemu-system-i386 in dom0 (qemu-system-xen)"
[ -x /usr/bin/qemu-nbd ] || fail "no /usr/bin/qemu-nbd in dom0 (qemu-utils)"
cd /mnt/host || fail "no /mnt/host"
G=e2e-mirror
IMG=/tmp/e2e-mirror.img
DEST=/tmp/e2e-mirror-dest
RSH=/tmp/e2e-mirror-rsh
CONF=/tmp/e2e-mirror.json
ALOG=/tmp/agent-mirror.log
CONSOLE=/var/log/xen/console/guest-$G.log
JOBS=/tool/devmigrate/jobs

# The remote shell: the repository's ssh stand-in, run by the e2e node.
printf '#!/bin/sh\nexec "%s" /mnt/host/test/support/fake-ssh.js "$@"\n' "$E2E_NODE" >$RSH
chmod 755 $RSH
rm -rf $DEST /run/devmigrate /run/devmigrate-dest
truncate -s 16M $IMG || fail "cannot create $IMG"
# One host plays both ends: the forward's socket folder and qemu-nbd's must differ.
cat >$CONF <<EOF
{
  "\$comment": "e2e (test/e2e/dom0/checks/disk-mirror.sh): mirror of qdisk disks to a local folder",
  "timeouts": { "testMs": 120000, "postSuspendMs": 120000, "syncMs": 120000, "recoverMs": 120000 },
  "disks": {
    "mirror": {
      "rsh": ["$RSH"],
      "remoteRoot": "$DEST",
      "runDir": "/run/devmigrate",
      "remoteRunDir": "/run/devmigrate-dest",
      "qmpTimeoutMs": 30000
    }
  }
}
EOF
cat >/tmp/$G.cfg <<CFG
name = "$G"
type = "pvh"
kernel = "$E2E_IMAGES/vmlinuz"
ramdisk = "$E2E_IMAGES/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init quiet e2e.diskwriter=/dev/xvda"
memory = 96
vcpus = 1
disk = [ "format=raw,vdev=xvda,access=rw,backendtype=qdisk,target=$IMG" ]
on_crash = "preserve"
on_reboot = "preserve"
CFG

pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    wait_until 30 agent_gone || kill -KILL "$pid" 2>/dev/null
  fi
  $XL destroy $G >/dev/null 2>&1
  cp $ALOG "$E2E_RESULTS/agent-mirror.log" 2>/dev/null
  cp /var/log/xen/qemu-dm-$G.log "$E2E_RESULTS/qemu-dm-$G.log" 2>/dev/null
  rm -rf $IMG $DEST
}
agent_gone() { ! kill -0 "$pid" 2>/dev/null; }
trap cleanup EXIT
writes() { grep -o 'disk-wrote [0-9]*' $CONSOLE 2>/dev/null | awk '{ if ($2 > m) m = $2 } END { print m + 0 }'; }
writes_above() { [ "$(writes)" -gt "$1" ]; }

# The agent first: node loads its modules over 9p in 30-40 s emulated, much longer once the
# guest's QEMU and its writes keep dom0's one vcpu busy.
"$E2E_NODE" "$cli" agent --config $CONF --log-format human --log-level debug >$ALOG 2>&1 &
pid=$!
ready() { [ "$(xenstore-read /tool/devmigrate/agent/state 2>/dev/null)" = ready ] && [ "$(xenstore-read /tool/devmigrate/agent/pid 2>/dev/null)" = "$pid" ]; }
wait_until 240 ready || fail "agent not ready within 240 s: $(tail -n 5 $ALOG | tr '\n' '|')"

# create_guest: the guest up and writing its disk, in $D. A guest kernel that triple-faults while
# it boots (lib.sh, triple_faulted: under TCG, before any job of ours exists) gets one more boot,
# said plainly; any other failure, or a second crash, fails the check.
create_guest() {
  start=$(now)
  $XL create /tmp/$G.cfg || fail "xl create of a guest with a qdisk disk failed: $(tail -n 3 /var/log/xen/qemu-dm-$G.log 2>/dev/null | tr '\n' '|')"
  D=$($XL domid $G)
  wait_until 180 guest_settled || fail "guest $G (domid $D) wrote nothing within 180 s: $(tail -n 3 $CONSOLE 2>/dev/null | tr '\n' '|')"
  ! triple_faulted "$D"
}
guest_settled() { writes_above 3 || triple_faulted "$D"; }
if ! create_guest; then
  echo "guest $G (domid $D) triple-faulted while it booted (Xen: $($XL dmesg | grep -m1 "d${D}v[0-9]* Triple fault" | tr -s ' ')); the guest kernel under emulation, before any job: one more boot"
  crashed=$D
  $XL destroy $G
  mv $CONSOLE "$E2E_RESULTS/guest-$G-crashed-d$D.log" 2>/dev/null
  create_guest || fail "guest $G triple-faulted while it booted, twice (domids $crashed and $D)"
fi
echo "guest $G (domid $D) writes its disk after $(since "$start")s; QEMU: $(ls /var/run/xen/qmp-libxl-$D 2>&1)"
[ -S /var/run/xen/qmp-libxl-$D ] || fail "no QMP socket /var/run/xen/qmp-libxl-$D: $(ls /var/run/xen/ 2>&1 | tr '\n' ' ')"


J=$JOBS/$D
jget() { xenstore-read "$J/$1" 2>/dev/null; }
jfail() {
  echo "job nodes:"
  xenstore-ls -f "$J" 2>/dev/null | sed 's/^/  /'
  echo "agent log (last 60 lines):"
  tail -n 60 $ALOG | sed 's/^/  /'
  triple_faulted "$D" && fail "$* (Xen: the guest's vcpu triple-faulted: $($XL dmesg | grep -m1 "d${D}v[0-9]* Triple fault" | tr -s ' '))"
  fail "$*"
}
# follow <seconds> <end states...>: state changes with their times; 1 on timeout.
follow() {
  local limit=$1 t0 last="" s
  shift
  t0=$(now)
  while :; do
    s=$(jget state)
    if [ "$s" != "$last" ]; then
      echo "  job: state '$s' at +$(since "$t0")s (guest writes so far: $(writes))"
      last=$s
    fi
    case " $* " in *" $s "*) [ -n "$s" ] && return 0 ;; esac
    awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && return 1
    sleep 0.3
  done
}

w0=$(writes)
xenstore-write $J/request/id mirror-1 $J/request/target localhost $J/request/mode auto \
  $J/request/suspend agent $J/request/live 1 || fail "cannot write the job request"
follow 300 done failed aborted refused || jfail "job not finished within 300 s (state '$(jget state)')"
[ "$(jget state)" = done ] || jfail "job ended '$(jget state)': $(jget error)"
w1=$(writes)
policy=$(jget devices/qdisk/51712/policy)
dstate=$(jget devices/qdisk/51712/state)
[ "$policy" = copy:mirror ] || jfail "qdisk/51712 policy is '$policy', not copy:mirror"
[ "$dstate" = synced ] || jfail "qdisk/51712 state is '$dstate'"
case "$($XL list $G 2>/dev/null | awk 'NR == 2 { print $5 }')" in *s*) ;; *) jfail "guest not suspended after done: $($XL list $G | tail -n 1)" ;; esac
grep -q 'mirror devmigrate-51712 is in sync' $ALOG || jfail "the agent never saw the job READY"
echo "$(grep -o 'mirror devmigrate-51712 ended.*' $ALOG | tail -n 1)"
# The guest is suspended: its image is final, and the destination must be the same bytes.
cmp $IMG $DEST$IMG || jfail "destination image differs from the source"
[ $((w1 - w0)) -ge 10 ] || jfail "the guest wrote only $((w1 - w0)) blocks during the migration"
left=$(find /run/devmigrate /run/devmigrate-dest -mindepth 1 2>/dev/null | tr '\n' ' ')
[ -z "$left" ] || jfail "sockets or pid files left: $left"
pidof qemu-nbd >/dev/null && jfail "a qemu-nbd still runs: $(pidof qemu-nbd)"
lock=$(ls /var/lib/xen/userdata-l.$D.*.qmp-socket-lock 2>/dev/null)
[ -n "$lock" ] || jfail "libxl's QMP lock file for domain $D was never taken"

# A toolstack whose migration failed: recover resumes the guest at the source; it writes on.
xenstore-write $J/control recover
follow 120 aborted failed || jfail "recover did not finish within 120 s"
[ "$(jget state)" = aborted ] && [ "$(jget recovered)" = 1 ] || jfail "after recover: '$(jget state)' recovered=$(jget recovered): $(jget error)"
w2=$(writes)
wait_until 60 writes_above "$w2" || jfail "guest does not write again after recover (last write $w2)"
xenstore-rm $J
# qemu-nbd --cache=none unless dom0's /tmp (tmpfs) refuses O_DIRECT (Linux before 6.6: Debian 12).
cache=none
grep -q 'refuses O_DIRECT' $ALOG && cache="writeback (the destination refused O_DIRECT)"
pass "target cache $cache; mirrored 16 MiB while the guest wrote $((w1 - w0)) blocks; destination equals the source; export stopped, nothing left; recover resumed the guest (writes on past $w2)"
