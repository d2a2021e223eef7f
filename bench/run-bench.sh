#!/usr/bin/env bash
# Runs vdipool's benchmarks and prints the tables that bench/README.md quotes.
#   bench/run-bench.sh [--quick]
# Needs root (it loop-mounts a scratch ext4 so results do not depend on the
# host's filesystem options), qemu-img and a build in build/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quick=${1:-}
n=1000; rounds=5; writes=7000; reps=3
# bench_refill's pairs (vdipool and the raw work, alternating which goes
# first): a single pair's ratio moves ±20 % with the machine's speed.
pairs=5
if [ "$quick" = "--quick" ]; then n=200; rounds=2; writes=1000; reps=1; pairs=1; fi

cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$(nproc)" >/dev/null
bench_clone="$root/build/bench/bench_clone"
bench_service="$root/build/bench/bench_service"
ctl="$root/build/vdipoolctl"

work=$(mktemp -d /var/tmp/vdipool-bench-XXXXXX)
mnt="$work/mnt"
cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    rm -rf "$work" /dev/shm/vdipool-bench-$$
}
trap cleanup EXIT
mkdir -p "$mnt"
truncate -s 6G "$work/ext4.img"
mkfs.ext4 -q -F "$work/ext4.img"
mount -o loop "$work/ext4.img" "$mnt"

echo "# machine: $(nproc) cores, $(uname -r), $(qemu-img --version | head -1)"
echo
echo "## clone throughput: $n children of one 64 GiB qcow2 gold"
for place in "scratch ext4 (loop, default options)|$mnt" "tmpfs|/dev/shm/vdipool-bench-$$" \
             "host filesystem under /var/tmp|$work/host"; do
    label=${place%%|*}; dir=${place#*|}
    mkdir -p "$dir/children"
    qemu-img create -q -f qcow2 "$dir/gold.qcow2" 64G
    echo "### $label"
    "$bench_clone" "$dir/gold.qcow2" "$dir/children" "$n" "$rounds"
    echo
done

echo "## guest writes on a fresh child over a gold full of data"
echo "qemu-img bench -w -c $writes -s 4096 -S 135168 -t none -d 1: 4 KiB writes, each into a"
echo "cluster the child has not written yet (the worst case: every write may copy on write)."
head -c 1G /dev/urandom > "$mnt/gold.raw"
qemu-img convert -O qcow2 "$mnt/gold.raw" "$mnt/gold.qcow2"
printf '%-28s %10s %12s %16s %14s\n' variant IOPS "vs raw" "allocated after" "file size after"
iops_of() { awk -v c="$writes" '/Run completed in/ { printf "%.0f", c / $4 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
raw_runs=()
for _ in $(seq "$reps"); do
    raw_runs+=("$(qemu-img bench -w -c "$writes" -s 4096 -S 135168 -t none -d 1 -f raw "$mnt/gold.raw" | iops_of)")
done
raw=$(printf '%s\n' "${raw_runs[@]}" | median)
printf '%-28s %10s %12s %16s %14s\n' "raw gold itself" "$raw" "1.00" "-" "-"
for v in "64K --no-extended-l2" "64K --extended-l2" "128K --no-extended-l2" \
         "128K --extended-l2" "256K --extended-l2" "2M --extended-l2"; do
    # shellcheck disable=SC2086 # split "64K --flag" into its two words
    set -- $v
    runs=(); alloc=0; size=0
    for _ in $(seq "$reps"); do
        rm -f "$mnt/child.qcow2"
        "$ctl" image clone "$mnt/gold.qcow2" "$mnt/child.qcow2" --cluster-size "$1" "$2" >/dev/null
        runs+=("$(qemu-img bench -w -c "$writes" -s 4096 -S 135168 -t none -d 1 -f qcow2 "$mnt/child.qcow2" | iops_of)")
        alloc=$(( $(stat -c %b "$mnt/child.qcow2") * 512 ))
        size=$(stat -c %s "$mnt/child.qcow2")
        qemu-img check -q "$mnt/child.qcow2"
    done
    iops=$(printf '%s\n' "${runs[@]}" | median)
    printf '%-28s %10s %12s %16s %14s\n' "$1 $2" "$iops" "$(awk -v a="$iops" -v b="$raw" 'BEGIN{printf "%.2f", a/b}')" \
        "$(numfmt --to=iec "$alloc")" "$(numfmt --to=iec "$size")"
done

echo
echo "## the engine at 1 000 and 10 000 children (scratch ext4)"
for count in 1000 10000; do
    if [ "$quick" = "--quick" ] && [ "$count" = 10000 ]; then continue; fi
    "$root/bench/engine-scale.sh" "$ctl" "$mnt" "$count"
done

echo
echo "## the service under acquire/release load (libvirt test driver)"
seconds=10
if [ "$quick" = "--quick" ]; then seconds=5; fi
# The pool sizes of one client count run back to back (200, 2 000, 20 000,
# then the next count): flatness compares runs seconds apart, not the first
# and the last of the section, when the VM's speed may have drifted.
for run in "1 1 1" "200 50 1" "2000 200 1" "20000 200 1" "200 50 8" "2000 200 8" "20000 200 8" \
           "200 50 64" "2000 200 64" "20000 200 64"; do
    # shellcheck disable=SC2086 # "SIZE SPARES CLIENTS"
    "$bench_service" "$root/build/vdipoold" "$root/build/make-demo-gold" "$work/service" $run "$seconds"
done

echo
echo "## start-up: adopting desktops that already run (libvirt test driver)"
for count in 2000 20000; do
    if [ "$quick" = "--quick" ] && [ "$count" = 20000 ]; then continue; fi
    "$root/build/bench/bench_adopt" "$root/build/vdipoold" "$root/build/make-demo-gold" \
        "$work/adopt" "$count"
done

echo
echo "## refill on real libvirtd + QEMU against the raw work (needs libvirtd: deploy/setup.sh)"
chmod 755 "$work" # QEMU runs as libvirt-qemu: it must reach the gold and the children
for filler in 0 2000; do
    if [ "$quick" = "--quick" ] && [ "$filler" = 2000 ]; then continue; fi
    "$root/build/bench/bench_refill" "$root/build/vdipoold" "$root/build/make-demo-gold" \
        "$work/refill" 20 "$filler" 7 "$pairs"
done

echo
echo "## instant desktops: start = \"resume\" against \"boot\" (needs libvirtd; the Linux gold when built)"
linux=${VDI_LINUX_GOLD_DIR:-/var/cache/vdipool/linux-gold}
if [ -f "$linux/linux-gold.qcow2" ] && [ "$quick" != "--quick" ]; then
    "$root/build/bench/bench_resume" "$root/build/vdipoold" "$root/build/make-demo-gold" \
        "$work/resume" 20 5 "$linux"
else
    "$root/build/bench/bench_resume" "$root/build/vdipoold" "$root/build/make-demo-gold" \
        "$work/resume" 20 5
fi
