#!/usr/bin/env bash
# tests/load/bench.sh - the README's benchmark table, measured side by side.
#
# Starts a throwaway PostgreSQL 15 (scripts/lib.sh: unix socket, fsync off)
# and one tenantqd with default settings (4 shards x 2 connections), then runs
# each workload through the daemon and its baseline back to back on the same
# machine, and prints a markdown table with the ratios, plus tenantqd's peak
# RSS after 100,000 distinct tenants.
#
# The machine's speed drifts from minute to minute (a shared host), so each
# workload runs BENCH_ROUNDS times, daemon and baseline back to back in every
# round; the table shows the median round (by ratio) and the range of the
# ratios over all rounds.
#
# Usage: tests/load/bench.sh [BUILD_DIR]      (default: build)
# Environment: BENCH_SECONDS per run (default 10), BENCH_CLIENTS (default 64),
#              BENCH_ROUNDS (default 3).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
cd "$TQ_ROOT"

build=$(cd "${1:-build}" && pwd)
secs=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-64}
rounds=${BENCH_ROUNDS:-3}
load=$build/tests/load/tenantq-load
[ -x "$load" ] || tq_die "no $load: build first (ninja -C ${1:-build})"

tmp=$(mktemp -d /tmp/tq-bench.XXXXXX)
chmod 0755 "$tmp"
daemon_pid=
cleanup() {
    [ -z "$daemon_pid" ] || { kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" || true; }
    tq_pg_stop
    rm -rf "$tmp"
}
trap cleanup EXIT

# PostgreSQL's defaults (fsync, synchronous_commit, full_page_writes on), as
# production runs it; TQ_BENCH_DURABILITY=fast for the test cluster's settings.
tq_pg_start "$tmp/pg" "${TQ_BENCH_DURABILITY:-durable}"
db=$TQ_PG_CONNINFO
"$build/daemon/tenantqd" --database "$db" --init-db >/dev/null
mkdir -m 0750 "$tmp/run"
ep=ipc://$tmp/run/tenantqd.sock
"$build/daemon/tenantqd" --database "$db" --listen "$ep" --metrics-listen '' \
    2>"$tmp/tenantqd.log" &
daemon_pid=$!
for _ in $(seq 100); do
    "$build/client/tenantq" -e "$ep" -t 200 ping >/dev/null 2>&1 && break
    sleep 0.1
done

# run NAME MODE ARGS... -> $tmp/NAME.json
run() {
    local name=$1 mode=$2
    shift 2
    "$load" --mode "$mode" -e "$ep" --database "$db" --json "$tmp/$name.json" "$@" \
        >"$tmp/$name.out" 2>&1 || true
    [ -s "$tmp/$name.json" ] || { cat "$tmp/$name.out" >&2; tq_die "$name produced no result"; }
}

hot=(--clients "$clients" --tenants 1 --mix upsert=100 --duration "$secs")
uni=(--clients "$clients" --tenants 10000 --duration "$secs")
zipf=(--clients "$clients" --tenants 10000 --dist zipf:1.1 --duration "$secs")
ping=(--clients "$clients" --tenants 10000 --mix ping=100 --duration "$secs")
one=(--clients 1 --tenants 1 --mix upsert=100 --duration "$secs")
for round in $(seq "$rounds"); do
    run "w1-daemon.$round" daemon "${hot[@]}"
    run "w1-direct.$round" direct "${hot[@]}"
    run "w2-daemon.$round" daemon "${uni[@]}"
    run "w2-direct.$round" direct "${uni[@]}"
    run "w3-daemon.$round" daemon "${zipf[@]}"
    run "w3-direct.$round" direct "${zipf[@]}"
    run "w4-daemon.$round" daemon "${ping[@]}"
    run "w4-echo.$round" echo "${ping[@]}"
    run "w5-daemon.$round" daemon "${one[@]}"
    run "w5-direct.$round" direct "${one[@]}"
done
# memory: 100,000 distinct tenants served, then the daemon's peak RSS
run mem daemon --clients "$clients" --tenants 100000 --mix upsert=100 --requests 200000 --no-check
rss_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$daemon_pid/status")
now_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status")

/usr/bin/python3 - "$tmp" "$rss_kb" "$now_kb" "$secs" "$clients" "$rounds" <<'EOF'
import glob, json, os, sys
d, hwm, rss, secs, clients, rounds = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                      sys.argv[5], int(sys.argv[6]))
r = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(d + "/*.json")}
def row(w, a, b, target):
    pairs = []
    for k in range(1, rounds + 1):
        x, y = r["%s.%d" % (a, k)], r["%s.%d" % (b, k)]
        pairs.append((x["throughput_rps"] / y["throughput_rps"] if y["throughput_rps"] else 0, x, y))
    pairs.sort(key=lambda p: p[0])
    ratio, x, y = pairs[len(pairs) // 2]
    spread = "" if rounds == 1 else " (%.2f-%.2f)" % (pairs[0][0], pairs[-1][0])
    print("| %s | %s: %.0f req/s, p50 %.1f ms, p99 %.1f ms | %s: %.0f req/s, p50 %.1f ms, p99 %.1f ms | %.2fx%s | %s |" % (
        w, a.split("-")[1], x["throughput_rps"], x["latency_us"]["p50"] / 1e3,
        x["latency_us"]["p99"] / 1e3, b.split("-")[1], y["throughput_rps"],
        y["latency_us"]["p50"] / 1e3, y["latency_us"]["p99"] / 1e3, ratio, spread, target))
checked = [n for n in r if not n.startswith(("w4-", "mem"))]
print("%s s per run, %s clients unless said, %d rounds (median round shown, ratio range in "
      "parentheses); every daemon/direct run passed its database check: %s" % (
    secs, clients, rounds, all(r[n]["check"]["passed"] for n in checked)))
print()
print("| workload | tenantqd | baseline | ratio | target |")
print("|---|---|---|---|---|")
row("W1 hot tenant (1 tenant, upsert=100)", "w1-daemon", "w1-direct", ">= 15x; daemon p99 <= direct p50")
row("W2 uniform (10,000 tenants)", "w2-daemon", "w2-direct", ">= 1.5x with <= 1/4 of the connections (8 vs %s)" % clients)
row("W3 skewed (10,000 tenants, zipf:1.1)", "w3-daemon", "w3-direct", ">= 3x")
row("W4 ping only", "w4-daemon", "w4-echo", ">= 0.8x echo")
row("W5 one client, W1 shape", "w5-daemon", "w5-direct", "daemon p50 <= direct p50 + 1 ms")
print()
print("tenantqd after 100,000 distinct tenants (%d requests): peak RSS %.1f MiB, now %.1f MiB (target <= 64 MiB)" % (
    r["mem"]["ok"] + sum(r["mem"]["errors"].values()), hwm / 1024, rss / 1024))
EOF
