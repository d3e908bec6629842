#!/bin/bash
# Install the Debian 12 system packages that kvmppc's build and tests need. Run as root.
# Idempotent: safe to run on every CI run and by hand. Add your packages to the list below,
# each group under a comment saying who needs it.
set -euo pipefail

packages=(
    # pip install .: systemd-python builds from source against libsystemd; cffi's extension
    # needs a C compiler and the kernel's UAPI headers.
    gcc pkg-config libsystemd-dev linux-libc-dev
    # tests/powerguest: boot ppc64le kernels under QEMU (machine pseries; vof.bin comes in
    # qemu-system-data), cross-build kvmppc's cffi extension, pack and unpack initramfs images.
    qemu-system-ppc gcc-powerpc64le-linux-gnu cpio gzip xz-utils zstd
    # tests/powerguest/build-pr-kernel.sh: build the KVM-PR capable kernel from linux-source-6.1.
    make flex bison bc libssl-dev libelf-dev
    # The daemon's tests: systemd-socket-activate and systemd-analyze (systemd), a real
    # Prometheus server and promtool (prometheus), curl --unix-socket as a client, setpriv
    # (util-linux) to run it without capabilities.
    systemd prometheus curl util-linux
)

# The guest harness fetches Debian's ppc64el packages (kernel, busybox, python3.11) with
# `apt-get download`, which needs the foreign architecture's package lists.
if ! dpkg --print-foreign-architectures | grep -qx ppc64el; then
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
