#!/usr/bin/env bash
# tests/soak/run.sh [BUILD_DIR] [-- SOAK_ARGS...] - the soak under faults
# (tests/soak/soak.py, docs/soak.md) for TQ_SOAK_SECONDS seconds (default
# 180; 0 skips it), as scripts/test runs it: builds the Node client if it is
# not built (npm ci in client/node), runs the soak with its summary in
# BUILD_DIR/meson-logs/soak.json and its log in BUILD_DIR/meson-logs/soak.log,
# and prints one verdict line `soak: ok` or `soak: FAILED` (scripts/test
# counts it as one test).  Exit 0 when it passed or was skipped.
# Environment: TQ_SOAK_SECONDS, TQ_SOAK_SEED (default: the time), TQ_SOAK_WORKERS
# (Python writers, default 3 here: the CI machine has 2 cores).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
seconds=${TQ_SOAK_SECONDS:-180}
if [ "$seconds" = 0 ]; then
    echo "soak: skipped (TQ_SOAK_SECONDS=0)"
    exit 0
fi
build=$(cd "$build" && pwd) || { echo "soak: FAILED (no build dir)"; exit 1; }
logs=$build/meson-logs
mkdir -p "$logs"

if [ ! -f "$root/client/node/dist/esm/index.js" ]; then
    (cd "$root/client/node" && npm ci --no-audit --no-fund >&2) ||
        echo "soak: npm ci in client/node failed: running without the Node writer" >&2
fi

args=(--seconds "$seconds" --workers "${TQ_SOAK_WORKERS:-3}" --build-dir "$build"
      --json "$logs/soak.json")
[ -n "${TQ_SOAK_SEED:-}" ] && args+=(--seed "$TQ_SOAK_SEED")
rc=0
timeout $((seconds + 900)) /usr/bin/python3 "$root/tests/soak/soak.py" "${args[@]}" "$@" \
    >"$logs/soak.log" 2>&1 || rc=$?
# the progress lines and the verdict; the whole summary is in soak.json
grep -E '^\[|^soak:' "$logs/soak.log" | grep -vE 'no reply within|TIMEOUT for key' | tail -40
if [ $rc -eq 0 ]; then
    echo "soak: ok"
else
    echo "soak: FAILED (exit $rc; summary $logs/soak.json, log $logs/soak.log)"
    tail -30 "$logs/soak.log"
fi
exit $rc
