#!/bin/sh
# The deployment e2e's --profile (DEPLOY_PROFILE=1), run on each host around a migration:
#   profile.sh start <tag>   process accounting on, /proc/<pid>/stat of every process once a second
#   profile.sh stop <tag>    both off; the records go to /mnt/run/<a|b>/profile-<tag>.{pacct,stat}
# test/deploy/lib/profile.js reads them: the CPU each command took on each host during the
# guest's downtime. Not free: reading every /proc/<pid>/stat once a second took 4-5 s of
# emulated CPU per 22 s window (it shows as cat and sleep in the report), on both migrations alike.
set -u
cmd=$1
tag=$2
R=/run/deploy-prof-$tag
case $cmd in
  start)
    rm -f $R.*
    : >$R.pacct
    /mnt/run/acctctl $R.pacct || exit 1
    read up _ </proc/uptime
    echo "epoch $(date +%s.%N) $up $(getconf CLK_TCK)" >$R.stat
    # Detached (own session, no inherited descriptors): the ssh that started it returns.
    setsid sh -c "while :; do read up _ </proc/uptime; echo \"@ \$up\"; cat /proc/[0-9]*/stat 2>/dev/null; sleep 1; done" \
      >>$R.stat 2>/dev/null </dev/null &
    echo $! >$R.pid
    ;;
  stop)
    [ -f $R.pid ] && kill -- -"$(cat $R.pid)" 2>/dev/null
    /mnt/run/acctctl
    h=$(hostname)
    mkdir -p /mnt/run/${h#host-}
    cp $R.pacct /mnt/run/${h#host-}/profile-$tag.pacct
    cp $R.stat /mnt/run/${h#host-}/profile-$tag.stat
    rm -f $R.*
    ;;
  *)
    echo "usage: profile.sh start|stop <tag>" >&2
    exit 2
    ;;
esac
