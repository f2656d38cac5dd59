#!/bin/sh
# /init of the deployment e2e's PVH guest: loads its disk and network frontends, starts the disk
# writer on /dev/xvda (test/e2e/guest/disk-writer.sh) and prints its own CLOCK_BOOTTIME
# ("t <seconds>", from /proc/uptime) about every 50 ms: a migration's downtime as the guest sees
# it is the largest gap between two of these lines.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  [ -n "$m" ] && insmod "$m"
done </etc/e2e/modules
echo "guest up: $(cat /proc/cmdline)"
/disk-writer.sh /dev/xvda 64 100000 &
# The 50 ms pause is a read timeout on a FIFO nobody writes (the shell's own builtin): a usleep
# would fork and exec 20 times a second, which the emulated guest pays for dearly.
mkfifo /tmp/tick
exec 3<>/tmp/tick
while :; do
  read -r up _ </proc/uptime
  echo "t $up"
  read -r -t 0.05 _ <&3
done
