#!/bin/sh
# Per-run set-up of a deployment e2e dom0 (run by the image's deploy-setup before ssh, Xen and
# the agent start): host name and address from deploy.host=a|b, this run's ssh keys, the bridge
# xenbr0 on the shared link, xenconsoled's guest logs, the e2e's device tool, and the TEST-ONLY
# drop-in of xen-devmigrate.service (see the comments in it).
. /mnt/run/env.sh
say() { echo "deploy-setup: $*" >/dev/hvc0; }
die() {
  echo "DEPLOY-FAIL setup ($(hostname)): $*" >/dev/hvc0
  exit 1
}
echo "deploy-setup: start at $(cut -d' ' -f1 /proc/uptime)s" >/dev/hvc0
H=$(sed -n 's/.*deploy\.host=\([ab]\).*/\1/p' /proc/cmdline)
case $H in
  a) IP=192.0.2.1 ;;
  b) IP=192.0.2.2 ;;
  *) die "no deploy.host=a|b on the kernel command line" ;;
esac
hostname "host-$H"
echo "host-$H" >/etc/hostname
printf '127.0.0.1 localhost\n192.0.2.1 host-a\n192.0.2.2 host-b\n' >/etc/hosts
systemd-machine-id-setup >/dev/null 2>&1

# ssh: this run's host key and root's key (the same on both hosts), both hosts known.
K=/mnt/run/keys
install -m 600 "$K/host_$H" /etc/ssh/ssh_host_ed25519_key || die "no host key"
install -m 644 "$K/host_$H.pub" /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /etc/ssh/sshd_config.d
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
  >/etc/ssh/sshd_config.d/deploy-e2e.conf
install -d -m 700 /root/.ssh
install -m 600 "$K/id_ed25519" /root/.ssh/id_ed25519
install -m 644 "$K/id_ed25519.pub" /root/.ssh/id_ed25519.pub
install -m 600 "$K/id_ed25519.pub" /root/.ssh/authorized_keys
install -m 644 "$K/known_hosts" /root/.ssh/known_hosts
# One connection per host pair and caller, reused by the many short ssh calls (the tool's steps,
# rsync, xl's transport, `xl unpause`): a key exchange costs about a second emulated. /tmp is the
# agent's own (PrivateTmp=), so the agent's children and the scenarios keep separate masters.
cat >/root/.ssh/config <<'SSH'
Host host-a host-b
  BatchMode yes
  StrictHostKeyChecking yes
  ConnectTimeout 60
  ServerAliveInterval 15
  ControlMaster auto
  ControlPath /tmp/ssh-cm-%C
  ControlPersist 900
SSH

# Network: the virtio NIC (by this run's MAC) in bridge xenbr0, which also takes the guests' vifs.
modprobe -a virtio_net bridge 2>/dev/null
mac=52:54:00:de:00:0$H
nic=
i=0
while [ -z "$nic" ]; do
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && nic=${d##*/}
  done
  [ -n "$nic" ] && break
  i=$((i + 1))
  [ $i -le 100 ] || die "no NIC with MAC $mac"
  sleep 0.2
done
ip link add xenbr0 type bridge 2>/dev/null
ip link set xenbr0 type bridge forward_delay 0 stp_state 0
ip link set "$nic" master xenbr0 || die "cannot bridge $nic"
ip link set "$nic" up
ip link set xenbr0 up
ip addr add "$IP/24" dev xenbr0 || die "cannot address xenbr0"

# Xen: guest console logs (xenconsoled --log=guest), read for the guest's ticks and writes.
# (Debian's init script passes XENCONSOLED_ARGS to the daemon.)
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >>/etc/default/xen
mkdir -p /var/log/xen/console

# The guest's kernel and initramfs, local on both hosts.
mkdir -p /var/lib/deploy /var/lib/deploy-dev /usr/local/lib/deploy-e2e
cp "$DEPLOY_IMAGE/vmlinuz" "$DEPLOY_IMAGE/guest.cpio.gz" /var/lib/deploy/ || die "cannot copy the guest images"
install -m 755 /mnt/host/test/deploy/dom0/state-tool.sh /usr/local/lib/deploy-e2e/state-tool

# TEST IMAGE ONLY, not shipped in the package: the e2e's device tool keeps its state under
# /var/lib/deploy-dev (the unit's ProtectSystem=strict needs it named).
mkdir -p /etc/systemd/system/xen-devmigrate.service.d
cat >/etc/systemd/system/xen-devmigrate.service.d/deploy-e2e.conf <<'CONF'
# deployment e2e (test/deploy/dom0/setup.sh), TEST IMAGE ONLY.
[Service]
ReadWritePaths=/var/lib/deploy-dev
# Emulation (TCG, nested paging emulated too) runs Node 20-30 times slower than a real dom0: the
# agent's start took 24-33 s CPU before READY, past the unit's 30 s, and systemd killed it.
TimeoutStartSec=180
CONF
# TEST IMAGE ONLY, off by default since the agent picks libxenctrl.so.4.<minor> of the running
# hypervisor by itself (issue 9, cherry-picked from branch versions): DEPLOY_LIB_OVERRIDE=1 in
# env.sh points it at Xen 4.20's libraries with the override variables instead.
if [ "${DEPLOY_LIB_OVERRIDE:-0}" = 1 ]; then
  cat >/etc/systemd/system/xen-devmigrate.service.d/deploy-e2e-xen420-libs.conf <<'CONF'
# deployment e2e, TEST IMAGE ONLY: the agent's default libraries are Xen 4.17's; this dom0 runs 4.20.
[Service]
Environment=DEVMIGRATE_LIBXENCTRL=libxenctrl.so.4.20 DEVMIGRATE_LIBXENGUEST=libxenguest.so.4.20
CONF
  printf 'export DEVMIGRATE_LIBXENCTRL=libxenctrl.so.4.20 DEVMIGRATE_LIBXENGUEST=libxenguest.so.4.20\n' \
    >/etc/profile.d/deploy-e2e-xen420-libs.sh
fi
say "host-$H $IP on xenbr0 ($nic) at $(cut -d' ' -f1 /proc/uptime)s"
