#!/bin/bash
# Build a ppc64le kernel whose KVM-PR module can be loaded, from Debian's linux-source-6.1.
#
# Debian's own powerpc64le kernel cannot have KVM-PR: it sets NO_HZ_FULL, which selects
# CONTEXT_TRACKING_USER, and KVM_BOOK3S_64_PR depends on !CONTEXT_TRACKING_USER
# (arch/powerpc/kvm/Kconfig). This config does CPU time accounting with
# VIRT_CPU_ACCOUNTING_NATIVE instead, so PR becomes selectable, and builds kvm, kvm-hv and
# kvm-pr as modules. Everything else that a pseries guest booted from an initramfs does not
# need is left out to keep the build short (13 min or more on 2 cores).
#
# --pages 4k builds the same kernel with 4 KiB base pages (PPC_4K_PAGES), the page size Debian 13
# moved ppc64el to; the default is 64 KiB (PPC_64K_PAGES), Debian 12's.
#
# Output, cached: $KVMPPC_GUEST_CACHE/pr-kernel/<linux-source version>-<pages>-<hash>/, where
# <hash> is of this script's lines other than comments (harness.py computes the same),
#   vmlinux  modules/{kvm,kvm-hv,kvm-pr}.ko  config  release  build.log
# and the file DONE once all of it is there. The harness (harness.py) looks for that layout.
#
# usage: build-pr-kernel.sh [--pages 64k|4k] [--print-dir]
#        (--print-dir: say where the kernel goes, and stop)
set -euo pipefail

cache=${KVMPPC_GUEST_CACHE:-/var/tmp/kvmppc-guest}
src_pkg=linux-source-6.1
script_hash=$(grep -v '^ *#' "$0" | sha256sum | cut -c1-12)
export ARCH=powerpc CROSS_COMPILE=powerpc64le-linux-gnu-

say() { echo "build-pr-kernel: $*" >&2; }

pages=64k print_dir=0
while [ $# -gt 0 ]; do
    case $1 in
        --pages) pages=${2:-}; shift 2 ;;
        --print-dir) print_dir=1; shift ;;
        *) say "unknown argument $1 (usage: build-pr-kernel.sh [--pages 64k|4k] [--print-dir])"; exit 2 ;;
    esac
done
case $pages in
    64k) page_options=(-e PPC_64K_PAGES -d PPC_4K_PAGES) localversion=-kvmpr ;;
    4k) page_options=(-d PPC_64K_PAGES -e PPC_4K_PAGES) localversion=-kvmpr4k ;;
    *) say "--pages must be 64k or 4k, not '$pages'"; exit 2 ;;
esac

# The version apt would fetch now keys the cache; the .deb's file name carries it.
uri_line=$(apt-get download --print-uris "$src_pkg" | tail -1)
deb_name=$(echo "$uri_line" | awk '{print $2}')
src_version=$(echo "$deb_name" | sed -E "s/^${src_pkg}_([^_]+)_all\.deb$/\1/; s/%3a/:/")
out="$cache/pr-kernel/${src_version}-${pages}-${script_hash}"
if [ "$print_dir" = 1 ]; then echo "$out"; exit 0; fi
if [ -f "$out/DONE" ]; then say "already built: $out"; exit 0; fi

mkdir -p "$cache/debs" "$out"
if [ ! -f "$cache/debs/$deb_name" ]; then
    say "downloading $deb_name"
    (cd "$cache/debs" && apt-get download -q "$src_pkg" >&2)
fi

work="$out/work"
rm -rf "$work"; mkdir -p "$work/deb" "$work/src" "$work/build"
say "unpacking $deb_name"
dpkg -x "$cache/debs/$deb_name" "$work/deb"
tar -xJf "$work/deb"/usr/src/$src_pkg.tar.xz -C "$work/src" --strip-components=1
rm -rf "$work/deb"
src="$work/src" build="$work/build"

say "configuring"
make -s -C "$src" O="$build" pseries_le_defconfig >/dev/null
# Modules other than KVM's are not needed in an initramfs-only guest: drop them all.
sed -i -E '/^CONFIG_KVM/!s/^(CONFIG_[A-Za-z0-9_]+)=m$/# \1 is not set/' "$build/.config"
config() { "$src/scripts/config" --file "$build/.config" "$@"; }
config -d NO_HZ_FULL -d VIRT_CPU_ACCOUNTING_GEN -e VIRT_CPU_ACCOUNTING_NATIVE
config "${page_options[@]}"
config -e VIRTUALIZATION -m KVM_BOOK3S_64 -m KVM_BOOK3S_64_HV -m KVM_BOOK3S_64_PR -e KVM_GUEST
# What the harness's guest uses: initramfs (gzip), devtmpfs, tmpfs, the hvc console.
config -e BLK_DEV_INITRD -e RD_GZIP -e DEVTMPFS -e TMPFS -e HVC_CONSOLE -e DEBUG_INFO_NONE
for option in FTRACE KPROBES XMON PROFILING KEXEC CRASH_DUMP BPF_SYSCALL AUDIT SECURITY \
    DEBUG_INFO_BTF USB FB DRM SOUND HID INPUT_MOUSE INPUT_KEYBOARD INFINIBAND WLAN WIRELESS \
    NETFILTER IPV6 NFS_FS EXT2_FS EXT4_FS ISO9660_FS MSDOS_FS MD ATA SCSI \
    NET_VENDOR_INTEL NET_VENDOR_BROADCOM NET_VENDOR_MELLANOX NET_VENDOR_CHELSIO; do
    config -d "$option"
done
config --set-str LOCALVERSION "$localversion"
make -s -C "$src" O="$build" olddefconfig
for required in CONFIG_KVM_BOOK3S_64_PR=m CONFIG_KVM_BOOK3S_64_HV=m CONFIG_KVM_BOOK3S_64=m; do
    grep -qx "$required" "$build/.config" || { say "config lacks $required"; exit 1; }
done
grep -qx "CONFIG_PPC_${pages^^}_PAGES=y" "$build/.config" || { say "config lacks PPC_${pages^^}_PAGES"; exit 1; }
if grep -q '^CONFIG_CONTEXT_TRACKING_USER=y' "$build/.config"; then
    say "config still has CONTEXT_TRACKING_USER, so no KVM-PR"; exit 1
fi

jobs=$(nproc)
say "building vmlinux and the KVM modules with $jobs jobs (about 7 min on 2 cores); log: $out/build.log"
start=$(date +%s)
# Progress: one line on stderr for every 250 lines of make output.
make -C "$src" O="$build" -j"$jobs" vmlinux modules 2>&1 | tee "$out/build.log" |
    awk -v t0="$start" 'NR % 250 == 0 { printf "build-pr-kernel: %4d s, %5d lines: %s\n", systime() - t0, NR, $0 > "/dev/stderr" }'
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then tail -30 "$out/build.log" >&2; say "make failed ($status)"; exit "$status"; fi

mkdir -p "$out/modules"
for module in kvm kvm-hv kvm-pr; do
    powerpc64le-linux-gnu-strip --strip-debug -o "$out/modules/$module.ko" \
        "$build/arch/powerpc/kvm/$module.ko"
done
powerpc64le-linux-gnu-strip -o "$out/vmlinux" "$build/vmlinux"
cp "$build/.config" "$out/config"
cat "$build/include/config/kernel.release" > "$out/release"
rm -rf "$work"
touch "$out/DONE"
say "built $(cat "$out/release") in $(( $(date +%s) - start )) s: $out"
