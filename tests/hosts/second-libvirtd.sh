#!/bin/bash
# second-libvirtd.sh — a second, independent libvirt endpoint on this
# machine for the several-hosts tests: a libvirtd (with its own virtlogd)
# in its own mount and network namespace, so that it has its own domains,
# state and VNC ports, reached from outside through a Unix socket:
#   qemu+unix:///system?socket=DIR/libvirt-sock
# The datastores and golds (under /var/tmp) are the same files on both
# "hosts", like a shared filesystem.
#
#   second-libvirtd.sh start DIR    namespace + virtlogd + libvirtd; waits until it answers
#   second-libvirtd.sh kill DIR     libvirtd dies (SIGKILL): its QEMUs keep running
#   second-libvirtd.sh revive DIR   libvirtd again in the same namespace (it finds its QEMUs)
#   second-libvirtd.sh stop DIR     every domain destroyed, every process gone, DIR removed
#   second-libvirtd.sh run DIR CMD...  CMD inside the namespace
# DIR/local is a directory only this libvirtd sees (a tmpfs mounted in its
# namespace): the place for a host-local datastore.
set -u
cmd=${1:?usage: second-libvirtd.sh start|kill|revive|stop|run DIR}
dir=${2:?usage: second-libvirtd.sh start|kill|revive|stop|run DIR}
uri="qemu+unix:///system?socket=$dir/libvirt-sock"

in_ns() { nsenter -t "$(cat "$dir/holder.pid")" -m -n -- "$@"; }

start_libvirtd() {
    rm -f "$dir/libvirt-sock" "$dir/libvirtd.pid"
    in_ns setsid tini -s -- libvirtd --config "$dir/libvirtd.conf" --pid-file "$dir/libvirtd.pid" \
        >>"$dir/libvirtd.log" 2>&1 </dev/null &
    for _ in $(seq 1 150); do
        if [ -S "$dir/libvirt-sock" ] && virsh -q -c "$uri" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "second-libvirtd: libvirtd in $dir did not answer within 30 s; see $dir/libvirtd.log" >&2
    return 1
}

case $cmd in
start)
    mkdir -p "$dir/local"
    printf 'unix_sock_dir = "%s"\nunix_sock_rw_perms = "0700"\n' "$dir" >"$dir/libvirtd.conf"
    # The holder keeps the namespaces alive between libvirtd's lives; the
    # private tmpfs mounts give this libvirtd its own state and sockets.
    setsid unshare -m -n --propagation private -- sh -c '
        set -e
        ip link set lo up
        for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
            mkdir -p "$d"; mount -t tmpfs -o mode=0755 none "$d"
        done
        if [ -d /etc/libvirt/qemu ]; then mount -t tmpfs -o mode=0755 none /etc/libvirt/qemu; fi
        mount -t tmpfs -o mode=0755 none "$0/local"
        exec sleep infinity' "$dir" >"$dir/holder.log" 2>&1 </dev/null &
    echo $! >"$dir/holder.pid"
    for _ in $(seq 1 50); do
        [ "$(readlink /proc/"$(cat "$dir/holder.pid")"/ns/mnt 2>/dev/null)" != "$(readlink /proc/self/ns/mnt)" ] &&
            in_ns mountpoint -q "$dir/local" 2>/dev/null && break
        sleep 0.1
    done
    in_ns virtlogd -d -p "$dir/virtlogd.pid" || exit 1
    start_libvirtd || exit 1
    echo "$uri"
    ;;
kill)
    [ -f "$dir/libvirtd.pid" ] && kill -9 "$(cat "$dir/libvirtd.pid")" 2>/dev/null
    for _ in $(seq 1 50); do [ -S "$dir/libvirt-sock" ] && ! virsh -q -c "$uri" version >/dev/null 2>&1 && break; sleep 0.1; done
    rm -f "$dir/libvirt-sock"
    ;;
revive)
    start_libvirtd || exit 1
    ;;
stop)
    if [ -f "$dir/holder.pid" ]; then
        for d in $(virsh -q -c "$uri" list --name 2>/dev/null); do
            virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1
        done
        [ -f "$dir/libvirtd.pid" ] && kill "$(cat "$dir/libvirtd.pid")" 2>/dev/null
        [ -f "$dir/virtlogd.pid" ] && kill "$(cat "$dir/virtlogd.pid")" 2>/dev/null
        # QEMUs left behind by a killed libvirtd run in the namespace: end them too.
        holder=$(cat "$dir/holder.pid")
        for p in $(pgrep -f qemu-system 2>/dev/null); do
            [ "$(readlink /proc/"$p"/ns/net 2>/dev/null)" = "$(readlink /proc/"$holder"/ns/net 2>/dev/null)" ] && kill -9 "$p"
        done
        sleep 0.3
        kill "$holder" 2>/dev/null
    fi
    rm -rf "$dir"
    ;;
run)
    shift 2
    in_ns "$@"
    ;;
*) echo "usage: second-libvirtd.sh start|kill|revive|stop DIR" >&2; exit 2 ;;
esac
