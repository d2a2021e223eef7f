#!/usr/bin/env bash
# Runs every vdipool test on this machine, setting up what it needs first
# (packages, libvirtd). Builds twice: a normal build running every suite, and
# an ASan+UBSan build running them again. Run as root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

bash "$root/deploy/setup.sh"

echo "== build (RelWithDebInfo) and all tests"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$jobs"
ctest --test-dir "$root/build" --output-on-failure

echo "== sanitizer build (ASan+UBSan) and all tests again"
cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DVDI_SANITIZE=ON >/dev/null
cmake --build "$root/build-asan" -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir "$root/build-asan" --output-on-failure
