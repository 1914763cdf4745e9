#!/usr/bin/env bash
# tests/load/bench-storage.sh - W2 on the Prisma-shaped table vs tenantq's own
# table, side by side, and what foreign writes to the Prisma rows cost the
# draft cache.  A benchmark, not a test: it asserts nothing but the load
# generator's own database check.  docs/benchmarks.md ("Storage mapping")
# has the figures and how to read them.
#
# One throwaway PostgreSQL 15 with PostgreSQL's defaults (scripts/lib.sh
# `tq_pg_start DIR durable`: fsync, synchronous_commit, full_page_writes on)
# and pg_stat_statements loaded.  Every run gets fresh tables (dropped and
# created again, `tenantqd --init-db`), a CHECKPOINT, and a fresh tenantqd
# with default settings, started on one of:
#   default  tenantq's tenantq_storefront;
#   prisma   the "Tenant" table of tests/integration/test_storage.py
#            (PRISMA_TABLE, PRISMA_FLAGS: create_missing = false; the load
#            generator's `--table prisma` creates every tenant's row first,
#            "name" and "updatedAt" filled as Prisma would);
#   prisma-lz4  the same with its two JSON columns set to lz4, as --init-db
#            sets tenantq's own table (only when listed in BENCH_VARIANTS:
#            it isolates the compression from the rest of the difference).
# W2 is bench.sh's: 10,000 tenants uniform, upsert=80,get=10,remove=10,
# 64 clients, through the daemon.
#
# Part "compare": BENCH_PAIRS rounds of W2 on each variant, alternating
# (ABAB...).  Part "foreign": W2-shaped load on the Prisma table while a
# separate writer updates "name" and "updatedAt" (as Prisma's update() does)
# of random load tenants' rows at each of BENCH_FOREIGN_RATES writes/s, for
# BENCH_FOREIGN_TENANTS tenants (10,000 = W2, where the 4 MiB draft cache
# holds a tenth of the tenants; 50 = every tenant cached), BENCH_FOREIGN_ROUNDS
# rounds of every rate.
#
# Every figure except the load generator's own (throughput, latency) comes
# from a window in the middle of the run: it opens 1 s after the first
# requests (after seeding), lasts BENCH_SECONDS - 5 s, and reads before and
# after: CPU time of PostgreSQL (the postmaster, its children and reaped
# children), tenantqd and the load generator; the daemon's /metrics
# (requests, draft cache hits, misses, stale, transactions); pg_stat_wal;
# pg_stat_user_tables of the table and its TOAST table; pg_stat_statements
# (reset when the window opens).
#
# Usage: tests/load/bench-storage.sh [BUILD_DIR]      (default: build)
# Environment: BENCH_SECONDS per run (default 15), BENCH_PAIRS (3),
#   BENCH_CLIENTS (64), BENCH_TENANTS (10000), BENCH_PART (all|compare|foreign),
#   BENCH_VARIANTS ("default prisma"; add prisma-lz4 to isolate compression),
#   BENCH_FOREIGN_RATES ("0 10 100"), BENCH_FOREIGN_TENANTS ("10000 50"),
#   BENCH_FOREIGN_ROUNDS (2),
#   BENCH_OUT (keep every run's JSON in this directory).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# shellcheck source=tests/load/bench-lib.sh
. "$TQ_ROOT/tests/load/bench-lib.sh"
cd "$TQ_ROOT"

bench_build "${1:-build}"
secs=${BENCH_SECONDS:-15}
pairs=${BENCH_PAIRS:-3}
clients=${BENCH_CLIENTS:-64}
tenants=${BENCH_TENANTS:-10000}
part=${BENCH_PART:-all}
read -r -a variants <<<"${BENCH_VARIANTS:-default prisma}"
read -r -a rates <<<"${BENCH_FOREIGN_RATES:-0 10 100}"
read -r -a ftenants <<<"${BENCH_FOREIGN_TENANTS:-10000 50}"
frounds=${BENCH_FOREIGN_ROUNDS:-2}
[ "$secs" -ge 8 ] || tq_die "BENCH_SECONDS must be at least 8 (the window is BENCH_SECONDS - 5)"
case $part in all | compare | foreign) ;; *) tq_die "BENCH_PART: all, compare or foreign" ;; esac
PY=$BENCH_PY

bench_tmp tq-bench-storage
trap bench_cleanup EXIT
tmp=$BENCH_TMP
out=${BENCH_OUT:-$tmp/out}
mkdir -p "$out"

bench_pg "$tmp/pg" durable
db=$BENCH_DB
psql=("${PSQL[@]}")
# pg_stat_statements needs a restart (pg_ctl restart keeps the start options)
"${psql[@]}" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
tq_pg_cmd "$TQ_PG_BIN/pg_ctl" -D "$tmp/pg/data" -w -t 60 restart >/dev/null
bench_pg_restarted
"${psql[@]}" -c "CREATE EXTENSION pg_stat_statements"
metrics_port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -m 0750 "$tmp/run"
ep=ipc://$tmp/run/tenantqd.sock

# The Prisma schema of tests/integration/test_storage.py (PRISMA_TABLE) and
# its daemon flags (PRISMA_FLAGS).
prisma_ddl='
CREATE TABLE "Tenant" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "plan" TEXT NOT NULL DEFAULT '\''free'\'',
    "landingPageConfigDraft" JSONB,
    "landingPageConfig" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "Tenant_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "Tenant" ADD COLUMN "version" INTEGER NOT NULL DEFAULT 0;'
prisma_flags=(--storage-table 'public."Tenant"' --storage-tenant-column id
    --storage-draft-column '"landingPageConfigDraft"'
    --storage-published-column '"landingPageConfig"'
    --storage-version-column version --storage-updated-at-column '"updatedAt"'
    --storage-create-missing false)

# fresh_tables VARIANT: drop every table of earlier runs, create this one's.
fresh_tables() {
    "${psql[@]}" -c 'DROP TABLE IF EXISTS tenantq_storefront, tenantq_idempotency, "Tenant"'
    case $1 in
        default) flags=() ;;
        prisma) "${psql[@]}" -c "$prisma_ddl"; flags=("${prisma_flags[@]}") ;;
        prisma-lz4)
            "${psql[@]}" -c "$prisma_ddl" -c 'ALTER TABLE "Tenant"
                ALTER COLUMN "landingPageConfigDraft" SET COMPRESSION lz4,
                ALTER COLUMN "landingPageConfig" SET COMPRESSION lz4'
            flags=("${prisma_flags[@]}") ;;
        *) tq_die "unknown variant $1" ;;
    esac
    "$BENCH_TQD" --database "$db" "${flags[@]}" --init-db >/dev/null
}

cat >"$tmp/probe.py" <<'EOF'
# probe.py OUT CONNINFO METRICS_URL TABLE PG_PID DAEMON_PID LOAD_PID WINDOW RATE TENANTS
# Waits for the load's first requests, then measures a window (see the
# script's header); RATE > 0 runs the foreign writer meanwhile.
import json, os, random, sys, threading, time, urllib.request
import psycopg
sys.path.insert(0, os.environ["BENCH_HERE"])
from benchstat import cpu_s as stat, pg_cpu_s as pg_cpu  # noqa: E402
out, conninfo, url, table = sys.argv[1:5]
pg_pid, daemon_pid, load_pid = (int(x) for x in sys.argv[5:8])
window, rate, ntenants = float(sys.argv[8]), float(sys.argv[9]), int(sys.argv[10])
def metrics():
    m = {"requests": 0}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("tenantq_requests_total{"):
            m["requests"] += int(line.split()[-1])
        elif line.startswith("tenantq_") and not line.startswith("#"):
            k, v = line.split()[:2]
            if "{" not in k:
                m[k[len("tenantq_"):]] = float(v)
    return m

TABLES = {"default": "tenantq_storefront", "prisma": "Tenant", "prisma-lz4": "Tenant"}
rel = TABLES[table]
conn = psycopg.connect(conninfo, autocommit=True)

def db_stats():
    s = {}
    s["wal_records"], s["wal_fpi"], s["wal_bytes"] = (
        int(x) for x in conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone())
    # pg_stat_* are the backends' flushed counters: as of up to a second ago
    r = conn.execute(
        "SELECT t.n_tup_upd, t.n_tup_hot_upd, t.n_tup_ins, coalesce(x.n_tup_ins, 0),"
        " coalesce(x.n_tup_del, 0), coalesce(io.heap_blks_read, 0), coalesce(io.toast_blks_read, 0)"
        " FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid"
        " LEFT JOIN pg_stat_all_tables x ON x.relid = c.reltoastrelid"
        " LEFT JOIN pg_statio_user_tables io ON io.relid = t.relid"
        " WHERE t.relname = %s AND t.schemaname = 'public'", (rel,)).fetchone()
    for k, v in zip(("upd", "hot_upd", "ins", "toast_ins", "toast_del", "heap_read", "toast_read"), r or ()):
        s[k] = int(v)
    return s

def snapshot():
    return {"t": time.monotonic(), "pg_cpu": pg_cpu(pg_pid), "daemon_cpu": stat(daemon_pid),
            "load_cpu": stat(load_pid), "metrics": metrics(), "db": db_stats()}

# the load is running once the daemon answers more than the two pings
base = metrics()["requests"]
deadline = time.monotonic() + 120
while metrics()["requests"] < base + 500:
    if time.monotonic() > deadline or not os.path.exists("/proc/%d" % load_pid):
        sys.exit("probe: the load never started")
    time.sleep(0.1)

stop = threading.Event()
writes = [0, 0]  # done, failed
def writer():
    c = psycopg.connect(conninfo, autocommit=True)
    rng = random.Random(1)
    t0, k = time.monotonic(), 0
    while not stop.is_set():
        k += 1
        wait = t0 + k / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        i = rng.randrange(ntenants)
        try:
            # what Prisma's tenant.update({data: {name}}) sends: @updatedAt too
            c.execute('UPDATE "Tenant" SET "name" = %s, "updatedAt" = now() AT TIME ZONE \'UTC\''
                      ' WHERE "id" = %s', ("Load tenant %d (%d)" % (i, k), "load-t%06d" % i))
            writes[0] += 1
        except psycopg.Error:
            writes[1] += 1
    c.close()
th = None
if rate > 0:
    th = threading.Thread(target=writer, daemon=True)
    th.start()

time.sleep(1)
conn.execute("SELECT pg_stat_statements_reset()")
a = snapshot()
w0 = writes[0]
time.sleep(window)
b = snapshot()
w1 = writes[0]
stmts = conn.execute(
    "SELECT query, calls, total_exec_time, total_plan_time, rows, shared_blks_hit,"
    " shared_blks_read, shared_blks_dirtied, shared_blks_written, wal_records, wal_fpi, wal_bytes"
    " FROM pg_stat_statements WHERE calls > 0 ORDER BY total_exec_time DESC LIMIT 12").fetchall()
col = "draft" if rel == "tenantq_storefront" else "landingPageConfigDraft"
# how the drafts are stored: compressed size, method, inline or out of line
stored = conn.execute(
    'SELECT avg(pg_column_size(d)), avg(octet_length(d::text)), string_agg(DISTINCT'
    ' coalesce(pg_column_compression(d), \'none\'), \',\'), pg_relation_size(%s::regclass),'
    ' pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE oid = %s::regclass))'
    ' FROM (SELECT "%s" AS d FROM "%s" LIMIT 500) s' % ("'\"%s\"'" % rel, "'\"%s\"'" % rel, col, rel)).fetchone()
stop.set()
if th:
    th.join(5)
cols = ("query", "calls", "exec_ms", "plan_ms", "rows", "blks_hit", "blks_read", "blks_dirtied",
        "blks_written", "wal_records", "wal_fpi", "wal_bytes")
json.dump({"a": a, "b": b, "stored": {"draft_bytes": float(stored[0]), "text_bytes": float(stored[1]),
           "compression": stored[2], "heap_bytes": int(stored[3]), "toast_bytes": int(stored[4])},
           "foreign_writes": w1 - w0, "foreign_failed": writes[1],
           "statements": [dict(zip(cols, (float(v) if isinstance(v, (int, float)) or hasattr(v, "as_integer_ratio") else v for v in s))) for s in stmts]},
          open(out, "w"), indent=1, default=float)
EOF

# run NAME VARIANT RATE TENANTS: one W2 run -> $out/NAME.json (load) and
# $out/NAME.probe.json (the window)
run() {
    local name=$1 variant=$2 rate=$3 nt=$4 table=default
    [ "$variant" = default ] || table=prisma
    fresh_tables "$variant"
    "${psql[@]}" -c CHECKPOINT
    bench_daemon_start "$ep" "$out/$name.tenantqd.log" "${flags[@]}" \
        --metrics-listen "127.0.0.1:$metrics_port"
    "$BENCH_LOAD" --mode daemon -e "$ep" --database "$db" --table "$table" --json "$out/$name.json" \
        --clients "$clients" --tenants "$nt" --duration "$secs" >"$out/$name.out" 2>&1 &
    BENCH_LOAD_PID=$!
    BENCH_HERE=$BENCH_HERE "$PY" "$tmp/probe.py" "$out/$name.probe.json" "$db" \
        "http://127.0.0.1:$metrics_port/metrics" "$variant" "$BENCH_PG_PID" "$BENCH_DAEMON_PID" \
        "$BENCH_LOAD_PID" "$((secs - 5))" "$rate" "$nt" || tq_log "$name: no window measured"
    wait "$BENCH_LOAD_PID" || true
    BENCH_LOAD_PID=
    bench_daemon_stop
    [ -s "$out/$name.json" ] || { cat "$out/$name.out" >&2; tq_die "$name produced no result"; }
    tq_log "$name: $("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f req/s, check passed: %s" % (r["throughput_rps"], r["check"]["passed"]))' "$out/$name.json")"
}

if [ "$part" != foreign ]; then
    for k in $(seq "$pairs"); do
        for v in "${variants[@]}"; do
            run "w2-$v.$k" "$v" 0 "$tenants"
        done
    done
fi
if [ "$part" != compare ]; then
    for k in $(seq "$frounds"); do
        for nt in "${ftenants[@]}"; do
            for r in "${rates[@]}"; do
                run "foreign-$nt-$r.$k" prisma "$r" "$nt"
            done
        done
    done
fi

"$PY" - "$out" "$secs" "$clients" "$pairs" "$part" "${variants[*]}" "${rates[*]}" "${ftenants[*]}" "$frounds" <<'EOF'
import glob, json, os, statistics, sys
d, secs, clients, pairs, part = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
variants, rates, ftenants = sys.argv[6].split(), sys.argv[7].split(), sys.argv[8].split()
frounds = int(sys.argv[9])
def load(name):
    r = json.load(open("%s/%s.json" % (d, name)))
    try:
        p = json.load(open("%s/%s.probe.json" % (d, name)))
    except OSError:
        p = None
    return r, p
def window(p):
    a, b = p["a"], p["b"]
    n = b["metrics"]["requests"] - a["metrics"]["requests"]
    m = lambda k: b["metrics"].get(k, 0) - a["metrics"].get(k, 0)
    db = lambda k: b["db"].get(k, 0) - a["db"].get(k, 0)
    us = lambda k: (b[k] - a[k]) * 1e6 / n if n else 0
    hits, misses = m("draft_cache_hits_total"), m("draft_cache_misses_total")
    return {"n": n, "rps": n / (b["t"] - a["t"]), "pg": us("pg_cpu"), "tqd": us("daemon_cpu"),
            "load": us("load_cpu"), "hits": hits, "misses": misses, "stale": m("draft_cache_stale_total"),
            "hit_ratio": hits / (hits + misses) if hits + misses else 0,
            "txn": m("transactions_total"), "batches": m("transaction_tenants_total"),
            "one_trip": m("transactions_one_round_trip_total"),
            "wal_b": db("wal_bytes") / n if n else 0, "fpi": db("wal_fpi") / n if n else 0,
            "wal_rec": db("wal_records") / n if n else 0, "upd": db("upd"), "hot": db("hot_upd"),
            "toast_ins": db("toast_ins"), "toast_del": db("toast_del")}
def fmt_run(r):
    l = r["latency_us"]
    return "%.0f req/s, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, p99.9 %.1f ms" % (
        r["throughput_rps"], l["p50"] / 1e3, l["p90"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3)
names = {"default": "W2 default schema", "prisma": "W2 Prisma-shaped table",
         "prisma-lz4": "W2 Prisma-shaped table, JSON columns lz4"}
allruns = []
if part != "foreign":
    print("W2 (daemon, %s clients, 10,000 tenants uniform, upsert=80,get=10,remove=10), %s s per run,"
          " %d alternating rounds, durable PostgreSQL; per-request figures over the window" % (clients, secs, pairs))
    print()
    print("| workload | round | throughput, latency (whole run) | PostgreSQL µs/req | tenantqd µs/req | load µs/req | WAL B/req | FPI/req | HOT updates | TOAST rows inserted/req | cache hits | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    med = {}
    for v in variants:
        rs = []
        for k in range(1, pairs + 1):
            r, p = load("w2-%s.%d" % (v, k))
            w = window(p) if p else None
            allruns.append(r)
            rs.append((r, w))
            if w:
                print("| %s | %d | %s | %.0f | %.0f | %.0f | %.0f | %.3f | %.0f %% | %.2f | %.1f %% | %s |" % (
                    names[v], k, fmt_run(r), w["pg"], w["tqd"], w["load"], w["wal_b"], w["fpi"],
                    100 * w["hot"] / w["upd"] if w["upd"] else 0, w["toast_ins"] / w["n"],
                    100 * w["hit_ratio"], r["check"]["passed"]))
            else:
                print("| %s | %d | %s | | | | | | | | | %s |" % (names[v], k, fmt_run(r), r["check"]["passed"]))
        med[v] = rs
    print()
    print("| workload | median throughput | median p50 / p99 | median PostgreSQL / tenantqd µs/req |")
    print("|---|---|---|---|")
    for v in variants:
        rs = med[v]
        mt = statistics.median(r["throughput_rps"] for r, _ in rs)
        p50 = statistics.median(r["latency_us"]["p50"] for r, _ in rs) / 1e3
        p99 = statistics.median(r["latency_us"]["p99"] for r, _ in rs) / 1e3
        ws = [w for _, w in rs if w]
        cpu = "%.0f / %.0f" % (statistics.median(w["pg"] for w in ws), statistics.median(w["tqd"] for w in ws)) if ws else ""
        print("| %s | %.0f req/s | %.1f / %.1f ms | %s |" % (names[v], mt, p50, p99, cpu))
    if "default" in med:
        for v in variants:
            if v == "default":
                continue
            ratios = [a["throughput_rps"] / b["throughput_rps"] for (a, _), (b, _) in zip(med[v], med["default"])]
            print()
            print("%s / default, per round: %s" % (v, ", ".join("%.3f" % x for x in ratios)))
    print()
    print("Top statements by execution time (pg_stat_statements over the window), last round of each:")
    for v in variants:
        r, p = load("w2-%s.%d" % (v, pairs))
        if not p:
            continue
        print("  %s:" % names[v])
        for s in p["statements"][:6]:
            c = s["calls"] or 1
            print("    %7.0f calls  %6.1f µs exec  %5.1f µs plan  %6.0f B WAL  %.3f FPI  %.2f blks dirtied  %s" % (
                s["calls"], 1e3 * s["exec_ms"] / c, 1e3 * s["plan_ms"] / c, s["wal_bytes"] / c,
                s["wal_fpi"] / c, s["blks_dirtied"] / c, " ".join(s["query"].split())[:110]))
        st = p["stored"]
        print("    drafts stored: %.0f B (of %.0f B as text), compression %s; heap %.1f MiB, TOAST %.1f MiB" % (
            st["draft_bytes"], st["text_bytes"], st["compression"], st["heap_bytes"] / 2**20,
            st["toast_bytes"] / 2**20))
if part != "compare":
    print()
    print("Foreign writes to the Prisma rows (\"name\", \"updatedAt\") during W2-shaped load, %s s per run:" % secs)
    print()
    print("| tenants | round | foreign writes/s (measured) | tenantq throughput (whole run) | p50 / p99 | draft cache hit ratio | misses per batch | extra misses per foreign write | stale one-trip batches | one-trip transactions | PostgreSQL / tenantqd µs/req | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for nt in ftenants:
        for k in range(1, frounds + 1):
            base = None
            for rate in rates:
                r, p = load("foreign-%s-%s.%d" % (nt, rate, k))
                allruns.append(r)
                w = window(p) if p else None
                if not w:
                    print("| %s | %d | %s | %s | | | | | | | | %s |" % (nt, k, rate, fmt_run(r), r["check"]["passed"]))
                    continue
                el = p["b"]["t"] - p["a"]["t"]
                mpb = w["misses"] / w["batches"] if w["batches"] else 0
                if base is None:
                    base = mpb
                fw = p["foreign_writes"]
                extra = "%.2f" % ((mpb - base) * w["batches"] / fw) if fw else ""
                print("| %s | %d | %s (%.1f) | %.0f req/s | %.1f / %.1f ms | %.1f %% | %.3f | %s | %.0f | %.0f of %.0f | %.0f / %.0f | %s |" % (
                    nt, k, rate, fw / el, r["throughput_rps"], r["latency_us"]["p50"] / 1e3,
                    r["latency_us"]["p99"] / 1e3, 100 * w["hit_ratio"], mpb, extra, w["stale"],
                    w["one_trip"], w["txn"], w["pg"], w["tqd"], r["check"]["passed"]))
print()
print("every run passed its database check: %s" % all(r["check"]["passed"] for r in allruns))
EOF
