#!/bin/sh
# console-stamp.sh start|stop <tag>: while a migration runs, every line xenconsoled logs for the
# test guest on this host, stamped with the host's uptime when it was logged (a shell builtin: no
# process per line). The guest's own clock jumps over a suspension by the hosts' wall-clock
# difference (Linux injects the persistent clock's delta on resume), so the harness checks its
# gap against these stamps: the last line logged on the source before the gap, the first one on
# the destination after it. The record: /mnt/run/<a|b>/console-stamp-<tag>.log (first line pairs
# uptime with wall time).
set -u
R=/run/deploy-stamp-$2
L=/var/log/xen/console/guest-deploy-guest
case $1 in
  start)
    read up _ </proc/uptime
    echo "epoch $(date +%s.%N) $up" >$R.log
    # -F: the destination's --incoming log appears only when xl restores the guest there, and a
    # file that is not there yet is polled (every second by default: -s 0.1).
    setsid sh -c "tail -n 0 -q -s 0.1 -F $L.log $L--incoming.log 2>/dev/null | while IFS= read -r l; do read up _ </proc/uptime; printf '%s %s\n' \"\$up\" \"\$l\"; done" \
      >>$R.log 2>/dev/null </dev/null &
    echo $! >$R.pid
    ;;
  stop)
    [ -f $R.pid ] && kill -- -"$(cat $R.pid)" 2>/dev/null
    h=$(hostname)
    mkdir -p /mnt/run/${h#host-}
    tr -d '\r' <$R.log >/mnt/run/${h#host-}/console-stamp-$2.log
    rm -f $R.log $R.pid
    ;;
  *)
    echo "usage: console-stamp.sh start|stop <tag>" >&2
    exit 2
    ;;
esac
