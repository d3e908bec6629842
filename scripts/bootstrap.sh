#!/bin/bash
# Make this checkout ready to run, for one role:
#   bootstrap.sh runtime   Debian packages of the runtime role, then .venv with kvmppc
#                          installed in editable mode (which compiles its cffi extension)
#   bootstrap.sh test      Debian packages of both roles, then .venv with kvmppc, its journal
#                          extra and the test tools
# Debian packages come from scripts/setup-system.sh (as root). Idempotent; each step is
# skipped when already done (stamps in .venv/.kvmppc-stamps, keyed by the files that decide
# it), and a runtime checkout is upgraded in place by `bootstrap.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."

role=${1:-}
case "$role" in
    runtime) extras="" ;;
    test) extras="[test,journal]" ;;
    *) echo "usage: $0 runtime|test" >&2; exit 2 ;;
esac

stamp_dir=.venv/.kvmppc-stamps
system_stamp="$stamp_dir/system-$role-$(sha256sum scripts/setup-system.sh | cut -c1-16)"
python_stamp="$stamp_dir/python-$role-$(cat pyproject.toml setup.py kvmppc/_ioctl_build.py | sha256sum | cut -c1-16)"

if [ ! -e "$system_stamp" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: system packages ($role) are missing; run this once as root (it uses apt-get)" >&2
        exit 1
    fi
    echo "bootstrap: installing Debian packages (scripts/setup-system.sh $role)" >&2
    bash scripts/setup-system.sh "$role"
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    python3 -m venv .venv
fi
mkdir -p "$stamp_dir"
touch "$system_stamp"

if [ ! -e "$python_stamp" ]; then
    echo "bootstrap: installing kvmppc$extras into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".$extras"
    rm -f "$stamp_dir/python-$role-"*
    touch "$python_stamp"
fi
