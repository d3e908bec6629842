#!/bin/bash
# Install the Debian 12 system packages kvmppc needs, by role. Run as root.
#   setup-system.sh runtime   what `pip install kvmppc` needs to build and the daemon needs to
#                             run; works unchanged on a ppc64el (or any Debian) host
#   setup-system.sh test      runtime plus everything the test suite needs (QEMU, a ppc64el
#                             cross tool-chain, kernel build tools, Prometheus, systemd tools...)
#   setup-system.sh --list ROLE   print the packages of ROLE, one a line, and install nothing
# Idempotent: safe to run on every CI run and by hand. Installs with --no-install-recommends,
# so every package a step needs is named here, each group under a comment saying who needs it.
set -euo pipefail

runtime_packages=(
    # scripts/bootstrap.sh: a virtual environment with pip (python3-venv brings ensurepip's
    # wheels); pip reaches PyPI over TLS with the system's certificate authorities.
    python3 python3-venv ca-certificates
    # pip install .: cffi (API mode) compiles kvmppc's extension: a C compiler, the C library's
    # headers (only *recommended* by gcc), the kernel's UAPI headers (linux/kvm.h) and
    # Python.h (python3-dev). cffi and the other dependencies come as wheels from PyPI.
    gcc libc6-dev linux-libc-dev python3-dev
    # service/kvmppc.service: ExecReload=/bin/kill (procps; minimal roots lack it, and
    # systemd-analyze verify refuses a unit whose command is missing).
    procps
)

test_packages=(
    # tests/test_packaging.py lists the checkout's files with git.
    git
    # kvmppc[journal] (systemd-python, no wheels on PyPI) in the test venv, so the journal
    # logging path is tested: it builds against libsystemd with pkg-config.
    pkg-config libsystemd-dev
    # tests/powerguest: boot ppc64le kernels under QEMU (machine pseries; vof.bin is in
    # qemu-system-data), cross-build kvmppc's cffi extension against ppc64el's C library
    # headers (libc6-dev-ppc64el-cross is only *recommended* by the cross compiler), pack and
    # unpack initramfs images.
    qemu-system-ppc qemu-system-data gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross
    cpio gzip xz-utils zstd
    # tests/powerguest/kvm_oracle.py: Debian's ppc64el QEMU in the guest, cut down to the ELF
    # closure of its binary (powerpc64le-linux-gnu-readelf), and Debian 13's packages, an
    # older build from the pool when the index names one the registry does not serve (curl;
    # the trixie archive key is in debian-archive-keyring).
    binutils-powerpc64le-linux-gnu curl debian-archive-keyring
    # tests/powerguest/build-pr-kernel.sh: build the KVM-PR capable kernel from
    # linux-source-6.1 (host tools of the kernel build: make, flex, bison, bc, perl, openssl
    # and libelf headers).
    make flex bison bc perl libssl-dev libelf-dev
    # The daemon's tests: systemd-socket-activate and systemd-analyze (systemd), a real
    # Prometheus server and promtool (prometheus), curl --unix-socket as a client, setpriv
    # (util-linux) to run it without capabilities.
    systemd prometheus curl util-linux
    # The units booted for real: systemd-nspawn (systemd-container) in a Debian root that
    # mmdebstrap bootstraps.
    systemd-container mmdebstrap
    # The libvirt hook test runs a real libvirtd (libvirt-daemon-system, its QEMU driver) and
    # virsh (libvirt-clients); in a bare root libvirtd also wants dnsmasq-base, and the
    # pseries guest it starts the ROMs in seabios (../shared/reference/libvirt-hook-recipe).
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base seabios
    # bench/: command-line timings.
    hyperfine
)

usage() { echo "usage: $0 [--list] runtime|test" >&2; exit 2; }
list=false
if [ "${1:-}" = --list ]; then list=true; shift; fi
case "${1:-}" in
    runtime) packages=("${runtime_packages[@]}") ;;
    test) packages=("${runtime_packages[@]}" "${test_packages[@]}") ;;
    *) usage ;;
esac
role=$1
if [ "$list" = true ]; then printf '%s\n' "${packages[@]}"; exit 0; fi

# The guest harness fetches Debian's ppc64el packages (kernel, busybox, python3.11) with
# `apt-get download`, which needs that architecture's package lists. Only the test role:
# on a ppc64el host the runtime role needs nothing foreign.
if [ "$role" = test ] && [ "$(dpkg --print-architecture)" != ppc64el ] &&
    ! dpkg --print-foreign-architectures | grep -qx ppc64el; then
    dpkg --add-architecture ppc64el
fi

# A mirror mid-sync ("Mirror sync in progress", seen on bookworm-security ppc64el) makes
# apt-get update fail for one source while the others are fine; retry, then go on with the
# lists we have rather than fail the whole setup.
updated=false
for attempt in 1 2; do
    if apt-get update -q; then
        updated=true
        break
    fi
    if [ "$attempt" -lt 2 ]; then
        echo "setup-system: apt-get update failed (attempt $attempt of 2), retrying in 15 s" >&2
        sleep 15
    fi
done
if [ "$updated" = false ]; then
    echo "setup-system: apt-get update kept failing; continuing with the package lists we have" >&2
fi

DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
