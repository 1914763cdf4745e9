"""Primary failover (docs/failure.md): a primary and a streaming standby on
this machine (tqlib.PgPair), the daemon on the multi-host conninfo
`host=A,B target_session_attrs=read-write`.  The primary is killed
(`pg_ctl stop -m immediate`) under load from keyed clients (the Python
wire client, the tenantq CLI, libtenantq through tenantq-load and the Node
client) and the standby promoted: the daemon finds the new primary by
itself, every reply is ok or a retryable error (OUTCOME_UNKNOWN resolved by
a retry with the same key), and afterwards every acknowledged edit is on
the new primary exactly once.  With asynchronous replication an edit
acknowledged before the standby had its WAL is lost:
test_async_failover_window shows exactly which, and that the daemon's draft
cache and idempotency records follow the new primary, not what it had seen
on the old one.

Each test builds its own pair (two initdb'd servers, fsync on) in a temp dir;
the kill -> first ok time is printed (run pytest with -s to see it) and is
the figure in docs/failure.md."""

import json
import os
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tqlib import (DB, RETRYABLE_CODES, Client, DaemonFactory, NNTimeout, PgPair, build_dir,
                   cli_bin, envelope, idempotency_records, init_db, join_threads, ok, pack,
                   send_until_ok, start_threads)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_DIR = os.path.join(REPO, "client", "node")
NODE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "failover_client.mjs")
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"
# what tenantq-load's workload answers by design (tests/load/README.md)
LOAD_EXPECTED = {"NOT_FOUND", "INVALID_ARGUMENT", "DUPLICATE_SECTION_ID"}
DAEMON_FLAGS = ("--shards", 2, "--default-deadline-ms", 1500, "--lock-timeout-ms", 1000,
                "--statement-timeout-ms", 3000)


def _up(tenant, key, **kw):
    return pack(envelope(tenant, "section.upsert",
                         {"page": "home", "section": {"id": key, "type": "item", "k": key}},
                         key=key, **kw))


def _keys(row):
    """The k of every section of a stored row (in page order)."""
    if row is None:
        return []
    return [s.get("k") for p in row["draft"]["pages"].values() for s in p["sections"]]


@pytest.fixture
def pair_factory():
    made = []

    def make(sync):
        p = PgPair(sync=sync)
        made.append(p)
        return p
    yield make
    for p in made:
        p.destroy()


@pytest.fixture
def daemons():
    holder = {}

    def make(conninfo, *flags):
        f = holder.setdefault("f", DaemonFactory(conninfo))
        return f(*flags)
    yield make
    if "f" in holder:
        holder["f"].stop_all()


def _node_ready():
    """Whether the Node client is built (client/node/dist); if not, build it
    the way scripts/test does (npm ci), which takes ~20 s once."""
    index = os.path.join(NODE_DIR, "dist", "esm", "index.js")
    if not os.path.exists(index):
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        assert p.returncode == 0, "npm ci in client/node failed:\n" + p.stdout[-3000:]
    return os.path.exists(index)


# --------------------------------------------------------------------------
# the primary killed under load


class Load:
    """Keyed clients of every kind, each appending sections named by their
    keys; every reply is logged with the time its request was sent."""

    def __init__(self, endpoint, conninfo, workdir):
        self.endpoint = endpoint
        self.conninfo = conninfo
        self.workdir = workdir
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.replies = []  # (t_sent, t_reply, client, tenant, key, what)
        self.acked = {}    # tenant -> [keys acknowledged]
        self.procs = []

    def log(self, t_sent, client, tenant, key, what):
        with self.lock:
            self.replies.append((t_sent, time.monotonic(), client, tenant, key, what))
            if what in ("ok", "replayed"):
                self.acked.setdefault(tenant, []).append(key)

    def wire_worker(self, i):
        """The Python wire client: the same bytes until ok."""
        tenant = "fo-py%d" % (i % 3)
        with Client(self.endpoint, timeout_ms=4000) as c:
            n = 0
            while not self.stop.is_set():
                key = "py%d-%d" % (i, n)
                body = _up(tenant, key)
                give_up = time.monotonic() + 40
                while True:
                    t = time.monotonic()
                    try:
                        r = c.raw(body)
                    except NNTimeout:
                        r = None
                    if r is None:
                        what = "timeout"
                    elif r["ok"]:
                        what = "replayed" if r.get("replayed") else "ok"
                    else:
                        what = r["error"]["code"]
                        assert what in RETRYABLE_CODES and r["error"]["retryable"] is True, r
                    self.log(t, "py", tenant, key, what)
                    if r is not None and r["ok"]:
                        break
                    assert time.monotonic() < give_up, "edit %s never succeeded" % key
                    time.sleep(0.05)
                n += 1

    def cli_worker(self, _i):
        """The tenantq CLI, one process per try, -k KEY: exit 1 with a
        retryable code or exit 3 (no answer: outcome unknown) is retried
        with the same key."""
        tenant = "fo-cli"
        n = 0
        env = dict(os.environ)
        env.pop("TENANTQ_ENDPOINT", None)
        while not self.stop.is_set():
            key = "cli-%d" % n
            args = json.dumps({"page": "home", "section": {"id": key, "type": "item", "k": key}})
            give_up = time.monotonic() + 40
            while True:
                t = time.monotonic()
                p = subprocess.run([cli_bin(), "-e", self.endpoint, "-t", "4000", "-k", key,
                                    "call", tenant, "section.upsert", args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, timeout=30, stdin=subprocess.DEVNULL)
                if p.returncode == 0:
                    what = "ok"
                elif p.returncode == 3:
                    what = "timeout"
                else:
                    what = p.stderr.split(":", 1)[0]
                    assert p.returncode == 1 and what in RETRYABLE_CODES, \
                        "CLI: exit %d: %s" % (p.returncode, p.stderr)
                self.log(t, "cli", tenant, key, what)
                if p.returncode == 0:
                    break
                assert time.monotonic() < give_up, "CLI edit %s never succeeded" % key
                time.sleep(0.05)
            n += 1

    def start_processes(self, seconds, node):
        """tenantq-load (libtenantq: generated keys, its own exactly-once
        check against the database it is given) and the Node client."""
        self.load_json = os.path.join(self.workdir, "load.json")
        self.procs.append(("load", subprocess.Popen(
            [os.path.join(build_dir(), "tests", "load", "tenantq-load"), "--mode", "daemon",
             "-e", self.endpoint, "--database", self.conninfo, "--clients", "2",
             "--tenants", "4", "--duration", str(seconds), "--json", self.load_json,
             "--seed", "7"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        if node:
            self.procs.append(("node", subprocess.Popen(
                ["node", NODE_SCRIPT, self.endpoint, "fo-node", "node", str(seconds)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))

    def finish_processes(self):
        out = {}
        for name, p in self.procs:
            o, e = p.communicate(timeout=90)
            out[name] = (p.returncode, o, e)
        return out


def _first_ok_after(replies, t_killed):
    """The first ok reply to a request sent after the primary was dead."""
    oks = [r[1] for r in replies if r[0] > t_killed and r[5] in ("ok", "replayed")]
    return min(oks) if oks else None


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_primary_killed_under_load(sync, pair_factory, daemons, tmp_path):
    """~20 s per variant.  6 wire clients, a CLI loop, tenantq-load (2
    libtenantq clients) and the Node client edit without pause; after 2 s
    the primary is killed and the standby promoted at once.  The daemon
    must reconnect by itself; kill -> first ok is measured.  Synchronous:
    every acknowledged edit is on the new primary exactly once, with its
    idempotency record (a resend replays).  Asynchronous: the same, except
    that edits acknowledged in the last moments before the kill may be
    missing (never duplicated): the window test_async_failover_window shows
    deterministically."""
    node = _node_ready()
    pair = pair_factory(sync)
    init_db(pair.conninfo)
    d = daemons(pair.conninfo, *DAEMON_FLAGS)
    load = Load(d.endpoint, pair.conninfo, str(tmp_path))
    load_seconds = 7
    load.start_processes(load_seconds, node)
    threads, errors = start_threads(7, lambda i: load.wire_worker(i) if i < 6
                                    else load.cli_worker(i))
    try:
        time.sleep(2.0)
        with load.lock:
            before = len([r for r in load.replies if r[5] == "ok"])
        assert before > 20, "only %d edits acknowledged before the kill" % before
        t_kill = time.monotonic()
        pair.kill_primary()
        t_killed = time.monotonic()
        pair.promote()
        t_promoted = time.monotonic()
        deadline = t_killed + 20
        while time.monotonic() < deadline:
            with load.lock:
                first = _first_ok_after(load.replies, t_killed)
            if first is not None:
                break
            assert d.proc.poll() is None, d.tail()
            time.sleep(0.05)
        assert first is not None, "no ok within 20 s of the kill\n" + d.tail()
        time.sleep(max(0.0, t_kill + load_seconds - 2.0 - time.monotonic()))
    finally:
        load.stop.set()
        join_threads(threads, errors, timeout=90)
    procs = load.finish_processes()

    new = DB(pair.conninfo)
    with new.connect() as c:
        assert c.execute("SELECT current_setting('data_directory')").fetchone()[0] \
            == pair.standby_data
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False

    # the Node client: every reply ok or retryable, its acks join the rest
    if node:
        rc, out, errout = procs["node"]
        assert rc == 0, "node client exit %d:\n%s\n%s" % (rc, out[-2000:], errout[-2000:])
        for line in out.splitlines():
            r = json.loads(line)
            if r.get("ok"):
                load.acked.setdefault("fo-node", []).append(r["key"])
            else:
                assert r["code"] in RETRYABLE_CODES | {"TIMEOUT", "TRANSPORT"}, r

    # wire, CLI and Node edits: each acknowledged one exactly once
    lost = {}
    for tenant, keys in sorted(load.acked.items()):
        row = new.row(tenant)
        stored = _keys(row)
        assert len(stored) == len(set(stored)), "%s: an edit stored twice: %r" % (
            tenant, sorted(k for k in set(stored) if stored.count(k) > 1))
        assert set(stored) <= set(keys), "%s: stored edits nobody acknowledged: %r" % (
            tenant, sorted(set(stored) - set(keys)))
        assert row["version"] == len(stored), (tenant, row["version"], len(stored))
        missing = sorted(set(keys) - set(stored))
        if missing:
            lost[tenant] = missing
    n_acked = sum(len(k) for k in load.acked.values())
    if sync:
        assert not lost, "acknowledged edits missing after a synchronous failover: %r" % lost
        records = idempotency_records(new)
        for tenant, keys in load.acked.items():
            for k in keys:
                assert (tenant, k) in records, "no idempotency record for %s/%s" % (tenant, k)
        # a resend of an edit acknowledged before the kill replays it
        early = sorted((r for r in load.replies if r[2] == "py" and r[5] == "ok"
                        and r[1] < t_kill))[:5]
        with Client(d.endpoint) as c:
            for _, _, _, tenant, key, _ in early:
                r = c.raw(_up(tenant, key))
                assert r["ok"] and r.get("replayed") is True, r

    # libtenantq (tenantq-load): its replies, and its own check on the new primary
    rc, out, _ = procs["load"]
    assert os.path.exists(load.load_json), "tenantq-load: exit %d, no report\n%s" % (
        rc, out[-3000:])
    with open(load.load_json) as f:
        rep = json.load(f)
    bad = {c: n for c, n in rep["errors"].items() if c not in RETRYABLE_CODES | LOAD_EXPECTED}
    assert not bad, "tenantq-load got non-retryable errors %r\n%s" % (bad, out[-3000:])
    assert rep["ok"] > 0, out[-3000:]
    check = rep["check"]
    assert check["duplicate_ids"] == 0, check
    if sync:
        assert rc == 0 and check["passed"] is True, "tenantq-load: exit %d\n%s" % (rc, out[-3000:])

    # every kind of client was served before and after the switch
    for kind in ("py", "cli"):
        for when, pick in (("before", lambda r: r[1] < t_kill), ("after", lambda r: r[0] > t_killed)):
            assert any(r[2] == kind and r[5] == "ok" and pick(r) for r in load.replies), \
                "no %s edit acknowledged %s the kill" % (kind, when)
    if node:
        assert load.acked.get("fo-node"), "the Node client had no edit acknowledged"
    codes = {}
    for r in load.replies:
        if r[5] not in ("ok", "replayed"):
            codes[r[5]] = codes.get(r[5], 0) + 1
    print("\nfailover (%s): kill -> first ok %.2f s (promote took %.2f s); acknowledged: "
          "wire %d, CLI %d, Node %s, tenantq-load %d; wire/CLI retries %r; tenantq-load errors "
          "%r; lost acknowledged: %r; daemon reconnects logged: %d"
          % ("sync" if sync else "async", first - t_kill, t_promoted - t_killed,
             sum(1 for r in load.replies if r[2] == "py" and r[5] == "ok"),
             sum(1 for r in load.replies if r[2] == "cli" and r[5] == "ok"),
             len(load.acked.get("fo-node", [])) if node else "skipped", rep["ok"], codes,
             rep["errors"], lost, d.log().count("reconnected to the database")))
    d.ping()


# --------------------------------------------------------------------------
# asynchronous replication: the window, and the draft cache across it


def _direct_append(conn, tenant, key):
    """A direct writer following the lock protocol: lock, read, append a
    section, write version+1, commit.  Returns (version, xmin) written."""
    conn.execute(LOCK_SQL, (tenant,))
    draft, version = conn.execute("SELECT draft, version FROM tenantq_storefront "
                                  "WHERE tenant = %s", (tenant,)).fetchone()
    draft["pages"]["home"]["sections"].append({"id": key, "type": "item", "k": key})
    conn.execute("UPDATE tenantq_storefront SET draft = %s, version = %s, updated_at = now() "
                 "WHERE tenant = %s", (Jsonb(draft), version + 1, tenant))
    xmin = conn.execute("SELECT xmin::text::bigint FROM tenantq_storefront WHERE tenant = %s",
                        (tenant,)).fetchone()[0]
    conn.commit()
    return version + 1, xmin


def test_async_failover_window(pair_factory, daemons):
    """~10 s.  Asynchronous replication; edits that are acknowledged after
    the standby stopped receiving WAL (its WAL receiver stopped: the
    extreme of lag) are lost when the primary dies and the standby is
    promoted: their sections, their version steps and their idempotency
    records.  The daemon then works on the state the new primary has: the
    version continues from the new primary's, no lost section comes back,
    a keyed resend of a lost edit runs afresh (not replayed), one of an
    edit the standby had replays.

    The hard case for the draft cache: the daemon cached tenant a at the
    (version, xmin) its lost edit wrote.  The promoted standby never saw
    that transaction id, so it hands the same id out again; a direct writer
    that bumps a's version on the new primary under that very id writes a
    row whose (version, xmin) equals the cached pair.  The daemon's next
    edit of a must still be based on the new primary's row (the direct
    writer's section kept, the lost one absent), not on its cached copy."""
    pair = pair_factory(False)
    init_db(pair.conninfo)
    d = daemons(pair.conninfo, "--shards", 1, "--default-deadline-ms", 1500)
    old, new = DB(pair.primary_conninfo), DB(pair.conninfo)
    with Client(d.endpoint) as c:
        for t, k in (("a", "pre-a1"), ("a", "pre-a2"), ("b", "pre-b1"), ("b", "pre-b2")):
            ok(c.raw(_up(t, k)))
        pair.wait_replayed()
        pair.cut_replication()
        # acknowledged, committed on the primary, never sent to the standby
        assert ok(c.raw(_up("a", "lost-a1")))["version"] == 3
        assert ok(c.raw(_up("b", "lost-b1")))["version"] == 3
        assert ok(c.raw(_up("b", "lost-b2")))["version"] == 4
        with old.connect() as conn:
            xmin_a = conn.execute("SELECT xmin::text::bigint FROM tenantq_storefront "
                                  "WHERE tenant = 'a'").fetchone()[0]
        assert _keys(old.row("a")) == ["pre-a1", "pre-a2", "lost-a1"]

        t_kill = time.monotonic()
        pair.kill_primary()
        pair.promote()

        # what the new primary has: the state before the cut, no trace of the rest
        assert _keys(new.row("a")) == ["pre-a1", "pre-a2"] and new.row("a")["version"] == 2
        assert _keys(new.row("b")) == ["pre-b1", "pre-b2"] and new.row("b")["version"] == 2
        assert set(idempotency_records(new)) == {("a", "pre-a1"), ("a", "pre-a2"),
                                                 ("b", "pre-b1"), ("b", "pre-b2")}

        # the new primary gives out the lost edit's transaction id again:
        # burn ids up to it, then a direct writer makes a's row (3, xmin_a),
        # the (version, xmin) the daemon cached with the lost edit's draft
        with psycopg.connect(pair.conninfo, autocommit=True) as conn:
            nxt = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                               ).fetchone()[0]
            assert nxt <= xmin_a, "the new primary is past the lost id already (%d > %d)" % (
                nxt, xmin_a)
            for _ in range(xmin_a - nxt):
                conn.execute("SELECT pg_current_xact_id()")
        with psycopg.connect(pair.conninfo, autocommit=False) as conn:
            assert _direct_append(conn, "a", "direct") == (3, xmin_a)

        log = []
        res = send_until_ok(c, _up("a", "after-a"), limit_s=20, log=log)["result"]
        t_first_ok = time.monotonic()
        assert res["version"] == 4, res
        assert _keys(new.row("a")) == ["pre-a1", "pre-a2", "direct", "after-a"], \
            "the daemon wrote from its cached copy of the old primary's row"
        assert ok(c.raw(_up("b", "after-b")))["version"] == 3
        assert _keys(new.row("b")) == ["pre-b1", "pre-b2", "after-b"]

        # keys: a lost edit's key is unknown to the new primary (runs again,
        # once); a replicated one replays
        r = c.raw(_up("b", "lost-b1"))
        assert ok(r)["version"] == 4 and not r.get("replayed"), r
        r = c.raw(_up("b", "lost-b1"))
        assert ok(r)["version"] == 4 and r.get("replayed") is True, r
        r = c.raw(_up("b", "pre-b1"))
        assert r["ok"] and r.get("replayed") is True, r
    assert _keys(new.row("b")) == ["pre-b1", "pre-b2", "after-b", "lost-b1"]
    print("\nasync failover: kill -> first ok %.2f s (including the test's direct write); "
          "tries %r" % (t_first_ok - t_kill, log))
    d.ping()
