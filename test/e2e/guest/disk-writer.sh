#!/bin/sh
# Guest disk writer (shared format of the real-Xen e2e runs): writes checksummed 4 KiB blocks
# round-robin over SLOTS slots of DEV, each synced (conv=fsync) before the guest prints
# "disk-wrote seq=<n>" on its console. A block is a 64-byte header line
# "DMB1 seq=<n> slot=<i> sum=<md5 of the payload>" (space-padded, ending in \n) and a 4032-byte
# payload "<n>." repeated. test/e2e/lib/disk-verify.js checks a copy of the disk against the
# console: every block acknowledged before the suspend must be there, intact.
# usage: disk-writer.sh DEV [SLOTS] [PAUSE_US]
DEV=${1:?device}
SLOTS=${2:-64}
PAUSE=${3:-100000}
i=0
while [ ! -e "$DEV" ]; do
  i=$((i + 1))
  [ $i -le 300 ] || { echo "disk-writer: no $DEV"; exit 1; }
  sleep 0.1
done
n=0
while :; do
  n=$((n + 1))
  slot=$(((n - 1) % SLOTS))
  yes "$n." | tr -d '\n' | head -c 4032 >/tmp/dmb.payload
  sum=$(md5sum </tmp/dmb.payload | cut -d' ' -f1)
  { printf '%-63s\n' "DMB1 seq=$n slot=$slot sum=$sum"; cat /tmp/dmb.payload; } >/tmp/dmb.block
  if dd if=/tmp/dmb.block of="$DEV" bs=4096 seek=$slot count=1 conv=fsync,notrunc 2>/tmp/dmb.err; then
    echo "disk-wrote seq=$n"
  else
    echo "disk-writer: write of seq=$n failed: $(tail -n 1 /tmp/dmb.err)"
    n=$((n - 1))
    sleep 1
  fi
  usleep "$PAUSE"
done
