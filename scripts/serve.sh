#!/bin/bash
# The main job: set up (runtime role only: no QEMU, cross compiler or Prometheus, nothing
# foreign, so it works unchanged on a ppc64el host), show what this host offers, then run the
# kvmppc daemon in the foreground on this machine's real /dev/kvm. Arguments go to
# `kvmppc serve` (defaults: API socket /run/kvmppc/kvmppc.sock, metrics on the port in the
# README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh runtime
.venv/bin/kvmppc probe
exec .venv/bin/kvmppc serve "$@"
