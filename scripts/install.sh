#!/usr/bin/env bash
# Installs xen-devmigrate from a built checkout (npm ci && npm run build) on a systemd dom0 that
# is NOT Debian-based (Fedora, XCP-ng, ...): the program under /usr/lib/xen-devmigrate,
# /usr/sbin/devmigrate, the unit and a default config (kept if present). Debian and Ubuntu hosts
# install the package instead (npm run package; dpkg -i). Re-run it to upgrade. docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr}
DESTDIR=${DESTDIR:-}
LIBDIR=$DESTDIR$PREFIX/lib/xen-devmigrate
SBIN=$DESTDIR$PREFIX/sbin
UNITDIR=$DESTDIR${UNITDIR:-/etc/systemd/system}
CONFIG=$DESTDIR/etc/xen/devmigrate.json
DOCDIR=$DESTDIR$PREFIX/share/doc/xen-devmigrate
NO_START=${NO_START:-0}

die() { echo "install: $*" >&2; exit 1; }

[ -f dist/src/cli/main.js ] || die "dist/ missing: run 'npm ci && npm run build' first"
command -v node >/dev/null || die "node (>= 20) is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node $node_major is too old: 20 or later is needed"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then die "run as root (or set DESTDIR for a staged install)"; fi
# Files dpkg owns must not be overwritten behind its back.
if [ -z "$DESTDIR" ] && [ -f /var/lib/dpkg/info/xen-devmigrate.list ]; then
  die "the Debian package xen-devmigrate is installed: upgrade it with dpkg -i (npm run package) instead"
fi

# The program: compiled product code and production dependencies only (no tests, no xen-mocks).
# Dependencies come from this checkout's node_modules, pruned offline: no registry needed on a dom0.
[ -d node_modules/koffi ] || die "node_modules missing: run 'npm ci' first"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
mkdir -p "$stage/dist"
cp -r dist/src "$stage/dist/src"
[ -d dist/native-bindings ] && cp -r dist/native-bindings "$stage/dist/native-bindings"
cp package.json package-lock.json "$stage/"
cp -r node_modules "$stage/node_modules"
(cd "$stage" && npm prune --omit=dev --offline --no-audit --no-fund >/dev/null 2>&1) || die "npm prune failed"
find "$stage/dist" -name '*.map' -delete
chmod 0755 "$stage/dist/src/cli/main.js"

mkdir -p "$(dirname "$LIBDIR")" "$SBIN" "$UNITDIR" "$(dirname "$CONFIG")" "$DOCDIR"
# Swap the whole tree at once: a running agent keeps its open files; the next start uses the new one.
rm -rf "$LIBDIR.new"
cp -r "$stage" "$LIBDIR.new"
rm -rf "$LIBDIR.old"
[ -d "$LIBDIR" ] && mv "$LIBDIR" "$LIBDIR.old"
mv "$LIBDIR.new" "$LIBDIR"
rm -rf "$LIBDIR.old"
ln -sfn "$PREFIX/lib/xen-devmigrate/dist/src/cli/main.js" "$SBIN/devmigrate"

install -m 0644 systemd/xen-devmigrate.service "$UNITDIR/xen-devmigrate.service"
[ -f docs/operations.md ] && install -m 0644 docs/operations.md "$DOCDIR/operations.md"
[ -f docs/protocol.md ] && install -m 0644 docs/protocol.md "$DOCDIR/protocol.md"

if [ -f "$CONFIG" ]; then
  echo "install: keeping $CONFIG"
else
  install -m 0640 packaging/devmigrate.json "$CONFIG"
  echo "install: wrote default $CONFIG"
fi

node "$LIBDIR/dist/src/cli/main.js" --config "$CONFIG" config check >/dev/null || die "the installed config does not validate: run devmigrate config check"

if [ -z "$DESTDIR" ] && [ "$NO_START" != 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable xen-devmigrate.service >/dev/null
  if systemctl is-active --quiet xen-devmigrate.service; then
    # Restart drains running jobs (bounded), then starts the new version, which recovers any job left.
    systemctl restart xen-devmigrate.service
  else
    systemctl start xen-devmigrate.service || echo "install: start failed: journalctl -u xen-devmigrate -e" >&2
  fi
fi
echo "install: done: $PREFIX/sbin/devmigrate -> $PREFIX/lib/xen-devmigrate ($(node -p "require('$LIBDIR/package.json').version"))"
