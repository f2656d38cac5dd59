#!/bin/sh
# record.sh start|stop <kind> <tag>: a recorder on this host around one migration (the deployment
# e2e runs one on each host). Kinds:
#   console  every line xenconsoled logs for the test guest, stamped with the host's uptime when it
#            was logged. The guest's own clock jumps over a suspension by the hosts' wall-clock
#            difference (Linux injects the persistent clock's delta on resume), so the harness
#            checks its gap against these stamps (lib.sh wall_gap_ms).
#   procs    (--profile, DEPLOY_PROFILE=1) process accounting and /proc/<pid>/stat of every
#            process once a second; test/deploy/lib/profile.js sums them per command over the
#            guest's downtime. Not free: the samples took 4-5 s of emulated CPU per 22 s window
#            (cat and sleep in the report), on both migrations alike.
# Each loop runs detached (own session; no inherited descriptors: the ssh that started it
# returns) and records with shell builtins where it can. stop leaves the records in
# /mnt/run/<a|b>/<kind>-<tag>.log (procs also .pacct); their first line pairs uptime with wall time.
set -u
cmd=$1
kind=$2
tag=$3
R=/run/deploy-rec-$kind-$tag
L=/var/log/xen/console/guest-deploy-guest
case $cmd in
  start)
    rm -f $R.*
    if [ "$kind" = procs ]; then
      : >$R.pacct
      /mnt/run/acctctl $R.pacct || exit 1
    fi
    read up _ </proc/uptime
    echo "epoch $(date +%s.%N) $up $(getconf CLK_TCK)" >$R.log
    case $kind in
      # -F: the destination's --incoming log appears only when xl restores the guest there, and
      # a file that is not there yet is polled (every second by default: -s 0.1).
      console) loop="tail -n 0 -q -s 0.1 -F $L.log $L--incoming.log 2>/dev/null | while IFS= read -r l; do read up _ </proc/uptime; printf '%s %s\n' \"\$up\" \"\$l\"; done" ;;
      procs) loop="while :; do read up _ </proc/uptime; echo \"@ \$up\"; cat /proc/[0-9]*/stat 2>/dev/null; sleep 1; done" ;;
      *) echo "record.sh: unknown kind $kind" >&2; exit 2 ;;
    esac
    setsid sh -c "$loop" >>$R.log 2>/dev/null </dev/null &
    echo $! >$R.pid
    ;;
  stop)
    [ -f $R.pid ] && kill -- -"$(cat $R.pid)" 2>/dev/null
    [ "$kind" = procs ] && /mnt/run/acctctl
    h=$(hostname)
    d=/mnt/run/${h#host-}
    mkdir -p $d
    tr -d '\r' <$R.log >$d/$kind-$tag.log
    [ -f $R.pacct ] && cp $R.pacct $d/$kind-$tag.pacct
    rm -f $R.*
    ;;
  *)
    echo "usage: record.sh start|stop console|procs <tag>" >&2
    exit 2
    ;;
esac
