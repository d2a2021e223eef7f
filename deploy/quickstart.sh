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

if [ "${1:-}" = "--stop" ]; then
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
rm -f "$demo"/desktops/demo-*.qcow2

echo
echo "== the gold"
"$ctl" image inspect "$gold"
echo
echo "== three differencing children of it, made in one batch"
"$ctl" image clone "$gold" "$demo/desktops" --count 3 --prefix demo-
echo
echo "== one child, and the chain QEMU will follow"
"$ctl" image inspect "$demo/desktops/demo-001.qcow2"
qemu-img check -q "$demo/desktops/demo-001.qcow2" && echo "qemu-img check: no errors"
echo
echo "Try next:"
echo "  $ctl image clone $gold $demo/desktops --count 100 --prefix many-"
echo "  $ctl image inspect --json $demo/desktops/demo-002.qcow2"
echo "  $0 --stop      # removes $demo"
