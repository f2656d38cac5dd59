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
# e2e.diskwriter=<dev> on the command line (test/e2e/dom0/checks/disk-mirror.sh): the guest
# writes that disk all the time, random 4 KiB blocks spread over it, each synced, four a second,
# printing "disk-wrote N" once each write is on the disk.
disk_writer() {
  i=0
  while [ ! -b "$1" ] && [ $i -lt 300 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  blocks=$(($(cat "/sys/class/block/${1#/dev/}/size") / 8))
  w=0
  while [ "$blocks" -gt 0 ]; do
    w=$((w + 1))
    dd if=/dev/urandom of="$1" bs=4096 count=1 seek=$(((w * 7919) % blocks)) conv=fsync,notrunc 2>/dev/null &&
      echo "disk-wrote $w"
    usleep 250000
  done
}
for a in $(cat /proc/cmdline); do
  case $a in e2e.diskwriter=/dev/*) disk_writer "${a#e2e.diskwriter=}" & ;; esac
done
n=0
while true; do
  n=$((n + 1))
  echo "tick $n"
  sleep 1
done
