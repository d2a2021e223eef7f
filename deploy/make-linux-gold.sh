#!/bin/bash
# make-linux-gold.sh — builds a small Linux desktop gold from Debian packages
# only, for pools whose desktops must do something real: boot an OS, run the
# QEMU guest agent, log a user in and off.
#
#   deploy/make-linux-gold.sh OUTDIR
#
# OUTDIR receives (nothing else is touched; re-running rebuilds them):
#   linux-gold.qcow2    the gold: an ext4 root with busybox, qemu-ga and its
#                       libraries, and an init that starts the agent, logs the
#                       user "user" in (utmp, what guest-get-users reads) and
#                       writes /home/user/notes.txt
#                       (/sbin/vdi-guest-idle prints the user's idle seconds,
#                       for idle_command)
#   linux-broken.qcow2  the same, except that its init never starts the agent:
#                       a guest that "never boots", for boot_timeout
#   vmlinuz, initrd.img the Debian kernel and an initramfs (busybox) that loads
#                       virtio_pci, virtio_blk, virtio_console and ext4 and
#                       switches to /dev/vda
#   domain.xml          a pool domain template: direct kernel boot, serial
#                       console, the guest agent's channel
#
# Inside a desktop, log the user off with the agent:
#   virsh qemu-agent-command DOMAIN \
#     '{"execute":"guest-exec","arguments":{"path":"/sbin/vdi-guest-user","arg":["logout","user"]}}'
#
# Needs: apt (downloads linux-image-amd64, busybox-static and qemu-guest-agent
# with apt-get download; nothing is installed on the host but kmod, cpio,
# e2fsprogs and qemu-guest-agent's libraries), a C compiler with static glibc
# (libc6-dev), qemu-img. Downloaded packages are kept in
# ${VDIPOOL_DEB_CACHE:-/var/cache/vdipool/debs}.
set -euo pipefail

out=${1:?usage: make-linux-gold.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
cache=${VDIPOOL_DEB_CACHE:-/var/cache/vdipool/debs}
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
work=$(mktemp -d /var/tmp/vdipool-linux-gold.XXXXXX)
trap 'rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null || { echo "make-linux-gold: '$1' is missing: run deploy/setup.sh (or apt-get install $2)" >&2; exit 1; }; }
need depmod kmod
need cpio cpio
need mkfs.ext4 e2fsprogs
need qemu-img qemu-utils
need cc gcc

# ---- packages ----------------------------------------------------------------------
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$kpkg" ]; then
    echo "make-linux-gold: apt does not know linux-image-amd64; run apt-get update" >&2
    exit 1
fi
fetch() {
    local pkg=$1
    if ! ls "$cache/${pkg}_"*.deb >/dev/null 2>&1; then
        (cd "$cache" && apt-get download "$pkg" >/dev/null 2>&1) || {
            echo "make-linux-gold: cannot download $pkg with apt-get download" >&2
            exit 1
        }
    fi
    ls -t "$cache/${pkg}_"*.deb | head -1
}
for pkg in "$kpkg" busybox-static qemu-guest-agent; do
    dpkg-deb -x "$(fetch "$pkg")" "$work/pkgs"
done
kver=${kpkg#linux-image-}
bb="$work/pkgs/bin/busybox"
ga="$work/pkgs/usr/sbin/qemu-ga"
[ -x "$bb" ] && [ -x "$ga" ] && [ -f "$work/pkgs/boot/vmlinuz-$kver" ] || {
    echo "make-linux-gold: the packages do not hold busybox, qemu-ga or vmlinuz-$kver" >&2
    exit 1
}
missing=$(ldd "$ga" | awk '/not found/{print $1}')
if [ -n "$missing" ]; then
    echo "make-linux-gold: qemu-ga needs libraries this host lacks ($missing);" \
         "run deploy/setup.sh" >&2
    exit 1
fi

# ---- the initramfs: modules, busybox, an init that finds the root disk ------------------
depmod -b "$work/pkgs" "$kver"
ird="$work/initramfs"
mkdir -p "$ird/bin" "$ird/lib/modules" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/newroot"
cp "$bb" "$ird/bin/busybox"
for a in sh mount umount mkdir sleep insmod switch_root cat echo; do ln -s busybox "$ird/bin/$a"; done
: > "$ird/modules.list"
for m in virtio_pci virtio_blk virtio_console ext4; do
    modprobe -d "$work/pkgs" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$ird/lib/modules/"
    basename "$ko" >> "$ird/modules.list"
done
cat > "$ird/init" <<'INIT'
#!/bin/sh
# vdipool Linux demo gold, initramfs: load the drivers, mount the gold's root.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "initramfs: cannot mount /dev/vda; the desktop will not boot" > /dev/console
    exec sleep 2147483647
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.img"

# ---- the root filesystem: busybox, the agent and its libraries, the session ----------
make_root() { # DIR BROKEN
    local root=$1 broken=$2
    mkdir -p "$root"/{bin,sbin,usr/sbin,proc,sys,dev,run,tmp,etc,home/user,root}
    mkdir -p "$root/var"
    ln -s ../run "$root/var/run" # utmp is /var/run/utmp, on the tmpfs
    cp "$bb" "$root/bin/busybox"
    "$bb" --list | while read -r applet; do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    cp "$ga" "$root/usr/sbin/qemu-ga"
    ldd "$ga" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    cc -static -O2 -o "$root/sbin/vdi-guest-user" "$here/guest/vdi-guest-user.c" 2>/dev/null
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "user:x:1000:1000:Desktop user:/home/user:/bin/sh" >> "$root/etc/passwd"
    printf 'root:x:0:\nuser:x:1000:\n' > "$root/etc/group"
    printf 'NAME="vdipool Linux demo"\nID=vdipool-demo\nVERSION_ID=1\n' > "$root/etc/os-release"
    if [ "$broken" = yes ]; then
        cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
# A broken desktop: the OS "hangs" before its agent starts.
echo "vdipool broken demo gold: hanging on purpose" > /dev/console
exec sleep 2147483647
INIT
    else
        cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
# vdipool Linux demo gold: start the guest agent, log the demo user in.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/lock
hostname localhost
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
done
if [ -z "$port" ]; then
    echo "vdipool demo gold: no guest agent channel in this domain" > /dev/console
else
    /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run &
fi
# The session: what a display manager does when a user logs in.
echo "written at log-in, $(date)" > /home/user/notes.txt
sync
/sbin/vdi-guest-user login user
touch /run/vdi-activity
echo "vdipool demo gold: user logged in; agent on ${port:-nothing}" > /dev/console
while :; do sleep 3600; done
INIT
    fi
    chmod 755 "$root/sbin/init"
    # For idle_logoff: seconds since the user's last activity, which the
    # session marks by touching /run/vdi-activity (a real desktop would ask
    # its display server).
    cat > "$root/sbin/vdi-guest-idle" <<'IDLE'
#!/bin/sh
last=$(stat -c %Y /run/vdi-activity 2>/dev/null) || { echo "no session" >&2; exit 1; }
echo $(( $(date +%s) - last ))
IDLE
    chmod 755 "$root/sbin/vdi-guest-idle"
    # The agent's guest-shutdown runs /sbin/shutdown; busybox has poweroff.
    printf '#!/bin/sh\nsync\nexec poweroff -f\n' > "$root/sbin/shutdown"
    chmod 755 "$root/sbin/shutdown"
}

make_gold() { # NAME BROKEN
    local name=$1 root="$work/root-$1"
    make_root "$root" "$2"
    local size_mib=$(( $(du -sm "$root" | cut -f1) + 16 ))
    mkfs.ext4 -q -F -L vdipool-demo -d "$root" "$work/$name.raw" "${size_mib}M" >/dev/null
    chattr -i "$out/$name.qcow2" 2>/dev/null || true
    rm -f "$out/$name.qcow2"
    qemu-img convert -q -f raw -O qcow2 "$work/$name.raw" "$out/$name.qcow2.tmp"
    sync -f "$out/$name.qcow2.tmp" 2>/dev/null || sync
    mv "$out/$name.qcow2.tmp" "$out/$name.qcow2"
}
make_gold linux-gold no
make_gold linux-broken yes
install -m 0644 "$work/pkgs/boot/vmlinuz-$kver" "$out/vmlinuz"
install -m 0644 "$work/initrd.img" "$out/initrd.img"

cat > "$out/domain.xml" <<XML
<!-- vdipool Linux demo gold: direct kernel boot, TCG or KVM ({{type}}). -->
<domain type='{{type}}'>
  <name>{{name}}</name>
{{metadata}}
  <memory unit='KiB'>{{memory_kib}}</memory>
  <vcpu>{{vcpus}}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$out/vmlinuz</kernel>
    <initrd>$out/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable no_timer_check</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{{disk}}
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML
echo "make-linux-gold: $out/linux-gold.qcow2 ($(du -k "$out/linux-gold.qcow2" | cut -f1) KiB)," \
     "kernel $kver, template $out/domain.xml"
