#!/bin/sh
# /init of the deployment e2e's dom0 initramfs (test/deploy/lib/rootfs.js): loads the root disk's
# modules, mounts /dev/vda read-write (a fresh copy-on-write view each boot: no fsck) and hands
# over to systemd. No udev: devtmpfs has the node, and the real root's udev does the rest.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "DEPLOY-FAIL initrd: $*"
  sleep 2
  poweroff -f
}
while read -r m; do
  [ -n "$m" ] && { insmod "$m" || fail "insmod $m failed"; }
done </etc/e2e/modules
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -le 300 ] || fail "no /dev/vda after 30 s"
  sleep 0.1
done
mount -t ext4 -o rw,noatime /dev/vda /root || fail "cannot mount /dev/vda"
for d in dev proc sys; do mount --move /$d /root/$d; done
exec switch_root /root /sbin/init
