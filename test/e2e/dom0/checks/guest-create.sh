#!/bin/sh
# Check: `xl create` of a PVH guest (the dom0 kernel, the tick initramfs, 128 MB) with a
# file-backed disk (loop, blkback, the block hotplug script) and a vif on bridge xenbr0
# (netback, the vif-bridge script); the guest ticks and both backends reach Connected (4).
. "$E2E_LIB"
[ -f "$E2E_IMAGES/vmlinuz" ] || fail "no guest kernel at $E2E_IMAGES/vmlinuz"
if ! ip link show xenbr0 >/dev/null 2>&1; then
  ip link add xenbr0 type bridge && ip link set xenbr0 up || fail "cannot create bridge xenbr0"
fi
# 8 MB: the agent check copies it by rsync in the guest's downtime (see docs/e2e.md). The guest
# writes checksummed blocks to its first 256 KiB all the time (e2e.diskblocks, disk-writer.sh).
truncate -s 8M /tmp/e2e-disk.img || fail "cannot create the disk file"
cat >/tmp/$GUEST.cfg <<CFG
name = "$GUEST"
type = "pvh"
kernel = "$E2E_IMAGES/vmlinuz"
ramdisk = "$E2E_IMAGES/guest.cpio.gz"
extra = "console=hvc0 rdinit=/init quiet e2e.diskblocks=/dev/xvda"
memory = 128
vcpus = 1
disk = [ "format=raw,vdev=xvda,access=rw,target=/tmp/e2e-disk.img" ]
vif = [ "bridge=xenbr0,mac=00:16:3e:00:00:01" ]
on_crash = "preserve"
on_reboot = "preserve"
CFG
start=$(now)
xl -v create /tmp/$GUEST.cfg || fail "xl create failed"
created=$(since "$start")
# Debian 13's 6.12 guest kernel needs about 110 s to its first tick under TCG (6.1: 40-90 s).
wait_until 240 tick_above 2 || fail "guest created in ${created}s but printed no ticks within 240 s$(triple_faulted "$(guest_domid)" && echo ' (Xen: its vcpu triple-faulted)'): $(cat "$GUEST_LOGS"*.log 2>/dev/null | tail -n 3 | tr '\n' '|')"
ticking=$(since "$start")
wait_until 60 backends_connected || fail "guest ticks, but backends not connected: $(backend_states)"
xl list
pass "domid $(guest_domid), created in ${created}s, ticking at ${ticking}s, backends $(backend_states)"
