#!/usr/bin/env bash
# CI check of the unit: `systemd-analyze verify` on a copy whose ExecStart points at this
# checkout's build (node + dist/src/cli/main.js) instead of /usr/sbin/devmigrate, which exists
# only after scripts/install.sh. Everything else in the unit is verified exactly as shipped.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/xen-devmigrate.service
node_bin=$(command -v node)
entry=$PWD/dist/src/cli/main.js
[ -f "$entry" ] || { echo "verify: $entry missing: run npm run build first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -q '^ExecStart=/usr/sbin/devmigrate ' "$unit" || { echo "verify: unexpected ExecStart in $unit" >&2; exit 1; }
sed "s|^ExecStart=/usr/sbin/devmigrate |ExecStart=$node_bin $entry |" "$unit" >"$tmp/xen-devmigrate.service"
# verify prints warnings on stderr and exits 0 for them; make any output fail, as a warning here
# usually means a typo in a directive that systemd would then ignore on a real host.
out=$(systemd-analyze verify --man=no "$tmp/xen-devmigrate.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; echo "verify: systemd-analyze printed warnings" >&2; exit 1; fi
echo "verify: $unit ok ($(systemd-analyze --version | head -n1))"
