#!/usr/bin/env bash
# Two builds of vdipool side by side under the same acquire/release load,
# alternating runs so that the machine's drift hits both alike:
#   bench/ab-service.sh BUILD_A BUILD_B WORKDIR [ROUNDS] [SIZE SPARES CLIENTS SECONDS]
# BUILD_A and BUILD_B are build directories (each with vdipoold, vdipoolctl,
# make-demo-gold and bench/bench_service). Prints each run with the share of
# CPU the hypervisor stole during it, and the ratio of the mean cycles/s
# (B / A). WORKDIR decides the filesystem measured (the
# catalog and the datastore both live there).
set -euo pipefail
a=$1 b=$2 work=$3 rounds=${4:-4}
load=("${5:-200}" "${6:-50}" "${7:-8}" "${8:-5}")
sum_a=0 sum_b=0
for round in $(seq "$rounds"); do
    for side in A B; do
        build=$a
        [ "$side" = B ] && build=$b
        out=$("$build/bench/bench_service" "$build/vdipoold" "$build/make-demo-gold" "$work" \
            "${load[@]}")
        line=$(grep 'cycles/s' <<<"$out")
        stolen=$(grep -Eo '[0-9]+ % stolen' <<<"$out" | head -1 || echo "? % stolen")
        cycles=$(sed -E 's/.*: ([0-9]+) cycles\/s.*/\1/' <<<"$line")
        echo "round $round $side ($stolen): $line"
        if [ "$side" = A ]; then sum_a=$((sum_a + cycles)); else sum_b=$((sum_b + cycles)); fi
    done
done
awk -v a="$sum_a" -v b="$sum_b" -v n="$rounds" \
    'BEGIN { printf "mean cycles/s: A %.0f, B %.0f, B/A %.2fx\n", a / n, b / n, b / a }'
