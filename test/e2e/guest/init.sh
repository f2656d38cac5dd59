#!/bin/sh
# /init of the e2e PVH guest: loads the disk and network frontends (so the backends connect)
# and prints "tick N" on its console every second forever; the host side reads these ticks
# from xenconsoled's log to see that the guest runs (and keeps counting after a migration).
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  [ -n "$m" ] && insmod "$m"
done </etc/e2e/modules
echo "guest up: $(cat /proc/cmdline)"
n=0
while true; do
  n=$((n + 1))
  echo "tick $n"
  sleep 1
done
