#!/usr/bin/env bash
# bench/compare.sh - the Node client against the C client (tenantq-load) on
# W1 (one hot tenant, upsert=100) and W4 (ping), 64 calls in flight each,
# side by side against one tenantqd on a throwaway, durable PostgreSQL
# (fsync and synchronous_commit on, unlike tests/load/bench.sh).
#
# Usage: client/node/bench/compare.sh [BUILD_DIR]   (from the repository root;
#        default build; client/node must be built: npm ci)
# Environment: BENCH_SECONDS per run (default 10), BENCH_ROUNDS (default 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-2}
pgbin=/usr/lib/postgresql/15/bin
tmp=$(mktemp -d /tmp/tq-nbench.XXXXXX)
chmod 0755 "$tmp"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$tmp"; as_pg=(runuser -u postgres --); fi
daemon_pid=
cleanup() {
    [ -z "$daemon_pid" ] || { kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" || true; }
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$tmp/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w \
    -o "-k $tmp -c listen_addresses='' -c max_connections=200" start >/dev/null
db="host=$tmp user=postgres dbname=postgres"
"$build/daemon/tenantqd" --database "$db" --init-db >/dev/null
ep=ipc://$tmp/tenantqd.sock
"$build/daemon/tenantqd" --database "$db" --listen "$ep" --metrics-listen '' 2>"$tmp/d.log" &
daemon_pid=$!
for _ in $(seq 100); do "$build/client/tenantq" -e "$ep" -t 200 ping >/dev/null 2>&1 && break; sleep 0.1; done

c_run() { # c_run ARGS... -> "req/s p50 p99" of tenantq-load
    "$build/tests/load/tenantq-load" --mode daemon -e "$ep" --database "$db" --clients 64 \
        --duration "$secs" --json "$tmp/c.json" "$@" >"$tmp/c.out" 2>&1 || true
    /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_us"]
print("%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d ok, %d errors, check %s" % (r["throughput_rps"],
      l["p50"]/1e3, l["p99"]/1e3, r["ok"], r["errors_total"], r["check"].get("passed")))' "$tmp/c.json"
}
for round in $(seq "$rounds"); do
    echo "--- round $round"
    echo "C    w1: $(c_run --tenants 1 --mix upsert=100)"
    node "$root/client/node/bench/load.mjs" --endpoint "$ep" --workload w1 --seconds "$secs"
    echo "C    w4: $(c_run --tenants 10000 --mix ping=100)"
    node "$root/client/node/bench/load.mjs" --endpoint "$ep" --workload w4 --seconds "$secs"
done
