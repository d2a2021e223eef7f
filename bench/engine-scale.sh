#!/usr/bin/env bash
# engine-scale.sh VDIPOOLCTL DIR N — the engine at N children of one gold,
# on the filesystem at DIR (run-bench.sh passes a loop-mounted ext4 with
# default options): `image clone --count N` against the file-creation
# floor (N small files, then one sync) and `qemu-img create` per child
# (timed for min(N, 1000) children), then `image tree`, `scan`,
# `reconcile` and `space` over the N children: `space --rescan` walks the
# datastore (and takes the hand-made children into its records, as the
# first rescan does), `space` reads the catalog's records as admission
# does. Prints seconds (from the clock, to the millisecond) and peak RSS
# per line.
set -euo pipefail
ctl=$1; dir=$2; n=$3
st=$dir/state-$n; ds=$dir/ds-$n; qi=$dir/qemu-$n; fl=$dir/floor-$n
gold=$dir/gold-$n.qcow2
rm -rf "$st" "$ds" "$qi" "$fl"; mkdir -p "$st" "$ds" "$qi" "$fl"
export VDIPOOL_STATE_DIR=$st
qemu-img create -q -f qcow2 "$gold" 64G
"$ctl" image seal "$gold" >/dev/null
measure() { # LABEL COMMAND...
    local label=$1; shift
    local start end kib
    start=$(date +%s%N)
    kib=$( { /usr/bin/time -f "%M" "$@" >/dev/null; } 2>&1 | tail -1)
    end=$(date +%s%N)
    printf '%-36s %8.3f s %8s KiB peak\n' "$label" "$(( (end - start) / 1000 ))e-6" "$kib"
}
sync
measure "image clone --count $n" "$ctl" image clone "$gold" "$ds" --count "$n"
measure "file-creation floor, $n files" bash -c \
    "for i in \$(seq $n); do printf xyz > $fl/f\$i; done; sync -f $fl"
m=$(( n < 1000 ? n : 1000 ))
measure "qemu-img create x $m" bash -c \
    "for i in \$(seq $m); do qemu-img create -q -f qcow2 -b $gold -F qcow2 $qi/c\$i.qcow2; done"
measure "image tree, $n children" "$ctl" image tree
measure "image scan, $n children" "$ctl" image scan "$ds"
measure "image reconcile, $n children" "$ctl" image reconcile "$ds"
conf=$dir/space-$n.conf
printf 'datastores = ( { name = "bench"; path = "%s"; } );\n' "$ds" > "$conf"
printf 'pools = ( { name = "bench"; gold = "%s"; datastore = "bench"; size = 1; spares = 0; } );\n' \
    "$gold" >> "$conf"
measure "space --rescan, $n children" "$ctl" space --config "$conf" --rescan
measure "space, $n children" "$ctl" space --config "$conf"
chattr -i "$gold" 2>/dev/null || true
rm -rf "$st" "$ds" "$qi" "$fl" "$gold" "$conf"
