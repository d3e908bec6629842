#!/bin/bash
# Make this checkout ready to run: Debian packages (as root, via setup-system.sh), then a
# virtual environment in .venv with kvmppc installed in editable mode (which compiles its cffi
# extension) plus the test tools. Idempotent; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp_dir=.venv/.kvmppc-stamps
system_stamp="$stamp_dir/system-$(sha256sum scripts/setup-system.sh | cut -c1-16)"
python_stamp="$stamp_dir/python-$(cat pyproject.toml setup.py kvmppc/_ioctl_build.py | sha256sum | cut -c1-16)"

if [ ! -e "$system_stamp" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: system packages are missing; run this once as root (it uses apt-get)" >&2
        exit 1
    fi
    echo "bootstrap: installing Debian packages (scripts/setup-system.sh)" >&2
    bash scripts/setup-system.sh
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    python3 -m venv .venv
fi
mkdir -p "$stamp_dir"
touch "$system_stamp"

if [ ! -e "$python_stamp" ]; then
    echo "bootstrap: installing kvmppc and its test tools into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f "$stamp_dir"/python-*
    touch "$python_stamp"
fi
