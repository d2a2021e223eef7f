#!/usr/bin/env bash
# The README's main job: set up the host, build vdipool, make a small demo
# gold and show what the engine does with it. Run as root on Debian 12.
#   deploy/quickstart.sh          set up, build, demo
#   deploy/quickstart.sh --stop   remove what the demo made
#
# Today this shows the image engine (clone, inspect). The pool service,
# vdipoold, is not built yet (issue 5); once it is, this script starts it with
# a demo pool and shows the desktops running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${VDIPOOL_DEMO_DIR:-/var/lib/vdipool-demo}
export VDIPOOL_STATE_DIR="$demo/state"

if [ "${1:-}" = "--stop" ]; then
    ctl="$root/build/vdipoolctl"
    # A sealed gold is immutable: unseal it (orphaning the demo children,
    # which go too) before removing the files.
    if [ -x "$ctl" ] && [ -e "$demo/golds/demo-gold.qcow2" ]; then
        "$ctl" image unseal --force "$demo/golds/demo-gold.qcow2" >/dev/null 2>&1 || true
    fi
    chattr -i "$demo/golds/demo-gold.qcow2" 2>/dev/null || true
    rm -rf "$demo"
    echo "quickstart: removed $demo"
    exit 0
fi

bash "$root/deploy/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$(nproc)" >/dev/null
ctl="$root/build/vdipoolctl"

mkdir -p "$demo/golds" "$demo/desktops"
gold="$demo/golds/demo-gold.qcow2"
if [ ! -e "$gold" ]; then
    qemu-img create -q -f qcow2 "$gold" 64M
    qemu-io -f qcow2 -c 'write -q -P 0x5a 0 1M' "$gold"
fi
# Running it again starts over with fresh children (the catalog drops the old ones).
rm -f "$demo"/desktops/demo-*.qcow2
"$ctl" image reconcile "$demo/desktops" >/dev/null

echo
echo "== the gold, sealed: fingerprinted, read-only, immutable"
"$ctl" image seal "$gold"
"$ctl" image inspect "$gold"
echo
echo "== three differencing children of it, made in one batch"
"$ctl" image clone "$gold" "$demo/desktops" --count 3 --prefix demo-
echo
echo "== one child, and the chain QEMU will follow"
"$ctl" image inspect "$demo/desktops/demo-001.qcow2"
qemu-img check -q "$demo/desktops/demo-001.qcow2" && echo "qemu-img check: no errors"
echo
echo "== what depends on what"
"$ctl" image tree
echo
echo "== the guard at work: a write to the sealed gold is refused"
qemu-io -c 'write -P 1 0 4k' "$gold" 2>&1 | head -1 || true
"$ctl" image verify "$gold"
echo
echo "Try next:"
echo "  $ctl image clone $gold $demo/desktops --count 100 --prefix many-"
echo "  $ctl image inspect --json $demo/desktops/demo-002.qcow2"
echo "  $ctl image scan $demo"
echo "  $ctl image merge $demo/desktops/demo-003.qcow2 --into $demo/flat.qcow2 --dry-run"
echo "  (the catalog of this demo is in $VDIPOOL_STATE_DIR: export VDIPOOL_STATE_DIR=$VDIPOOL_STATE_DIR)"
echo "  $0 --stop      # removes $demo"
