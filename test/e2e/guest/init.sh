#!/bin/sh
# /init of the e2e PVH guest: loads the disk and network frontends (so the backends connect)
# and prints "tick N" on its console every second forever; the host side reads these ticks
# from xenconsoled's log to see that the guest runs (and keeps counting after a migration). With
# e2e.diskblocks=<dev> it also writes its disk all the time (disk-writer.sh).
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  [ -n "$m" ] && insmod "$m"
done </etc/e2e/modules
# e2e.diskblocks=<dev> (the e2e guest, checks/guest-create.sh): /disk-writer.sh writes checksummed
# blocks to the disk all the time, printing "disk-wrote seq=<n>" once each is on the disk; a copy
# of the disk is then checked against these lines (lib/disk-verify.js).
for a in $(cat /proc/cmdline); do
  case $a in e2e.diskblocks=/dev/*) sh /disk-writer.sh "${a#e2e.diskblocks=}" 64 200000 & ;; esac
done
echo "guest up: $(cat /proc/cmdline)"
n=0
while true; do
  n=$((n + 1))
  echo "tick $n"
  sleep 1
done
