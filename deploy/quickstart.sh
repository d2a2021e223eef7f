#!/usr/bin/env bash
# The README's main job, on a fresh Debian 12 host, as root:
#   deploy/quickstart.sh          set up the host, build, make and seal a demo gold,
#                                 start vdipoold with a demo pool, show the desktops
#   deploy/quickstart.sh --stop   stop the demo daemon, remove its domains, children and files
# Running it again restarts the demo daemon; running desktops are adopted.
#
# The demo pool has 3 desktops, 2 kept started as spares. Its guests are the
# project's own boot sector (deploy/make-demo-gold.c) under TCG: they print a
# line, wait for a key, and power off when one is pressed - a user logging off.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${VDIPOOL_DEMO_DIR:-/var/lib/vdipool-demo}
prefix=${VDIPOOL_DEMO_PREFIX:-demo}
export VDIPOOL_STATE_DIR="$demo/state"
export VDIPOOL_SOCKET="$demo/vdipool.sock"
ctl="$root/build/vdipoolctl"
pidfile="$demo/vdipoold.pid"

stop_daemon() {
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill -TERM "$(cat "$pidfile")"
        for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

if [ "${1:-}" = "--stop" ]; then
    stop_daemon
    # The demo pool's domains, and any other pool's (the README's Linux pool)
    # whose disk lives in the demo's directory.
    for n in $(virsh -c qemu:///system list --all --name 2>/dev/null || true); do
        if [[ "$n" =~ ^$prefix-[0-9]+$ ]] ||
           virsh -c qemu:///system domblklist "$n" 2>/dev/null | grep -q " $demo/"; then
            virsh -c qemu:///system destroy "$n" >/dev/null 2>&1 || true
            virsh -c qemu:///system undefine "$n" >/dev/null 2>&1 || true
        fi
    done
    # A sealed gold is immutable: unseal it (its children go too) before removing files.
    if [ -x "$ctl" ] && [ -e "$demo/golds/demo-gold.qcow2" ]; then
        "$ctl" image unseal --force "$demo/golds/demo-gold.qcow2" >/dev/null 2>&1 || true
    fi
    chattr -R -i "$demo" 2>/dev/null || true
    rm -rf "$demo"
    echo "quickstart: stopped the demo and removed $demo"
    exit 0
fi

bash "$root/deploy/setup.sh"
echo "quickstart: building"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$(nproc)" >/dev/null

stop_daemon
# QEMU runs as libvirt-qemu: the demo's directories must be reachable by it.
mkdir -p "$demo/golds" "$demo/desktops"
chmod 0755 "$demo" "$demo/golds" "$demo/desktops"
gold="$demo/golds/demo-gold.qcow2"
if [ ! -e "$gold" ]; then
    "$root/build/make-demo-gold" "$gold" 64
fi
echo
echo "== the gold, sealed: fingerprinted, read-only, owned by QEMU's user, immutable"
"$ctl" image seal "$gold"

# The dashboard on a loopback port, with a token only root can read.
listen=${VDIPOOL_DEMO_LISTEN:-127.0.0.1:8470}
token_file="$demo/api-token"
if [ ! -s "$token_file" ]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$token_file")
fi

cat > "$demo/vdipool.conf" <<CONF
# The quickstart's demo config (see deploy/vdipool.conf.example for every setting).
service = {
    socket = "$VDIPOOL_SOCKET";
    state_dir = "$VDIPOOL_STATE_DIR";
    libvirt_uri = "qemu:///system";
    acquire_timeout = "60s";
    listen = "$listen";          # the dashboard and the API on loopback TCP, with a token
    token_file = "$token_file";
};
datastores = ( { name = "demo"; path = "$demo/desktops"; reserve = "1G"; max_overcommit = 100.0; } );
golds = ( { name = "demo-gold"; path = "$gold"; } );
pools = (
    {
        name = "demo";
        desktop_prefix = "$prefix";
        gold = "demo-gold";
        datastore = "demo";
        size = 3;
        spares = 2;
        expected_growth = "16M";
        domain = { memory = "32M"; vcpus = 1; network = "none"; graphics = "vnc"; accel = "tcg"; };
        session = { max_duration = "8h"; };
    }
);
CONF
"$ctl" config check --config "$demo/vdipool.conf"

echo
echo "== starting vdipoold (log: $demo/vdipoold.log)"
setsid "$root/build/vdipoold" --config "$demo/vdipool.conf" >>"$demo/vdipoold.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 600); do
    "$ctl" status 2>/dev/null | grep -Eq "ready [2-9]" && break
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "quickstart: vdipoold exited; its log:" >&2
        tail -20 "$demo/vdipoold.log" >&2
        exit 1
    fi
    sleep 0.2
done
echo
"$ctl" status
echo
cat <<NEXT
The demo pool is running: two spare desktops started, ready for users.
Dashboard (from this machine; from another: ssh -L ${listen##*:}:$listen THIS-HOST):
  http://$listen/#token=$(cat "$token_file")
Try next (as root):
  export VDIPOOL_SOCKET=$VDIPOOL_SOCKET VDIPOOL_STATE_DIR=$VDIPOOL_STATE_DIR
  $ctl acquire demo --user alice              # hands alice a desktop (and its VNC display)
  virsh send-key $prefix-001 KEY_Q                      # the user presses a key: the guest powers off
  $ctl status                                 # its desktop and child are gone; the pool refills
  curl -s --unix-socket $VDIPOOL_SOCKET http://vdipool/metrics
  $ctl image tree                             # the gold and its children
  $0 --stop                  # stops vdipoold, removes the demo's domains and files
NEXT
