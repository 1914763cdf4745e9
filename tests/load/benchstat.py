"""benchstat.py - what the database did during a benchmark run.

Shared by tests/load/bench.sh and bench-storage.sh (through bench-lib.sh):

- cpu_s(pid), pg_cpu_s(pg_pid): CPU time (user + system, seconds) of a
  process, and of a PostgreSQL cluster: the postmaster, every live child
  (backends, autovacuum, checkpointer, WAL writer, ...) and the children it
  has reaped (backends that exited).  The difference of two readings is the
  cluster's CPU in between, whatever connections came and went.
- snapshot(conn, pg_pid, ...): that, the WAL insert position and
  pg_stat_wal, at one moment.

Command line (the hook of `tenantq-load --hook`, which appends the phase):
  benchstat.py hook PREFIX start|stop
      writes PREFIX.start.json / PREFIX.stop.json: a snapshot of the cluster
      of $BENCH_DB (conninfo), postmaster $BENCH_PG_PID, tenantqd
      $BENCH_DAEMON_PID (optional) and the load generator (the hook's
      grandparent: tenantq-load runs it through sh).
  benchstat.py walrels START_LSN END_LSN
      WAL between the two positions by relation (pg_walinspect, which must
      be installed in $BENCH_DB): JSON on stdout.
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()


def cpu_s(pid, children=False):
    """utime + stime of pid (and cutime + cstime: its reaped children)."""
    try:
        f = _stat(pid)
    except (OSError, ValueError):
        return 0.0
    n = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return n / TICK


def ppid(pid):
    try:
        return int(_stat(pid)[1])
    except (OSError, ValueError, IndexError):
        return 0


def pg_cpu_s(pg_pid):
    total = cpu_s(pg_pid, children=True)
    for p in os.listdir("/proc"):
        if p.isdigit() and ppid(int(p)) == pg_pid:
            total += cpu_s(int(p))
    return total


def snapshot(conn, pg_pid, daemon_pid=0, load_pid=0):
    s = {"t": time.monotonic(), "pg_cpu": pg_cpu_s(pg_pid),
         "daemon_cpu": cpu_s(daemon_pid) if daemon_pid else 0.0,
         "load_cpu": cpu_s(load_pid) if load_pid else 0.0}
    r = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn, pg_current_wal_insert_lsn()::text,"
                     " wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
    s["wal_lsn"], s["wal_lsn_text"] = int(r[0]), r[1]
    s["wal_records"], s["wal_fpi"], s["wal_bytes"] = int(r[2]), int(r[3]), int(r[4])
    return s


def walrels(conn, start, end):
    """WAL bytes (record + full-page images) between two LSNs, by the
    relation of each record's first block; records without a block (commit,
    running xacts, ...) under their resource manager."""
    names = {}
    for oid_node, name in conn.execute(
            "SELECT pg_relation_filenode(oid), relname FROM pg_class"
            " WHERE pg_relation_filenode(oid) IS NOT NULL").fetchall():
        names[int(oid_node)] = name
    # (with synchronous_commit off the end may not be flushed yet, and
    # pg_walinspect reads only flushed WAL)
    deadline = time.monotonic() + 10
    while conn.execute("SELECT pg_current_wal_flush_lsn() < %s::pg_lsn", (end,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise SystemExit("benchstat.py: WAL up to %s not flushed after 10 s" % end)
        time.sleep(0.05)
    out = {}
    cur = conn.execute(
        "SELECT resource_manager, record_type, record_length, fpi_length, block_ref"
        " FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)", (start, end))
    for rm, rtype, length, fpi, ref in cur:
        key = rm + " (no block)"
        if ref:
            # "blkref #0: rel 1663/5/16390 fork main blk 0 ..."
            parts = ref.split()
            if "rel" in parts:
                node = int(parts[parts.index("rel") + 1].split("/")[2])
                key = names.get(node, "filenode %d" % node)
        e = out.setdefault(key, {"records": 0, "bytes": 0, "fpi_bytes": 0})
        e["records"] += 1
        e["bytes"] += int(length)
        e["fpi_bytes"] += int(fpi or 0)
    return out


def main(argv):
    import psycopg
    conn = psycopg.connect(os.environ["BENCH_DB"], autocommit=True)
    if argv[1] == "hook":
        prefix, phase = argv[2], argv[3]
        load_pid = ppid(os.getppid())
        s = snapshot(conn, int(os.environ["BENCH_PG_PID"]),
                     int(os.environ.get("BENCH_DAEMON_PID") or 0), load_pid)
        json.dump(s, open("%s.%s.json" % (prefix, phase), "w"))
    elif argv[1] == "walrels":
        json.dump(walrels(conn, argv[2], argv[3]), sys.stdout, indent=1)
    else:
        sys.exit("benchstat.py: hook PREFIX PHASE | walrels START END")


if __name__ == "__main__":
    main(sys.argv)
