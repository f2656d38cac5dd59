#!/bin/sh
# Helpers sourced by the dom0 check scripts: verdicts (pass/fail/skip with a one-line detail for
# the E2E-RESULT line), bounded waits, and the guest facts shared between the guest-* checks.
GUEST=e2e-guest
GUEST_LOGS=/var/log/xen/console/guest-$GUEST
for XL in /usr/lib/xen-4.*/bin/xl; do :; done # the one Xen release of this dom0

detail() { echo "$*" >>"$E2E_DETAIL"; }
pass() {
  detail "$*"
  exit 0
}
fail() {
  echo "FAIL: $*"
  detail "$*"
  exit 1
}
skip() {
  echo "SKIP: $*"
  detail "$*"
  exit 77
}
now() { cut -d' ' -f1 /proc/uptime; }
# elapsed since $1 (a now() value), in seconds with one decimal
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_until <seconds> <command...>: polls every 0.5 s; returns 1 on timeout.
wait_until() {
  local limit=$1 since0
  shift
  since0=$(now)
  while ! "$@" >/dev/null 2>&1; do
    if awk -v a="$since0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then return 1; fi
    sleep 0.5
  done
  return 0
}

# The highest "tick N" the guest printed so far (0 if none). xenconsoled names a console log
# after the domain's name when it first sees it: after a live migration the new domain's ticks
# land in guest-$GUEST--incoming.log, so every guest-$GUEST*.log counts.
last_tick() {
  local n
  n=$(cat /var/log/xen/console/guest-"$GUEST"*.log 2>/dev/null | grep -o 'tick [0-9]*' |
    awk '{ if ($2 > m) m = $2 } END { print m + 0 }')
  echo "${n:-0}"
}
tick_above() { [ "$(last_tick)" -gt "$1" ]; }
guest_domid() { $XL domid "$GUEST" 2>/dev/null; }
# triple_faulted <domid>: Xen logged a triple fault of that domain's vcpu. Seen under TCG: a
# guest kernel (no code of ours runs in it) triple-faulted during boot while another guest ran,
# twice in the 2026-11-29 runs; the test guests say on_reboot = "preserve" so that Xen's default
# action for it (a reboot, as a new domid) leaves the domain to be seen instead.
triple_faulted() { $XL dmesg 2>/dev/null | grep -q "d${1}v[0-9]* Triple fault"; }
guest_running() { [ -n "$(guest_domid)" ]; }

# Backend state of the guest's devices: "<type>:<state>" for each device dom0 serves.
backend_states() {
  local d out t dev s
  d=$(guest_domid)
  [ -n "$d" ] || return 1
  out=""
  for t in vbd vif; do
    for dev in $(xenstore-list "/local/domain/0/backend/$t/$d" 2>/dev/null); do
      s=$(xenstore-read "/local/domain/0/backend/$t/$d/$dev/state" 2>/dev/null)
      out="$out $t/$dev:$s"
    done
  done
  echo "${out# }"
}
backends_connected() {
  local s
  s=$(backend_states) || return 1
  [ -n "$s" ] && ! echo "$s" | grep -q ':[^4]'
}
