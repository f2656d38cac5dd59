#!/bin/sh
# Check: the host's Node.js runs inside dom0 from the 9p share, with the libraries the
# initramfs carries, and can load the project's dependencies (koffi's native addon).
. "$E2E_LIB"
[ -x "$E2E_NODE" ] || fail "no node binary at $E2E_NODE"
v=$("$E2E_NODE" --version 2>&1) || fail "node --version failed: $v"
cd /mnt/host || fail "no /mnt/host"
k=$("$E2E_NODE" -e "import('koffi').then((k) => console.log('koffi ' + k.default.version))" 2>&1) ||
  fail "node $v runs, but importing koffi failed: $(echo "$k" | tail -n 1)"
pass "node $v; $k"
