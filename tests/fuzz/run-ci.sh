#!/usr/bin/env bash
# tests/fuzz/run-ci.sh - a time-boxed fuzz run of the decoders and parsers for CI.
#
# Runs fuzz_request, fuzz_response, fuzz_msgpack_json, fuzz_jparse, fuzz_opfile,
# fuzz_sqlargs, fuzz_repair and fuzz_storage (or FUZZ_TARGETS) one after the
# other, each for SECONDS seconds, on a scratch copy of its committed seed
# corpus (tests/fuzz/corpus is never written), prints each target's exec
# count, and exits non-zero if any target crashed, leaked, hit a sanitizer
# report or an invariant of fuzz_common.h, ran out of memory or time, or did
# not run at all.  Crash inputs are kept in the artifact directory.
#
# Usage: tests/fuzz/run-ci.sh BUILD_DIR
#   BUILD_DIR   a fuzz build, made with
#               CC=clang meson setup -Dfuzz=true -Db_sanitize=address,undefined \
#                   -Db_lundef=false BUILD_DIR
#               (the targets are (re)built here with ninja if needed)
# Environment:
#   SECONDS         seconds per target (default 60); FUZZ_SECONDS wins if set
#   FUZZ_TARGETS    space-separated target names without the fuzz_ prefix
#                   (default "request response msgpack_json jparse opfile sqlargs repair storage")
#   FUZZ_ARTIFACTS  where crash-*/leak-*/oom-*/timeout-* inputs and the logs
#                   go (default: a new directory under /tmp, printed; kept)
# Exit status: 0 all targets ran clean; 1 a target failed; 2 usage error.
set -euo pipefail

# bash treats SECONDS specially: imported from the environment it keeps
# counting up from that value, unset it counts from 0.  Read it first thing.
dur=${FUZZ_SECONDS:-$SECONDS}
[ "$dur" != 0 ] || dur=60

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
[ $# -eq 1 ] || usage
case $1 in -h|--help) usage ;; esac
build=$(cd "$1" && pwd) || { echo "run-ci.sh: no build dir $1" >&2; exit 2; }
[[ $dur =~ ^[0-9]+$ ]] || { echo "run-ci.sh: SECONDS must be a number, got $dur" >&2; exit 2; }

targets=${FUZZ_TARGETS:-request response msgpack_json jparse opfile sqlargs repair storage}
out=${FUZZ_ARTIFACTS:-$(mktemp -d /tmp/tq-fuzz.XXXXXX)}
mkdir -p "$out"
scratch=$(mktemp -d /tmp/tq-fuzz-corpus.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

if command -v ninja >/dev/null; then
    exes=()
    for t in $targets; do exes+=("tests/fuzz/fuzz_$t"); done
    ninja -C "$build" "${exes[@]}" >"$out/ninja.log" 2>&1 || {
        cat "$out/ninja.log" >&2
        echo "run-ci.sh: building the fuzz targets in $build failed" >&2
        exit 1
    }
fi

# halt_on_error: a UBSan report is a crash, not a line in the log
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

echo "fuzz: ${dur}s per target, targets: $targets, artifacts and logs in $out"
failed=0
for t in $targets; do
    exe=$build/tests/fuzz/fuzz_$t
    seeds=$here/corpus/$t
    if [ ! -x "$exe" ] || [ ! -d "$seeds" ]; then
        echo "fuzz_$t: FAILED: no executable $exe or no corpus $seeds"
        failed=1
        continue
    fi
    work=$scratch/$t
    mkdir -p "$work"
    cp "$seeds"/* "$work"/
    log=$out/fuzz_$t.log
    rc=0
    # the outer timeout only catches a fuzzer that hangs outside its own timer;
    # malloc_limit: no input of at most 4 KiB may make the codec allocate
    # 128 MiB at once; rss_limit leaves room for ASan's quarantine in long runs
    timeout --kill-after=30 $((dur + 120)) \
        "$exe" -max_total_time="$dur" -rss_limit_mb=2048 -malloc_limit_mb=128 -max_len=4096 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$out/fuzz_$t-" "$work" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    units=$(find "$work" -type f | wc -l)
    if [ "$rc" -ne 0 ] || [ -z "$execs" ]; then
        echo "fuzz_$t: FAILED (exit $rc) after ${execs:-?} execs; log $log"
        grep -E "ERROR|SUMMARY|runtime error|invariant violated|Test unit written" "$log" |
            head -n 20 | sed 's/^/    /' || true
        failed=1
    else
        echo "fuzz_$t: ok, $execs execs in ${dur}s, corpus $(find "$seeds" -type f | wc -l) -> $units inputs"
    fi
done
if [ $failed -ne 0 ]; then
    echo "fuzz: FAILED (inputs and logs in $out)"
    exit 1
fi
echo "fuzz: all targets clean"
