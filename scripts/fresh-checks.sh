#!/bin/bash
# Checks a new user's steps in a fresh root; run through scripts/ci-fresh.sh, e.g.
#   scripts/ci-fresh.sh bash scripts/fresh-checks.sh serve
#   scripts/ci-fresh.sh bash scripts/fresh-checks.sh pip-install
# serve        scripts/serve.sh installs no QEMU, cross compiler, Prometheus or foreign
#              architecture, and serves: the API socket and the metrics port answer.
# pip-install  `pip install .` into a new venv with the runtime packages only (no
#              libsystemd-dev, no pkg-config), then `kvmppc check` runs from that venv.
# nspawn       a Debian root bootstrapped with mmdebstrap boots under `systemd-nspawn --boot`
#              inside this root (as the tests of the units do) and powers off again.
# Refuses to run outside a root that ci-fresh.sh made (it installs packages).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "fresh-checks: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

if [ "${CI:-}" != true ] || [ "$PWD" != /src/kvmppc ]; then
    fail "run me through scripts/ci-fresh.sh (I install Debian packages)"
fi

# Debian packages that only the test role may bring.
test_only_installed() {
    dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 2>/dev/null |
        awk '$1 == "ii" { print $2 }' |
        grep -E '^(qemu-system.*|gcc-.*powerpc.*|.*-cross|prometheus.*|libsystemd-dev|pkg-config|pkgconf)$' || true
}

check_serve() {
    local socket=/run/kvmppc/kvmppc.sock port log=/tmp/serve.log pid
    port=$(sed -n 's/^DEFAULT_METRICS_PORT = //p' kvmppc/daemon/config.py)
    local started=$SECONDS
    bash scripts/serve.sh >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1200); do   # bootstrap (packages, venv) then the first probe
        [ -S "$socket" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "scripts/serve.sh ended"; }
        sleep 0.5
    done
    [ -S "$socket" ] || { cat "$log" >&2; fail "no socket at $socket"; }
    say "serving after $(( SECONDS - started )) s (set-up included)"
    local extra
    extra=$(test_only_installed)
    [ -z "$extra" ] || fail "serve.sh installed test-role packages: $(echo $extra)"
    [ -z "$(dpkg --print-foreign-architectures)" ] || fail "serve.sh added a foreign architecture"
    say "installed by serve.sh: no QEMU, no cross compiler, no Prometheus, no foreign arch"
    .venv/bin/kvmppc query health --socket "$socket"
    # A client of our own, not the daemon's: curl (installed only now, after the check above).
    apt-get install -y -q --no-install-recommends curl >/dev/null
    curl -fsS --unix-socket "$socket" 'http://localhost/v1/check?max_page_size=16M' \
        -H 'Accept: text/plain'
    curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^kvmppc_kvm_present ' ||
        fail "no kvmppc_kvm_present on the metrics port $port"
    kill -TERM "$pid"
    wait "$pid" || true
    [ ! -S "$socket" ] || say "note: the socket file is left behind after SIGTERM"
    tail -5 "$log" >&2
    say "serve: OK"
}

check_pip_install() {
    bash scripts/setup-system.sh runtime
    local extra
    extra=$(test_only_installed)
    [ -z "$extra" ] || fail "the runtime role installed test-role packages: $(echo $extra)"
    python3 -m venv /opt/kvmppc
    /opt/kvmppc/bin/python -m pip install -q .
    cd /tmp   # away from the checkout, so the installed copy is what runs
    /opt/kvmppc/bin/python -c 'import kvmppc, sys; sys.exit(not kvmppc.__file__.startswith("/opt/kvmppc/"))' ||
        fail "kvmppc is not imported from the venv"
    local status=0
    /opt/kvmppc/bin/kvmppc check --host-profile power9-radix-hv --max-page-size 16M || status=$?
    [ "$status" -eq 1 ] || fail "kvmppc check exited $status, expected 1 (would NOT start)"
    say "pip-install: OK (pip install . without libsystemd-dev; kvmppc check exit 1 as expected)"
}

check_nspawn() {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        systemd-container mmdebstrap >/dev/null
    local os=/var/tmp/nspawn-os
    mmdebstrap --variant=minbase --include=systemd,systemd-sysv bookworm "$os" \
        /etc/apt/sources.list.d/*.sources >/dev/null 2>&1 || fail "mmdebstrap could not bootstrap $os"
    local started=$SECONDS
    # systemd.unit=poweroff.target: boot the container's systemd to the end and stop again.
    timeout 300 systemd-nspawn --quiet --register=no --keep-unit -D "$os" --boot \
        systemd.unit=poweroff.target || fail "systemd-nspawn --boot failed"
    say "nspawn: OK (booted and powered off in $(( SECONDS - started )) s)"
}

case "${1:-}" in
    serve) check_serve ;;
    pip-install) check_pip_install ;;
    nspawn) check_nspawn ;;
    *) echo "usage: $0 serve|pip-install|nspawn" >&2; exit 2 ;;
esac
