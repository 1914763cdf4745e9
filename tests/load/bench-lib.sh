# shellcheck shell=bash
# tests/load/bench-lib.sh - shell code shared by bench.sh and bench-storage.sh.
#
# Sourced after scripts/lib.sh, never executed.  The caller owns
# `set -euo pipefail` and calls bench_cleanup from its EXIT trap.  Provides:
#   bench_tmp PREFIX            a private work dir in /tmp -> $BENCH_TMP
#   bench_pg DIR fast|durable   a throwaway cluster (tq_pg_start) -> $BENCH_DB,
#                               $BENCH_PG_PID (postmaster), psql array $PSQL;
#                               pg_walinspect installed
#   bench_daemon_start EP LOG [tenantqd options...]
#                               tenantqd on EP, waited for until it answers a
#                               ping -> $BENCH_DAEMON_PID
#   bench_daemon_stop
#   bench_cleanup               stops what is running, removes $BENCH_TMP
# The PostgreSQL CPU and WAL figures come from benchstat.py (its header has
# how), as tenantq-load's --hook around the clock (bench.sh) or from a window
# in the middle of a run (bench-storage.sh's probe).

BENCH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_PY=/usr/bin/python3
# shellcheck disable=SC2034 # (word-split on purpose by bench.sh: `$BENCH_STAT hook ...`)
BENCH_STAT="$BENCH_PY $BENCH_HERE/benchstat.py"
BENCH_TMP=
BENCH_DAEMON_PID=
BENCH_LOAD_PID=
export BENCH_DB BENCH_PG_PID BENCH_DAEMON_PID

bench_tmp() {
    BENCH_TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 0755 "$BENCH_TMP"
}

bench_pg() {
    tq_pg_start "$1" "$2"
    BENCH_DB=$TQ_PG_CONNINFO
    BENCH_PG_PID=$(head -1 "$1/data/postmaster.pid")
    PSQL=("$TQ_PG_BIN/psql" "$BENCH_DB" -X -q -v ON_ERROR_STOP=1)
    "${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_walinspect"
}

# (after a restart of the cluster, e.g. to load a library)
bench_pg_restarted() {
    BENCH_PG_PID=$(head -1 "$TQ_PG_DIR/data/postmaster.pid")
}

bench_daemon_start() {
    local ep=$1 log=$2
    shift 2
    "$BENCH_TQD" --database "$BENCH_DB" --listen "$ep" "$@" 2>"$log" &
    BENCH_DAEMON_PID=$!
    for _ in $(seq 100); do
        "$BENCH_BUILD/client/tenantq" -e "$ep" -t 200 ping >/dev/null 2>&1 && return 0
        kill -0 "$BENCH_DAEMON_PID" 2>/dev/null || { cat "$log" >&2; tq_die "tenantqd did not start"; }
        sleep 0.1
    done
    tq_die "tenantqd does not answer on $ep"
}

bench_daemon_stop() {
    [ -z "$BENCH_DAEMON_PID" ] || { kill -TERM "$BENCH_DAEMON_PID" 2>/dev/null; wait "$BENCH_DAEMON_PID" || true; }
    BENCH_DAEMON_PID=
}

# BENCH_BUILD BENCH_TQD BENCH_LOAD: the build dir (default build) and its
# daemon and load generator, checked to exist.
bench_build() {
    BENCH_BUILD=$(cd "${1:-build}" && pwd)
    BENCH_TQD=$BENCH_BUILD/daemon/tenantqd
    BENCH_LOAD=$BENCH_BUILD/tests/load/tenantq-load
    if [ ! -x "$BENCH_LOAD" ] || [ ! -x "$BENCH_TQD" ]; then
        tq_die "no $BENCH_LOAD or $BENCH_TQD: build first (ninja -C ${1:-build})"
    fi
}

bench_cleanup() {
    [ -z "$BENCH_LOAD_PID" ] || { kill -TERM "$BENCH_LOAD_PID" 2>/dev/null; wait "$BENCH_LOAD_PID" || true; }
    BENCH_LOAD_PID=
    bench_daemon_stop
    tq_pg_stop
    [ -z "$BENCH_TMP" ] || rm -rf "$BENCH_TMP"
    BENCH_TMP=
}
