#!/usr/bin/env bash
# Runs every vdipool test on this machine, setting up what it needs first
# (packages, libvirtd). Builds three times: a normal build running every
# suite, an ASan+UBSan build running them again, and a ThreadSanitizer build
# of the daemon running its controller, service and desktop suites. Run as root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

# The dashboard's test drives a headless Chromium through chromedriver.
VDIPOOL_EXTRA_PACKAGES="chromium chromium-driver python3-selenium" bash "$root/deploy/setup.sh"

echo "== build (RelWithDebInfo) and all tests"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$jobs"
ctest --test-dir "$root/build" --output-on-failure | tee "$root/build/ctest.log"
passed=$(grep -Eo 'tests passed, 0 tests failed out of [0-9]+' "$root/build/ctest.log" | grep -Eo '[0-9]+$')

echo "== sanitizer build (ASan+UBSan) and all tests again"
cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DVDI_SANITIZE=ON >/dev/null
cmake --build "$root/build-asan" -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir "$root/build-asan" --output-on-failure -LE 'quickstart|once' | tee "$root/build-asan/ctest.log"
passed=$((passed + $(grep -Eo 'tests passed, 0 tests failed out of [0-9]+' "$root/build-asan/ctest.log" | grep -Eo '[0-9]+$')))

echo "== ThreadSanitizer build of the daemon and its service tests"
# libuv, glib and libvirt are not instrumented: their own accesses are not
# checked (ignore_noninstrumented_modules), their locks still order ours.
cmake -S "$root" -B "$root/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVDI_TSAN=ON >/dev/null
cmake --build "$root/build-tsan" -j "$jobs" --target vdipoold vdipoolctl make-demo-gold \
    test_controller test_service test_desktops test_agent test_hosts
rm -rf "$root/build-tsan/tsan-reports" && mkdir -p "$root/build-tsan/tsan-reports"
TSAN_OPTIONS="ignore_noninstrumented_modules=1 exitcode=66 log_path=$root/build-tsan/tsan-reports/report" \
    ctest --test-dir "$root/build-tsan" --output-on-failure -R '^(controller|service|desktops|agent|hosts)$' \
    | tee "$root/build-tsan/ctest.log"
if [ -n "$(ls -A "$root/build-tsan/tsan-reports")" ]; then
    cat "$root"/build-tsan/tsan-reports/*
    echo "ThreadSanitizer reported (above)"
    exit 1
fi
passed=$((passed + $(grep -Eo 'tests passed, 0 tests failed out of [0-9]+' "$root/build-tsan/ctest.log" | grep -Eo '[0-9]+$')))

# Fuzzing, bounded: the parsers of operator files and of image headers.
# Longer runs: see tests/fuzz/*.c.
fuzz_seconds=${VDI_FUZZ_SECONDS:-15}
if command -v clang >/dev/null && [ "$fuzz_seconds" -gt 0 ]; then
    echo "== fuzzing (clang libFuzzer, ${fuzz_seconds}s per target)"
    CC=clang cmake -S "$root" -B "$root/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVDI_FUZZ=ON >/dev/null
    cmake --build "$root/build-fuzz" -j "$jobs" --target fuzz_config fuzz_qcow2 fuzz_http fuzz_saveimage
    for target in config qcow2 http saveimage; do
        work=$(mktemp -d)
        mkdir "$work/corpus"
        # libFuzzer writes crash-*/leak-* files into the current directory.
        if (cd "$work" && LSAN_OPTIONS=suppressions="$root/tests/fuzz/lsan.supp" \
                "$root/build-fuzz/tests/fuzz/fuzz_$target" -max_total_time="$fuzz_seconds" \
                -print_final_stats=1 corpus "$root/tests/fuzz/corpus/$target" >fuzz.log 2>&1); then
            echo "fuzz_$target: no failure in ${fuzz_seconds}s ($(grep -o 'number_of_executed_units: *[0-9]*' "$work/fuzz.log" | grep -o '[0-9]*$') inputs)"
            passed=$((passed + 1))
            rm -rf "$work"
        else
            tail -40 "$work/fuzz.log"
            echo "fuzz_$target found a failure; the input is kept in $work"
            exit 1
        fi
    done
fi

# One closing line for whoever reads the log: every suite and fuzz target.
echo "tests: $passed passed, 0 failed"
