#!/bin/bash
# Bootstrap a Debian 13 (trixie) root holding Debian 13's qemu-system-ppc (QEMU 10.0) for the
# differential tests, and write it as a tarball:   debian13-qemu-root.sh OUT.tar
#
# The tests (tests/qemu_oracle.py) call this when the tarball for the current content of this
# script is missing: the cache name carries the script's sha256, so changing the recipe makes a
# new root.  Packages come from the host's apt registry (its sources' URIs, its apt
# configuration and its certificate authorities, as ../shared/tools/fresh-root.sh does), with
# the suite switched to trixie; the host's keyrings already hold the trixie archive keys
# (debian-archive-keyring).  Needs root and mmdebstrap.
#
# Only Depends are installed (mmdebstrap installs no Recommends): qemu-system-ppc pulls
# qemu-system-common and qemu-system-data, which holds SLOF (/usr/share/qemu/slof.bin), the
# firmware the pseries machine loads.  Nothing else is needed to run QEMU under TCG.
set -euo pipefail
out=${1:?usage: debian13-qemu-root.sh OUT.tar}
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (mmdebstrap --mode=root, chroot)" >&2; exit 2; }

work=$(mktemp -d "${out%/*}/.debian13-root.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT

# The host's Debian mirror (deb822 or one-line form), with trixie's suites.
mirror=$(sed -n 's/^URIs:[[:space:]]*\(\S*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/*.sources \
           2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(\S*\/debian\)\/\?[[:space:]].*/\1/p' \
                               /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
security=${mirror%/debian}/debian-security
cat >"$work/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

aptopts=()
for f in /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && aptopts+=(--aptopt="$f")
done

# customize-hook: the root keeps the host's CA bundle (apt inside it reaches the same registry)
# and records what was installed, for the tests to report.
mmdebstrap --mode=root --variant=minbase --include=qemu-system-ppc "${aptopts[@]}" \
  --customize-hook='mkdir -p "$1/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"' \
  --customize-hook='cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" qemu-system-ppc qemu-system-data > "$1/kvmppc-root-packages"' \
  --customize-hook='chroot "$1" apt-get clean' \
  trixie "$work/root.tar" "$work/trixie.sources" >&2
mv "$work/root.tar" "$out"
