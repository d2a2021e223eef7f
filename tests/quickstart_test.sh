#!/usr/bin/env bash
# The newcomer's path, as a test: run the README's main command, see the demo
# pool reach its spares, log a user off and see the desktop replaced, stop.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=$(mktemp -d /var/tmp/vdipool-quickstart-XXXXXX)
prefix="qs$$"
export VDIPOOL_DEMO_DIR="$demo" VDIPOOL_DEMO_PREFIX="$prefix"
export VDIPOOL_SOCKET="$demo/vdipool.sock" VDIPOOL_STATE_DIR="$demo/state"
# Its own dashboard port, beside a quickstart that may be running.
export VDIPOOL_DEMO_LISTEN="127.0.0.1:$(( 30000 + $$ % 20000 ))"
cleanup() { bash "$root/deploy/quickstart.sh" --stop >/dev/null 2>&1 || true; rm -rf "$demo" "$demo.out"; }
trap cleanup EXIT
ctl="$root/build/vdipoolctl"
fail() { echo "quickstart test: $*"; tail -20 "$demo/vdipoold.log" 2>/dev/null; echo "0 passed, 1 failed"; exit 1; }

bash "$root/deploy/quickstart.sh" > "$demo.out" 2>&1 || { cat "$demo.out"; fail "quickstart.sh failed"; }
grep -q "ready 2" "$demo.out" || { cat "$demo.out"; fail "the demo pool did not reach its 2 spares"; }
# The dashboard it prints answers, and its token opens the API.
url=$(grep -o "http://$VDIPOOL_DEMO_LISTEN/#token=[0-9a-f]*" "$demo.out") || { cat "$demo.out"; fail "no dashboard URL"; }
curl -sf "http://$VDIPOOL_DEMO_LISTEN/" | grep -q "/ui/app.js" || fail "the dashboard page is not served"
curl -sf -H "Authorization: Bearer ${url##*token=}" "http://$VDIPOOL_DEMO_LISTEN/v1/pools" | grep -q '"demo"' ||
    fail "the dashboard's token does not open the API"
rm -f "$demo.out"

desktop=$("$ctl" acquire demo --user newcomer | awk '/is yours/ { print $1 }')
[ -n "$desktop" ] || fail "acquire gave no desktop"
sleep 2 # the guest reaches its wait loop
virsh -c qemu:///system send-key "$desktop" KEY_Q >/dev/null
for _ in $(seq 1 150); do
    if curl -s --unix-socket "$VDIPOOL_SOCKET" http://vdipool/metrics |
        grep -q 'vdipool_sessions_ended_total{pool="demo",reason="guest-shutdown"} 1' &&
        "$ctl" status | grep -q "ready 2, assigned 0"; then
        echo "quickstart test: spares ready, one log-off cycle replaced $desktop"
        echo "1 passed, 0 failed"
        exit 0
    fi
    sleep 0.2
done
"$ctl" status
fail "logging off did not replace the desktop"
