#!/bin/bash
# Run a command in a clean clone of this checkout inside a freshly bootstrapped Debian 12 root,
# so that nothing installed by hand on this machine can hide a missing install step.
#
#   scripts/ci-fresh.sh [COMMAND...]      as root; COMMAND runs in the clone, /src/kvmppc
#   scripts/ci-fresh.sh                   an interactive shell there instead
#   e.g.  scripts/ci-fresh.sh bash scripts/test.sh -m 'not powerguest'
#         scripts/ci-fresh.sh bash scripts/fresh-checks.sh serve      (see that script)
#
# .ci/run is this with the README's test command. The clone is of HEAD: commit first.
#
# The root: mmdebstrap --variant=minbase plus git, python3, python3-venv and ca-certificates,
# unpacked from a cached tarball into a new directory, removed afterwards. It gets /dev (so
# /dev/kvm), /proc and /sys (with the cgroup tree, so systemd-nspawn can run inside) from the
# host; /tmp and /run are its own tmpfs; all mounts live in a private mount namespace. Copied
# in from the host so the root reaches the package registries: apt's sources, configuration
# and keyrings, /etc/pip.conf, the certificate authorities, resolv.conf. Nothing else.
#
# Only download caches are carried in (bind mounts; none of them is installed state):
#   $KVMPPC_CI_CACHE/apt-archives  apt's downloaded .deb files (/var/cache/apt/archives)
#   $KVMPPC_CI_CACHE/pip           pip's HTTP and wheel cache (/root/.cache/pip)
#   $KVMPPC_GUEST_CACHE/debs       the guest harness's ppc64el .deb files
#   $KVMPPC_GUEST_CACHE/pr-kernel/<key>   each finished KVM-PR kernel, read-only (keyed by
#                                  source version and build script, as the harness looks it up);
#                                  one built in the root is copied out to it afterwards
#   $KVMPPC_CI_CACHE/nspawn-root   the Debian root tarball tests/test_daemon_systemd.py boots
#   $KVMPPC_CI_CACHE/debian13-qemu the Debian 13 root with QEMU 10.0 (tests/qemu_oracle.py)
#                                  (both bootstrapped from the registry by the tests, keyed by
#                                  their recipe, like the base tarball below: no host state)
# The guest image is built afresh in the root (it holds the cross-compiled extension).
# $KVMPPC_CI_CACHE (default /var/tmp/kvmppc-ci) also keeps the base tarball and, after each
# run, the guest consoles (logs/<time>/). KVMPPC_CI_CACHE=<empty dir> gives a cold run.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-fresh: run as root (it bootstraps a root and mounts in a private namespace)" >&2
    exit 1
fi
checkout=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cache=$(readlink -f "${KVMPPC_CI_CACHE:-/var/tmp/kvmppc-ci}")
guest_cache=$(readlink -f "${KVMPPC_GUEST_CACHE:-/var/tmp/kvmppc-guest}")
say() { echo "ci-fresh: $*" >&2; }
mkdir -p "$cache/apt-archives/partial" "$cache/pip" "$cache/roots" "$cache/logs" \
    "$cache/nspawn-root" "$cache/debian13-qemu" \
    "$guest_cache/debs" "$guest_cache/pr-kernel"

# One run at a time per cache: apt locks its archive directory, and two runs would share it.
exec 9>"$cache/lock"
if ! flock -n 9; then
    say "another run holds $cache/lock; waiting"
    flock 9
fi

# The host's package-registry settings: sources that apt would read, apt's configuration,
# keyrings. Only *.list and *.sources are sources to apt.
host_sources=()
[ -s /etc/apt/sources.list ] && host_sources+=(/etc/apt/sources.list)
for file in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -e "$file" ] && host_sources+=("$file")
done
host_aptopts=()
for file in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
    [ -f "$file" ] && host_aptopts+=("--aptopt=$file")
done

includes=ca-certificates,git,python3,python3-venv
base_key=$( (echo "$includes"; cat "${host_sources[@]}") | sha256sum | cut -c1-12)
base=$cache/bookworm-minbase-$base_key.tar
if [ ! -s "$base" ]; then
    command -v mmdebstrap >/dev/null || {
        say "mmdebstrap is missing: apt-get install mmdebstrap"; exit 1; }
    say "bootstrapping the Debian 12 base (minbase + $includes) into $base"
    mmdebstrap --variant=minbase --include="$includes" "${host_aptopts[@]}" \
        bookworm "$base.tmp.tar" "${host_sources[@]}" >&2
    mv "$base.tmp.tar" "$base"
fi

root=$(mktemp -d "$cache/roots/root.XXXXXX")
started=$(date +%s)
cleanup() {
    status=$?
    # The mounts died with their namespace; --one-file-system keeps rm off anything that did not.
    if [ -d "$root/var/tmp/kvmppc-guest/logs" ]; then
        logs=$cache/logs/$(date -d "@$started" +%Y%m%d-%H%M%S)
        mkdir -p "$logs" && cp -a "$root/var/tmp/kvmppc-guest/logs/." "$logs/" || true
        say "guest consoles kept in $logs"
    fi
    # A KVM-PR kernel built in the root goes to the cache (keyed by source version and build
    # script), so the next run does not build it again; never over one the host has or is
    # building (a directory under that key already), and whole or not at all (rename).
    for done_file in "$root"/var/tmp/kvmppc-guest/pr-kernel/*/DONE; do
        [ -e "$done_file" ] || continue
        key=$(basename "$(dirname "$done_file")")
        [ -e "$guest_cache/pr-kernel/$key" ] && continue
        cp -a "$(dirname "$done_file")" "$guest_cache/pr-kernel/.incoming-$key-$$" &&
            mv -T "$guest_cache/pr-kernel/.incoming-$key-$$" "$guest_cache/pr-kernel/$key" &&
            say "the PR kernel built in the root is cached: $guest_cache/pr-kernel/$key"
    done
    rm -rf --one-file-system "$root"
    say "root removed; $(( $(date +%s) - started )) s in all, exit $status"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"

# The host's sources replace the ones mmdebstrap wrote (the same, under another name).
rm -f "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.d/"*
for file in "${host_sources[@]}"; do
    if [ "$file" = /etc/apt/sources.list ]; then
        cp "$file" "$root/etc/apt/sources.list"
    else
        cp "$file" "$root/etc/apt/sources.list.d/"
    fi
done
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
for dir in /etc/apt/trusted.gpg.d /etc/apt/keyrings; do
    [ -d "$dir" ] && mkdir -p "$root$dir" && cp -a "$dir/." "$root$dir/"
done
[ -e /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/pip ] && cp -a /etc/pip "$root/etc/pip"
mkdir -p "$root/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# apt keeps what it downloads (the archive directory is a cache carried between runs).
echo 'Binary::apt-get::APT::Keep-Downloaded-Packages "true";' \
    > "$root/etc/apt/apt.conf.d/99kvmppc-ci-keep-debs"

mkdir -p "$root/src"
git clone -q "$checkout" "$root/src/kvmppc"
say "clone of $(git -C "$root/src/kvmppc" log -1 --format='%h %s')"

# The bind mounts of the download caches, then the PR kernels that are finished.
binds=("$cache/apt-archives:/var/cache/apt/archives" "$cache/pip:/root/.cache/pip"
       "$guest_cache/debs:/var/tmp/kvmppc-guest/debs"
       "$cache/nspawn-root:/var/tmp/kvmppc-nspawn"
       "$cache/debian13-qemu:/var/tmp/kvmppc-debian13-qemu")
readonly_binds=()
for done_file in "$guest_cache"/pr-kernel/*/DONE; do
    [ -e "$done_file" ] || continue
    key=$(basename "$(dirname "$done_file")")
    readonly_binds+=("$guest_cache/pr-kernel/$key:/var/tmp/kvmppc-guest/pr-kernel/$key")
done
mount_script="set -e
mount --make-rprivate /
mount --bind '$root' '$root'   # the root is a mount point, as pivot_root(2) (nspawn) wants
mount --rbind /dev '$root/dev'
mount -t proc proc '$root/proc'
mount --rbind /sys '$root/sys'
mount -t tmpfs -o mode=1777 tmpfs '$root/tmp'
mount -t tmpfs -o mode=755 tmpfs '$root/run'
"
for pair in "${binds[@]}"; do
    mkdir -p "$root${pair#*:}"
    mount_script+="mount --bind '${pair%%:*}' '$root${pair#*:}'
"
done
for pair in "${readonly_binds[@]}"; do
    mkdir -p "$root${pair#*:}"
    mount_script+="mount --bind -o ro '${pair%%:*}' '$root${pair#*:}'
"
    say "carrying in the finished PR kernel ${pair##*/} (read-only)"
done

if [ "$#" -eq 0 ]; then set -- bash -l; fi
say "running in a fresh root ($root): $*"
# CI=true: a test that lacks something fails instead of skipping.
unshare --mount --fork bash -c "$mount_script"'
exec chroot "$0" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 CI=true \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive \
    bash -c '\''cd /src/kvmppc && exec "$@"'\'' bash "$@"' "$root" "$@"
