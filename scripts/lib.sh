# shellcheck shell=bash
# lib.sh - shell helpers shared by scripts/run and scripts/test.
#
# Sourced, never executed.  Provides: installing the Debian packages the
# project needs, configuring/building a meson tree, and a throwaway
# PostgreSQL 15 cluster (unix socket only, no TCP port, so parallel runs never
# clash).  The callers own `set -euo pipefail` and their EXIT traps; the
# helpers only record what the trap must undo (TQ_PG_*).

TQ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TQ_PG_BIN=/usr/lib/postgresql/15/bin

# Everything a build, a run or a test needs.  Names checked with apt-cache
# policy on Debian bookworm.  python3-* are for tests/integration, which runs
# under /usr/bin/python3 (a pyenv python3 on PATH does not see them).
TQ_PACKAGES=(
    build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
    libevent-dev libpq-dev libmsgpack-dev libnanomsg-dev nanomsg-utils
    libsystemd-dev libjansson-dev libjemalloc-dev postgresql-15
    python3 python3-pytest python3-msgpack python3-psycopg scdoc man-db
    debhelper dpkg-dev fakeroot lintian systemd
)

tq_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
tq_die() { tq_log "error: $*"; exit 1; }

# Prefix for commands that need root: nothing as root, sudo if available.
tq_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        tq_die "need root (or sudo) to run: $*"
    fi
}

# Install whatever of TQ_PACKAGES is missing; a no-op (no apt at all) when
# everything is there, so it is cheap to call on every run.
tq_install_deps() {
    local missing=() p
    for p in "${TQ_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    # the Node client's tests (client/node): Debian's nodejs and npm, only
    # when node or npm is missing (a newer Node from elsewhere is fine)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    [ ${#missing[@]} -eq 0 ] && return 0
    tq_log "installing: ${missing[*]}"
    tq_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    tq_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# tq_build DIR [meson setup options...]: configure DIR if it is not a meson
# build dir yet, then build it.  Options only apply at first setup; delete the
# tree to change them.
tq_build() {
    local dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$TQ_ROOT" "$@" || return 1
    fi
    ninja -C "$dir" || return 1
}

# Runs a PostgreSQL tool, as the postgres user when we are root (the server
# refuses to run as root).
tq_pg_cmd() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# tq_pg_start DIR [fast|durable]: initdb a fresh cluster in DIR/data, start
# it with its unix socket in DIR.  Sets TQ_PG_DIR and TQ_PG_CONNINFO.  DIR
# must be new or disposable: its data dir is wiped.  Stop with tq_pg_stop (put
# it in a trap).  "fast" (the default, for the test suite only) turns off
# fsync, synchronous_commit and full_page_writes: a crash of the machine or an
# immediate stop can then lose acknowledged commits.  "durable" keeps
# PostgreSQL's defaults, so `ok` means on disk, as in production.
tq_pg_start() {
    local dir=$1 mode=${2:-fast} speed
    case $mode in
        fast) speed="-c fsync=off -c synchronous_commit=off -c full_page_writes=off" ;;
        durable) speed="" ;;
        *) tq_die "tq_pg_start: mode must be fast or durable, not $mode" ;;
    esac
    [ -x "$TQ_PG_BIN/initdb" ] || tq_die "PostgreSQL 15 server binaries not found in $TQ_PG_BIN"
    mkdir -p "$dir"
    rm -rf "$dir/data"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || tq_die "no postgres user (is postgresql-15 installed?)"
        chown postgres: "$dir"
        # The server, running as postgres, must be able to reach DIR.
        runuser -u postgres -- test -x "$dir" ||
            tq_die "user postgres cannot enter $dir (check the modes of its parents)"
    fi
    tq_pg_cmd "$TQ_PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync \
        -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; tq_die "initdb failed"; }
    TQ_PG_DIR=$dir
    if ! tq_pg_cmd "$TQ_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-k '$dir' -c listen_addresses='' $speed -c max_connections=200" \
        start >/dev/null; then
        cat "$dir/postgres.log" >&2 || true
        TQ_PG_DIR=
        tq_die "PostgreSQL did not start"
    fi
    # shellcheck disable=SC2034 # read by the sourcing script
    TQ_PG_CONNINFO="host=$dir user=postgres dbname=postgres"
}

# Stops the cluster started by tq_pg_start, if any.  Safe to call twice.
tq_pg_stop() {
    if [ -n "${TQ_PG_DIR:-}" ] && [ -f "$TQ_PG_DIR/data/postmaster.pid" ]; then
        tq_pg_cmd "$TQ_PG_BIN/pg_ctl" -D "$TQ_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    TQ_PG_DIR=
}
