#!/usr/bin/env bash
# One-time (idempotent) set-up of a Debian 12 machine for xen-devmigrate's demo and tests:
# Debian packages (the real xenstored, xenstore-utils, Xen headers, QEMU for the e2e run),
# npm dependencies, and the build (TypeScript + the C parts of xen-mocks). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# The packages the demo, the tests and the e2e run need. Keep in sync with docs/development.md.
PKGS=(
  xen-utils-4.17 xenstore-utils libxen-dev   # real xenstored, xl, test-xenstore, headers, libxenstore
  gcc make libc6-dev                          # the xen-mocks shim, simulated libraries, bench C loop
  rsync openssh-client                        # the built-in disk copy method
  systemd                                     # systemd-analyze verify of the unit
  qemu-system-x86 cpio busybox-static         # e2e: a real Xen 4.17 host in QEMU
  debootstrap lintian xz-utils binutils       # the Debian package (lintian) and the two-host deploy e2e
  python3 ca-certificates
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # xen-utils' postinst says "Can't find hypervisor information in sysfs!" without Xen: harmless.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/devmigrate-apt.log 2>&1 || {
    tail -n 40 /tmp/devmigrate-apt.log >&2
    exit 1
  }
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.devmigrate-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

npm run --silent build
