#!/bin/sh
# dom0's /init in the e2e initramfs: brings up a minimal Xen control domain (mounts, modules,
# xenfs, xenstored, xen-init-dom0, xenconsoled), mounts the host shares, runs the check runner
# from the share and powers off. Everything it says for the host starts with "E2E-".
# The image holds one Xen release's tools: /usr/lib/xen-4.17 (Debian 12) or /usr/lib/xen-4.20 (13).
for d in /usr/lib/xen-4.*/bin; do XEN_BIN=$d; done
export PATH=$XEN_BIN:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
cd /

stage() { echo "E2E-STAGE $1 $(cut -d' ' -f1 /proc/uptime)"; }
die() {
  echo "E2E-RESULT dom0-boot FAIL $*"
  echo "E2E-DONE rc=1"
  sync
  poweroff -f
  sleep 30
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# devtmpfs lacks the /dev/fd links udev makes; Xen's locking.sh stats /dev/stdin.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var
ln -sfn /run /var/run
mkdir -p /run/lock /var/lib/xen /var/log/xen/console /run/xen /run/xenstored /mnt/host /mnt/results
ln -sfn /run/lock /var/lock
stage dom0-init

while read -r m; do
  [ -n "$m" ] || continue
  insmod "$m" 2>/tmp/insmod.err || echo "E2E-WARN insmod $m: $(cat /tmp/insmod.err)"
done </etc/e2e/modules
stage modules-loaded

mount -t xenfs xenfs /proc/xen || die "mount xenfs failed"
[ -e /proc/xen/privcmd ] || die "no /proc/xen/privcmd: not running as a Xen dom0"
# The running hypervisor's version, as the agent reads it to pick its libraries.
echo "E2E-XEN $(cat /sys/hypervisor/version/major 2>/dev/null).$(cat /sys/hypervisor/version/minor 2>/dev/null) tools=$XEN_BIN"

xenstored --pid-file=/run/xenstored.pid || die "xenstored did not start"
i=0
until [ -S /run/xenstored/socket ]; do
  i=$((i + 1))
  [ $i -le 100 ] || die "xenstored socket did not appear within 10 s"
  sleep 0.1
done
xen-init-dom0 || die "xen-init-dom0 failed"
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console || die "xenconsoled failed"
stage xen-tools-up

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro hostshare /mnt/host || die "9p hostshare mount failed"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /mnt/results || die "9p results mount failed"
stage shares-mounted

runner=/mnt/host/test/e2e/dom0/run-checks.sh
if [ -f "$runner" ]; then
  sh "$runner"
  rc=$?
else
  echo "E2E-RESULT dom0-boot FAIL $runner missing on the share"
  rc=1
fi
echo "E2E-DONE rc=$rc"
sync
poweroff -f
sleep 30
