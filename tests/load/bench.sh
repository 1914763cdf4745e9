#!/usr/bin/env bash
# tests/load/bench.sh - the README's benchmark table, measured side by side.
#
# Starts a throwaway PostgreSQL 15 (scripts/lib.sh: unix socket) and one
# tenantqd with default settings (4 shards x 2 connections) and the example
# SQL operations of systemd/ops/booking ([ops] dir), then runs each workload
# through the daemon and its baseline back to back on the same machine, and
# prints a markdown table with the ratios, plus tenantqd's peak RSS after
# 100,000 distinct tenants.
#
# The cluster runs with PostgreSQL's defaults (fsync, synchronous_commit,
# full_page_writes on), as production does: the headline table.
# TQ_BENCH_DURABILITY=fast runs the test suite's settings instead (fsync,
# synchronous_commit, full_page_writes off); =both runs the durable pass, then
# the whole set again on a fresh fast cluster, and adds the fast pass's ratio
# as a secondary column.
#
# Besides throughput and latency, every run measures the database's work per
# request, figures that do not depend on the machine's core count: CPU time
# of PostgreSQL (all its processes, from /proc) and WAL bytes (the WAL insert
# position), both read by tenantq-load's --hook just before the clock starts
# (after seeding and connecting) and right after the last client finished
# (before the check), divided by the requests answered.  Each run starts
# after a VACUUM (what earlier runs left to autovacuum is not counted in this
# one; the vacuum and the expiry of a run's own idempotency records come
# later and are not counted at all) and a CHECKPOINT; full-page images are
# counted (FPI/req).  tests/load/benchstat.py does the reading.
#
# Workloads (BENCH_CLIENTS clients unless said):
#   W1 one tenant, upsert=100          W2 10,000 tenants uniform (80/10/10)
#   W3 10,000 tenants zipf:1.1         W4 ping only (baseline: echo)
#   W5 one client, W1's shape          W6 one tenant, booking.create=100
#   W7 10,000 tenants uniform, booking.create=80,booking.list=20
#   mem: 100,000 distinct tenants, then the daemon's peak RSS
# Baseline of W1-W3, W5-W7: `direct` (a libpq connection per client, a
# transaction with pg_advisory_xact_lock per request).
#
# The machine's speed drifts from minute to minute (a shared host), so each
# workload runs BENCH_ROUNDS times, daemon and baseline back to back in every
# round; the table shows the median round (by ratio) and the range of the
# ratios over all rounds.
#
# BENCH_KEYS=1 adds, to every round, W1 and W6 through the daemon without
# idempotency keys (tenantq-load --keys none) and, for W1 and W6 with and
# without keys and their baseline, the WAL of the run by relation
# (pg_walinspect): what the idempotency records cost per edit.
#
# Usage: tests/load/bench.sh [BUILD_DIR]      (default: build)
# Environment: BENCH_SECONDS per run (default 10), BENCH_CLIENTS (default 64),
#   BENCH_ROUNDS (default 3), TQ_BENCH_DURABILITY (durable|fast|both),
#   BENCH_WORKLOADS (default "w1 w2 w3 w4 w5 w6 w7 mem"), BENCH_KEYS (0|1),
#   BENCH_OUT (keep every run's JSON in this directory).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# shellcheck source=tests/load/bench-lib.sh
. "$TQ_ROOT/tests/load/bench-lib.sh"
cd "$TQ_ROOT"

bench_build "${1:-build}"
secs=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-64}
rounds=${BENCH_ROUNDS:-3}
keys=${BENCH_KEYS:-0}
read -r -a workloads <<<"${BENCH_WORKLOADS:-w1 w2 w3 w4 w5 w6 w7 mem}"
case ${TQ_BENCH_DURABILITY:-durable} in
    durable) passes=(durable) ;;
    fast) passes=(fast) ;;
    both) passes=(durable fast) ;;
    *) tq_die "TQ_BENCH_DURABILITY: durable, fast or both" ;;
esac
ops=$TQ_ROOT/systemd/ops/booking

bench_tmp tq-bench
trap bench_cleanup EXIT
out=${BENCH_OUT:-$BENCH_TMP/out}
mkdir -p "$out"
mkdir -m 0750 "$BENCH_TMP/run"
ep=ipc://$BENCH_TMP/run/tenantqd.sock

# run PASS NAME MODE ARGS... -> $out/PASS/NAME.json (the load generator's
# result) and NAME.start.json / NAME.stop.json (benchstat.py's snapshots)
run() {
    local pass=$1 name=$2 mode=$3 d=$out/$1
    shift 3
    # Booking runs start from a booking table of 200,000 rows of another
    # tenant, analyzed: the plans the daemon prepares once per connection
    # then fit a table of a real size (planned on a just-truncated table,
    # the slot check became a scan of the whole table, which grew by ~10^5
    # rows per run: 1.5-1.9k req/s instead of 21-23k).
    case " $* " in *" booking."*)
        "${PSQL[@]}" -c "TRUNCATE booking" -c "INSERT INTO booking (tenant_id, slot, customer)
            SELECT 'bench-seed', to_timestamp(g * 60), 'seed' FROM generate_series(1, 200000) g"
        ;;
    esac
    # (the vacuum the earlier runs left behind, so that autovacuum does not
    # land in this run's figures; then every page is clean)
    "${PSQL[@]}" -c VACUUM -c ANALYZE -c CHECKPOINT
    "$BENCH_LOAD" --mode "$mode" -e "$ep" --database "$BENCH_DB" --json "$d/$name.json" \
        --hook "$BENCH_STAT hook $d/$name" "$@" >"$d/$name.out" 2>&1 || true
    [ -s "$d/$name.json" ] || { cat "$d/$name.out" >&2; tq_die "$pass $name produced no result"; }
    tq_log "$pass $name: $("$BENCH_PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f req/s, check passed: %s" % (r["throughput_rps"], r["check"]["passed"]))' "$d/$name.json")"
}

# walrels PASS NAME: the WAL of a run by relation -> NAME.walrels.json
walrels() {
    local d=$out/$1
    $BENCH_STAT walrels \
        "$("$BENCH_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["wal_lsn_text"])' "$d/$2.start.json")" \
        "$("$BENCH_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["wal_lsn_text"])' "$d/$2.stop.json")" \
        >"$d/$2.walrels.json"
}

# pair PASS W BASELINE ARGS...: workload W (if wanted) through the daemon,
# then the baseline, in round $round
pair() {
    local pass=$1 w=$2 base=$3
    shift 3
    want "$w" || return 0
    run "$pass" "$w-daemon.$round" daemon "$@"
    run "$pass" "$w-$base.$round" "$base" "$@"
}

# keyed PASS W ARGS...: like pair W direct; with BENCH_KEYS=1 also W through
# the daemon without idempotency keys, and after each of the three runs its
# WAL by relation (read before the next run's CHECKPOINT lets the server
# recycle it), after the daemon's what its records hold
keyed() {
    local pass=$1 w=$2 side
    shift 2
    want "$w" || return 0
    if [ "$keys" != 1 ]; then
        pair "$pass" "$w" direct "$@"
        return 0
    fi
    for side in daemon direct nokeys; do
        if [ "$side" = nokeys ]; then
            run "$pass" "$w-nokeys.$round" daemon --keys none "$@"
        else
            run "$pass" "$w-$side.$round" "$side" "$@"
        fi
        walrels "$pass" "$w-$side.$round"
        [ "$side" != daemon ] ||
            "${PSQL[@]}" -At -F ' ' -c "SELECT count(*), round(avg(pg_column_size(i.*))),
                round(avg(octet_length(key))), round(avg(octet_length(fingerprint))),
                round(avg(octet_length(response))), max(response) FROM tenantq_idempotency i
                WHERE tenant = 'load-t000000' AND created_at > now() - make_interval(secs => $secs + 2)" \
                >"$out/$pass/$w-daemon.$round.records"
    done
}

want() { case " ${workloads[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

hot=(--clients "$clients" --tenants 1 --mix upsert=100 --duration "$secs")
uni=(--clients "$clients" --tenants 10000 --duration "$secs")
zipf=(--clients "$clients" --tenants 10000 --dist zipf:1.1 --duration "$secs")
ping=(--clients "$clients" --tenants 10000 --mix ping=100 --duration "$secs")
one=(--clients 1 --tenants 1 --mix upsert=100 --duration "$secs")
book=(--clients "$clients" --tenants 1 --mix booking.create=100 --duration "$secs")
# shellcheck disable=SC2054 # (the commas are the mix's)
books=(--clients "$clients" --tenants 10000 --mix booking.create=80,booking.list=20 --duration "$secs")

for pass in "${passes[@]}"; do
    mkdir -p "$out/$pass"
    bench_pg "$BENCH_TMP/pg-$pass" "$pass"
    "${PSQL[@]}" -f "$ops/schema.sql"
    "$BENCH_TQD" --database "$BENCH_DB" --init-db >/dev/null
    bench_daemon_start "$ep" "$out/$pass/tenantqd.log" --metrics-listen '' --ops-dir "$ops/ops"
    for round in $(seq "$rounds"); do
        keyed "$pass" w1 "${hot[@]}"
        pair "$pass" w2 direct "${uni[@]}"
        pair "$pass" w3 direct "${zipf[@]}"
        pair "$pass" w4 echo "${ping[@]}"
        pair "$pass" w5 direct "${one[@]}"
        keyed "$pass" w6 "${book[@]}"
        pair "$pass" w7 direct "${books[@]}"
    done
    if want mem; then
        # memory: 100,000 distinct tenants served, then the daemon's peak RSS
        run "$pass" mem daemon --clients "$clients" --tenants 100000 --mix upsert=100 --requests 200000 --no-check
        awk '/^VmHWM|^VmRSS/ {print $1, $2}' "/proc/$BENCH_DAEMON_PID/status" >"$out/$pass/mem.rss"
    fi
    bench_daemon_stop
    tq_pg_stop
done

"$BENCH_PY" - "$out" "$secs" "$clients" "$rounds" "$keys" "${passes[*]}" "${workloads[*]}" <<'EOF'
import json, os, sys
d, secs, clients, rounds, keys = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
passes, workloads = sys.argv[6].split(), sys.argv[7].split()
main, second = passes[0], (passes[1] if len(passes) > 1 else None)

def load(p, name):
    r = json.load(open("%s/%s/%s.json" % (d, p, name)))
    try:
        a = json.load(open("%s/%s/%s.start.json" % (d, p, name)))
        b = json.load(open("%s/%s/%s.stop.json" % (d, p, name)))
        n = r["requests"] or 1
        r["work"] = {k: (b[k] - a[k]) * 1e6 / n for k in ("pg_cpu", "daemon_cpu", "load_cpu")}
        r["work"]["wal"] = (b["wal_lsn"] - a["wal_lsn"]) / n
        r["work"]["fpi"] = (b["wal_fpi"] - a["wal_fpi"]) / n
    except (OSError, KeyError, ValueError):
        r["work"] = None
    return r

def pairs(p, a, b):
    out = []
    for k in range(1, rounds + 1):
        x, y = load(p, "%s.%d" % (a, k)), load(p, "%s.%d" % (b, k))
        out.append((x["throughput_rps"] / y["throughput_rps"] if y["throughput_rps"] else 0, x, y))
    out.sort(key=lambda q: q[0])
    return out

def med(v):
    v = sorted(v)
    return v[len(v) // 2]

def lat(r):
    return "%s req/s, p50 %.1f ms, p99 %.1f ms" % (format(round(r["throughput_rps"]), ","),
                                                  r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3)

def work(ps, key, fmt):
    # medians over the rounds of each side, and the ratio baseline / daemon
    xs = [x["work"][key] for _, x, _ in ps if x["work"]]
    ys = [y["work"][key] for _, _, y in ps if y["work"]]
    if not xs or not ys:
        return "", ""
    rs = sorted(y["work"][key] / x["work"][key] for _, x, y in ps if x["work"] and y["work"] and x["work"][key] > 0)
    ratio = "%.1f×" % med(rs) if rs else ""
    if rs and rounds > 1:
        ratio += " (%.1f–%.1f)" % (rs[0], rs[-1])
    return (fmt % med(xs)) + " / " + (fmt % med(ys)), ratio

rows = [("w1", "W1 hot tenant (1 tenant, upsert=100)", "w1-daemon", "w1-direct",
         "≥ 15×; daemon p99 ≤ direct p50; DB CPU/edit ≥ 40× lower; WAL/edit ≥ 10× lower"),
        ("w2", "W2 uniform (10,000 tenants, upsert=80,get=10,remove=10)", "w2-daemon", "w2-direct",
         "≥ 1.5× with ≤ ¼ of the connections (8 vs %s)" % clients),
        ("w3", "W3 skewed (10,000 tenants, zipf:1.1)", "w3-daemon", "w3-direct", "≥ 3×; DB CPU/edit ≥ 3× lower"),
        ("w4", "W4 ping only", "w4-daemon", "w4-echo", "≥ 0.8× echo"),
        ("w5", "W5 one client, W1 shape", "w5-daemon", "w5-direct", "daemon p50 ≤ direct p50 + 1 ms"),
        ("w6", "W6 hot tenant, booking.create=100 (1 tenant, distinct slots)", "w6-daemon", "w6-direct",
         "≥ 10×; daemon p99 ≤ direct p50"),
        ("w7", "W7 uniform bookings (10,000 tenants, booking.create=80,booking.list=20)", "w7-daemon", "w7-direct",
         "≥ 1.5× with ≤ ¼ of the connections (8 vs %s)" % clients)]
def passed(p, n):
    r = json.load(open(os.path.join(d, p, n)))
    if "booking" in r["mix"]:
        # (the booking check is in the load generator's report, not its JSON)
        return "booking check: passed" in open(os.path.join(d, p, n[:-5] + ".out")).read()
    return r["check"].get("passed") is not False
checked = all(passed(p, n) for p in passes for n in os.listdir("%s/%s" % (d, p)) if n.endswith(".json")
              and not n.endswith((".start.json", ".stop.json", ".walrels.json")))
print("%s cluster, %s s per run, %s clients unless said, %d rounds (median round shown, ratio range in "
      "parentheses); PostgreSQL CPU and WAL per request: medians over the rounds, daemon / baseline; "
      "every run passed its database check: %s" % (main, secs, clients, rounds, checked))
print()
head = "| workload | tenantqd | baseline | ratio | PostgreSQL CPU µs/req, daemon / baseline | baseline ÷ daemon | WAL B/req, daemon / baseline | baseline ÷ daemon |"
if second:
    head += " %s pass: ratio |" % second
print(head + " target |")
print("|" + "---|" * (head.count("|") ))
for key, title, a, b, target in rows:
    if key not in workloads:
        continue
    ps = pairs(main, a, b)
    ratio, x, y = ps[len(ps) // 2]
    spread = "" if rounds == 1 else " (%.2f–%.2f)" % (ps[0][0], ps[-1][0])
    if key == "w4":
        cpu, cr, wal, wr = "–", "", "–", ""
    else:
        cpu, cr = work(ps, "pg_cpu", "%.0f")
        wal, wr = work(ps, "wal", "%.0f")
    line = "| %s | %s | %s: %s | **%.2f×**%s | %s | %s | %s | %s |" % (
        title, lat(x), b.split("-")[1], lat(y), ratio, spread, cpu, cr, wal, wr)
    if second:
        sp = pairs(second, a, b)
        line += " %.2f× (%.2f–%.2f) |" % (sp[len(sp) // 2][0], sp[0][0], sp[-1][0])
    print(line + " %s |" % target)
if "mem" in workloads:
    print()
    for p in passes:
        m = json.load(open("%s/%s/mem.json" % (d, p)))
        rss = dict(l.split() for l in open("%s/%s/mem.rss" % (d, p)))
        print("%s: tenantqd after 100,000 distinct tenants (%d requests): peak RSS %.1f MiB, now %.1f MiB "
              "(target ≤ 64 MiB)" % (p, m["ok"] + sum(m["errors"].values()), int(rss["VmHWM:"]) / 1024,
                                    int(rss["VmRSS:"]) / 1024))

# the rest of each run's figures, every round
print()
print("Per run (%s pass): throughput; µs of CPU per request of PostgreSQL / tenantqd / the load generator; "
      "WAL B/req; full-page images per request" % main)
print()
print("| run | req/s | p50 / p99 ms | PG / tenantqd / load µs/req | WAL B/req | FPI/req |")
print("|---|---|---|---|---|---|")
for p in passes:
    for key, title, a, b, target in rows:
        if key not in workloads:
            continue
        sides = [a, b] + (["%s-nokeys" % key] if key in ("w1", "w6") and keys else [])
        for s in sides:
            for k in range(1, rounds + 1):
                r = load(p, "%s.%d" % (s, k))
                w = r["work"] or {"pg_cpu": 0, "daemon_cpu": 0, "load_cpu": 0, "wal": 0, "fpi": 0}
                print("| %s %s.%d | %.0f | %.1f / %.1f | %.0f / %.0f / %.0f | %.0f | %.3f |" % (
                    p, s, k, r["throughput_rps"], r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3,
                    w["pg_cpu"], w["daemon_cpu"] if s.endswith(("daemon", "nokeys")) else 0, w["load_cpu"],
                    w["wal"], w["fpi"]))

for wk in ("w1", "w6"):
    if not keys or wk not in workloads:
        continue
    print()
    print("%s's WAL by relation (pg_walinspect; bytes per request, of which full-page images), every round:" % wk.upper())
    for p in passes:
        for s in (wk + "-daemon", wk + "-nokeys", wk + "-direct"):
            for k in range(1, rounds + 1):
                name = "%s.%d" % (s, k)
                try:
                    rel = json.load(open("%s/%s/%s.walrels.json" % (d, p, name)))
                except OSError:
                    continue
                n = load(p, name)["requests"] or 1
                tot = sum(e["bytes"] for e in rel.values())
                parts = sorted(rel.items(), key=lambda kv: -kv[1]["bytes"])
                print("  %s %s: %.0f B/req: %s" % (p, name, tot / n, ", ".join(
                    "%s %.0f (%.0f FPI, %.2f records)" % (k2, e["bytes"] / n, e["fpi_bytes"] / n, e["records"] / n)
                    for k2, e in parts if e["bytes"] / n >= 0.5)))
                try:
                    c, row, key_b, fp_b, resp_b, sample = open("%s/%s/%s.records" % (d, p, name)).read().split(" ", 5)
                    print("    records of the run: %s, %s B per row (key %s B, fingerprint %s B,"
                          " response %s B, e.g. %s)" % (c, row, key_b, fp_b, resp_b, sample.strip()))
                except (OSError, ValueError):
                    pass
EOF
