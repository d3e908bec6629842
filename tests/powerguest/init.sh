#!/bin/busybox sh
# /init of the kvmppc guest (tests/powerguest). Loads the KVM modules, runs each command the
# host put in /etc/kvmppc-guest, prints each command's output framed by the run's marker and
# base64-encoded (the hvc console turns "\n" into "\r\n" and may split lines), powers off.
#
# /etc/kvmppc-guest/run.conf (sourced): MARKER, MODULES ("kvm kvm-hv"), SHELL_AFTER (0/1)
# /etc/kvmppc-guest/commands.list: one "NAME TIMEOUT_SECONDS" a line, in order
# /etc/kvmppc-guest/commands/NAME.sh: the command, run by busybox sh from /root

/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /root /run && mount -t tmpfs tmpfs /tmp
. /etc/kvmppc-guest/run.conf

frame() { # NAME RC FILE: the framed, base64-encoded result of one step
    echo  # ends a line the kernel may have left open on the console
    echo "$MARKER BEGIN $1"
    base64 "$3"
    echo "$MARKER END $1 rc=$2"
}

# Step "_init": module loading, as a result of its own so a test can say why /dev/kvm is
# missing (e.g. "kvm-hv: Parent hypervisor does not support nesting" without cap-nested-hv).
log=/tmp/init.out
status=0
{
    echo "kernel $(uname -r)"
    for module in $MODULES; do
        if [ -e "/sys/module/$(echo "$module" | tr - _)" ]; then
            echo "$module: already loaded"
        elif insmod "/lib/modules/kvmppc-guest/$module.ko"; then
            echo "$module: loaded"
        else
            echo "$module: insmod failed"
            status=1
        fi
    done
    ls -l /dev/kvm
    echo "--- dmesg (kvm)"
    dmesg | grep -iE 'kvm|nested|hypervisor'
} > "$log" 2>&1
frame _init "$status" "$log"

cd /root
while read -r name seconds; do
    [ -n "$name" ] || continue
    timeout -s KILL "$seconds" sh "/etc/kvmppc-guest/commands/$name.sh" > /tmp/cmd.out 2>&1
    frame "$name" "$?" /tmp/cmd.out
done < /etc/kvmppc-guest/commands.list

echo "$MARKER DONE"
if [ "$SHELL_AFTER" = 1 ]; then
    echo "kvmppc guest: shell on the console; 'exit' powers off"
    setsid cttyhack sh -l
fi
poweroff -f
