#!/bin/bash
# A real libvirtd calling `kvmppc libvirt-hook`, on this host, in a private mount namespace:
# libvirt's configuration, run, state, log and cache directories are fresh tmpfs/copies under
# $1, so the host's libvirt (if any) is neither seen nor touched.  Run it as root with
#   unshare --mount --propagation private tests/libvirt/hook-e2e.sh WORKDIR KVMPPC
# It defines two pseries domains (TCG) and starts them: the hook must refuse the first (a
# 16 MiB cap that a 64 KiB POWER9 host cannot back) and let the second (64 KiB) start.
# Details that matter (../shared/reference/libvirt-hook-recipe): virtlogd before libvirtd,
# a hook file present when libvirtd starts.
set -u
work=$1; kvmppc=$2
pids=()
cleanup() {
  # Guests first: QEMU outlives libvirtd (it is not libvirtd's child once started).
  for name in kvmppc-bad kvmppc-good; do
    timeout 20 virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
}
trap cleanup EXIT
mkdir -p "$work/etc" "$work/hooklog"
cp -a /etc/libvirt "$work/etc/libvirt"
mount --bind "$work/etc/libvirt" /etc/libvirt
for dir in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$dir" && mount -t tmpfs tmpfs "$dir"
done
mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /etc/libvirt/hooks/qemu.d
cat > "$work/kvmppc.conf" <<CONF
socket = "$work/no-daemon.sock"
host_profile = "power9-radix-hv"
hook_assume_kvm = true
CONF
# The hook as the README installs it, with the config named for this test.
cat > /etc/libvirt/hooks/qemu.d/50-kvmppc <<HOOK
#!/bin/sh
echo "\$*" >> $work/hooklog/calls
KVMPPC_CONFIG=$work/kvmppc.conf exec $kvmppc libvirt-hook "\$@"
HOOK
chmod 755 /etc/libvirt/hooks/qemu.d/50-kvmppc
virtlogd > "$work/virtlogd.log" 2>&1 &
pids+=($!)
libvirtd > "$work/libvirtd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
virsh="virsh -q -c qemu:///system"
domain() {  # NAME MAXPAGESIZE-KiB
  cat <<XML
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>512</memory>
  <os><type arch='ppc64' machine='pseries'>hvm</type></os>
  <features><hpt resizing='enabled'><maxpagesize unit='KiB'>$2</maxpagesize></hpt></features>
  <devices><emulator>/usr/bin/qemu-system-ppc64</emulator><graphics type='vnc' port='-1'/></devices>
</domain>
XML
}
domain kvmppc-bad 16384 > "$work/bad.xml"
domain kvmppc-good 64 > "$work/good.xml"
$virsh define "$work/bad.xml" >/dev/null
$virsh define "$work/good.xml" >/dev/null
echo "== start kvmppc-bad"
$virsh start kvmppc-bad 2>&1; echo "rc=$?"
echo "== start kvmppc-good"
$virsh start kvmppc-good 2>&1; echo "rc=$?"
echo "== state"
$virsh domstate kvmppc-bad 2>&1
$virsh domstate kvmppc-good 2>&1
echo "== hook calls"
cat "$work/hooklog/calls"
