#!/bin/sh
# smoke.sh - a short run of every tenantq-load mode, asserting on its --json.
#
# Needs: TQ_BUILD_DIR (meson build dir with tests/load/tenantq-load),
# TQ_TEST_DATABASE (libpq conninfo of a database with the tenantq schema) and
# TQ_ENDPOINT (a running tenantqd using that database).  Optional:
# TQ_LOAD_SECONDS (default 2).  Writes the JSON reports into a temp dir.
#
# Asserts: daemon and direct runs pass the check (no duplicate ids, no lost
# acknowledged edit, exit 0); unsafe on one tenant with colliding upserts
# shows the race (duplicate ids or lost acknowledged edits > 0, exit 1);
# echo completes with ok > 0.  Ends with "load-smoke: N passed, N failed".
set -u

: "${TQ_BUILD_DIR:?set TQ_BUILD_DIR}" "${TQ_TEST_DATABASE:?set TQ_TEST_DATABASE}"
: "${TQ_ENDPOINT:?set TQ_ENDPOINT}"
LOAD="$TQ_BUILD_DIR/tests/load/tenantq-load"
SECS="${TQ_LOAD_SECONDS:-2}"
PY=/usr/bin/python3
OUT=$(mktemp -d "${TMPDIR:-/tmp}/tenantq-load-smoke.XXXXXX") || exit 2
trap 'rm -rf "$OUT"' EXIT
passed=0
failed=0

# run NAME EXPECTED_EXIT ASSERTION(python expression over r = the report) ARGS...
run() {
    name=$1 want=$2 expr=$3
    shift 3
    echo "== $name: tenantq-load $*"
    "$LOAD" "$@" --duration "$SECS" --json "$OUT/$name.json" >"$OUT/$name.out" 2>&1
    rc=$?
    cat "$OUT/$name.out"
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL $name: exit status $rc, expected $want"
        failed=$((failed + 1))
        return
    fi
    if "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
c = r["check"]
ok = eval(sys.argv[2])
print("  ok=%s errors=%s check=%s" % (r["ok"], r["errors"], c))
sys.exit(0 if ok else 1)
' "$OUT/$name.json" "$expr"; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name: expected $expr"
        failed=$((failed + 1))
    fi
}

SAFE='r["ok"] > 0 and c["passed"] is True and c["duplicate_ids"] == 0 and c["lost_acknowledged"] == 0'
run daemon 0 "$SAFE" --mode daemon -e "$TQ_ENDPOINT" --database "$TQ_TEST_DATABASE" \
    --clients 8 --tenants 20 --collide 0.2
run direct 0 "$SAFE" --mode direct --database "$TQ_TEST_DATABASE" \
    --clients 8 --tenants 20 --collide 0.2
run unsafe 1 'r["ok"] > 0 and c["passed"] is False and (c["duplicate_ids"] > 0 or c["lost_acknowledged"] > 0)' \
    --mode unsafe --database "$TQ_TEST_DATABASE" --clients 8 --tenants 1 --collide 0.5
run echo 0 'r["ok"] > 0 and r["errors_total"] == 0' --mode echo --clients 4

echo "load-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
