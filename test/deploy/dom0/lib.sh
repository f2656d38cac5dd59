#!/bin/sh
# Helpers of the deployment e2e's scenario runner (sourced by scenarios.sh on host a): running a
# command on either host, verdict lines for the harness (DEPLOY-RESULT/METRIC), bounded waits,
# the guest's whereabouts and its console logs.
A=host-a
B=host-b
GUEST=deploy-guest
DISK=/var/lib/deploy/disk.img
DEV=/var/lib/deploy-dev
STATE=$DEV/$GUEST.state
JOBS=/tool/devmigrate/jobs
TOOLS=/usr/local/lib/deploy-e2e
# ssh to host b over one shared connection (fast enough to time things across hosts).
CM="-o ControlMaster=auto -o ControlPath=/run/deploy-cm-%h -o ControlPersist=1800"
LIBENV=""
[ -f /etc/profile.d/deploy-e2e-xen420-libs.sh ] && LIBENV="DEVMIGRATE_LIBXENCTRL=libxenctrl.so.4.20 DEVMIGRATE_LIBXENGUEST=libxenguest.so.4.20"
export DEVMIGRATE_LIBXENCTRL DEVMIGRATE_LIBXENGUEST
[ -n "$LIBENV" ] && eval "export $LIBENV"

# on <host> <shell command>: runs it there (locally on host-a); its status is returned.
on() {
  local h=$1
  shift
  if [ "$h" = "$A" ]; then sh -c "$*"; else ssh $CM "$h" "${LIBENV:+export $LIBENV; }$*"; fi
}
other() { [ "$1" = "$A" ] && echo "$B" || echo "$A"; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
wall() { date +%s.%N; }

# wait_until <seconds> <shell condition>: polls every 0.5 s; 1 on timeout.
wait_until() {
  local limit=$1 t0
  shift
  t0=$(now)
  while ! eval "$*" >/dev/null 2>&1; do
    awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && return 1
    sleep 0.5
  done
  return 0
}

PASSED=0
FAILED=0
SC_FAILED=0
# check <name> <detail> <shell condition>: one DEPLOY-RESULT line; 1 when it failed.
check() {
  local n=$1 d=$2
  shift 2
  if eval "$*" >/dev/null 2>&1; then
    echo "DEPLOY-RESULT $n PASS $d"
    PASSED=$((PASSED + 1))
    return 0
  fi
  echo "DEPLOY-RESULT $n FAIL $d (false: $*)"
  FAILED=$((FAILED + 1))
  SC_FAILED=1
  return 1
}
metric() { echo "DEPLOY-METRIC $1=$2"; }
note() { echo "note: $*"; }

# The guest on a host: its domid (empty if not there) and xl's state column (r, b, p, s, ...).
domid_on() { on "$1" "xl domid $GUEST 2>/dev/null"; }
state_on() { on "$1" "xl list $GUEST 2>/dev/null | awk 'NR == 2 { print \$5 }'"; }
# running_on <host>: there and not paused, suspended or shut down.
running_on() {
  local s
  s=$(state_on "$1")
  [ -n "$s" ] && ! echo "$s" | grep -q '[psc]'
}
absent_on() { [ -z "$(domid_on "$1")" ]; }
# where: "a", "b", "a b" or "" (hosts holding a domain named $GUEST).
where() {
  local w=""
  [ -n "$(domid_on $A)" ] && w="a"
  [ -n "$(domid_on $B)" ] && w="${w:+$w }b"
  echo "$w"
}
pkg_status() { on "$1" "dpkg-query -W -f='\${Status}' xen-devmigrate 2>/dev/null"; }
pkg_version() { on "$1" "dpkg-query -W -f='\${Version}' xen-devmigrate 2>/dev/null"; }
jget() { on "$1" "xenstore-read $JOBS/$2/$3 2>/dev/null"; }

# Console logs (xenconsoled, one per domain name seen): mark their sizes, later read what was
# appended since (both hosts), so that one migration's lines are told from earlier ones.
console_mark() { on "$1" "sh /mnt/host/test/deploy/dom0/consoles.sh mark"; }
console_new() { on "$1" "sh /mnt/host/test/deploy/dom0/consoles.sh new"; }
# last_seq <host>: the guest's last acknowledged disk write in all of its console logs there.
last_seq() { on "$1" "cat /var/log/xen/console/guest-$GUEST*.log 2>/dev/null" | grep -o 'disk-wrote seq=[0-9]*' | awk -F= '{ if ($2 > m) m = $2 } END { print m + 0 }'; }
# last_t <host>: the guest's latest clock there (seconds): the largest value of its console logs.
# Not the last line: a guest that came back by xl migrate logs to guest-<name>--incoming.log,
# beside the file of its first stay, and the glob reads that older file last.
last_t() { on "$1" "cat /var/log/xen/console/guest-$GUEST*.log 2>/dev/null" | tr -d '\r' | awk '$1 == "t" && $2 + 0 > t { t = $2 + 0 } END { print t + 0 }'; }
ticks_on() { awk -v a="$2" -v b="$(last_t "$1")" 'BEGIN { exit !(b > a) }'; }

# largest_gap_ms <file...>: the largest step between consecutive guest clock values ("t <s>")
# of the given console excerpts, i.e. the downtime as the guest saw it, and where it was.
largest_gap_ms() {
  cat "$@" | tr -d '\r' | awk '$1 == "t" && $2 ~ /^[0-9.]+$/ { print $2 }' | sort -n -u |
    awk 'NR > 1 { d = $1 - p; if (d > m) { m = d; at = p } } { p = $1 } END { printf "%d %s\n", m * 1000 + 0.5, at }'
}

# record start|stop <kind> <tag>: dom0/record.sh on both hosts at once.
record() { on $B "sh /mnt/host/test/deploy/dom0/record.sh $*" & on $A "sh /mnt/host/test/deploy/dom0/record.sh $*"; wait; }
# stamped_t <host> <tag> <that host's clock minus a's, ms>: "<guest clock> <host a's wall time>".
stamped_t() {
  on $1 "cat /mnt/run/${1#host-}/console-$2.log" |
    awk -v off="$3" 'NR == 1 { e = $2; u = $3; next } $2 == "t" { printf "%s %.3f\n", $3, e + ($1 - u) - off / 1000 }'
}
# wall_gap_ms <tag> <host b's clock minus a's, ms>: the guest's largest clock step, measured
# instead by when the dom0s logged its lines (host a's clock): "<ms> <guest clock before> <after>".
# A line is logged when xenconsoled reads it, at or after the guest printed it (the source's last
# lines may be logged only by the destination, from the ring the memory carried), so each side
# of the gap is the earliest of the guest's lines within 5 s of it, moved to the gap's edge by
# the guest's own clock, which runs with the wall clock on either side of a suspension.
wall_gap_ms() {
  { stamped_t $A "$1" 0; stamped_t $B "$1" "$2"; } 2>/dev/null | sort -k1,1n -k2,2n | awk '
    { t[NR] = $1; w[NR] = $2 }
    END {
      for (i = 2; i <= NR; i++) if (t[i] - t[i - 1] > m) { m = t[i] - t[i - 1]; a = t[i - 1]; b = t[i] }
      if (m <= 0) { print "? ? ?"; exit }
      for (i = 1; i <= NR; i++) {
        if (t[i] <= a && t[i] >= a - 5) { x = w[i] + (a - t[i]); if (wb == "" || x < wb) wb = x }
        if (t[i] >= b && t[i] <= b + 5) { x = w[i] - (t[i] - b); if (wa == "" || x < wa) wa = x }
      }
      printf "%d %s %s\n", (wa - wb) * 1000 + 0.5, a, b
    }'
}

# clock_offset_ms <host>: that host's wall clock minus ours (ms) and the round trip it was read
# with, the fastest of 6 over ONE ssh session (a fresh ssh per sample costs a second emulated; 15
# samples took 45 s emulated, so 6: the round trip bounds the error either way, and it is printed).
clock_offset_ms() {
  local f=/run/deploy-clock.$$ i t0 tb t1
  rm -f $f.in $f.out
  mkfifo $f.in $f.out
  ssh $CM "$1" 'while read -r x; do date +%s.%N; done' <$f.in >$f.out &
  exec 3>$f.in 4<$f.out
  for i in 1 2 3 4 5 6; do
    t0=$(wall)
    echo x >&3
    read -r tb <&4
    t1=$(wall)
    echo "$t0 $tb $t1"
  done >$f.samples
  exec 3>&- 4<&-
  wait
  rm -f $f.in $f.out
  awk '{ rtt = $3 - $1; if (best == "" || rtt < best) { best = rtt; off = $2 - ($1 + $3) / 2 } }
       END { printf "%d %d\n", off * 1000, best * 1000 }' $f.samples
}

# Journal of the agent on a host, one line per job state change: "<unix time> <from> <to>".
transitions() {
  on "$1" "journalctl -u xen-devmigrate -o short-unix --no-pager --since '$2' 2>/dev/null" |
    sed -n 's/^\([0-9.]*\) .*job [0-9]* ([^)]*): \([a-z-]*\) -> \([a-z-]*\).*/\1 \2 \3/p'
}

collect_logs() {
  local h d
  for h in $A $B; do
    d=/mnt/run/${h#host-}
    on "$h" "journalctl -u xen-devmigrate -o short-precise --no-pager >$d/journal-devmigrate.log 2>&1;
      journalctl -b -o short-precise --no-pager >$d/journal-boot.log 2>&1;
      systemd-analyze blame --no-pager >$d/boot-blame.txt 2>&1;
      systemd-analyze critical-chain --no-pager >$d/boot-critical-chain.txt 2>&1;
      cp /var/log/xen/xen-hotplug.log $d/ 2>/dev/null; mkdir -p $d/console;
      cp /var/log/xen/console/*.log $d/console/ 2>/dev/null; cp $DEV/tool.log $d/ 2>/dev/null; true"
  done
}
