#!/bin/bash
# The whole test suite, as CI runs it: set-up (runtime and test roles), lint, types, then pytest (which includes the
# differential test against the real qemu-system-ppc64 and the POWER guest boots).
# Extra arguments go to pytest, e.g. scripts/test.sh -m 'not powerguest' -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check kvmppc tests bench
echo "== mypy --strict"
mypy
echo "== pytest"
exec python -m pytest "$@"
