#!/usr/bin/env bash
# The main job of README.md: set-up, then the demo on a simulated Xen host (real xenstored,
# simulated hypervisor and guests; no Xen needed): the agent migrates a domain's devices, refuses
# a job it must refuse, and aborts one whose guest will not suspend, leaving that guest running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec node dist/src/cli/main.js demo "$@"
