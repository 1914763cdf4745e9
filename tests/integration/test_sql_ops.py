"""SQL operations ([ops] dir): op files run in the tenant's lane under the
advisory lock, with REJECTED for their own rules, exact value mapping,
idempotency keys, reload, and refusal of bad files at start."""

import os
import pathlib
import signal
import threading
import time

import pytest

from tqlib import (Client, TaggedRawReq, envelope, err, free_tcp_port, idempotency_records,
                   metric_value, metrics_counters, ok, pack, run_tenantqd)

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOOKING = ROOT / "systemd" / "ops" / "booking"

SEAT_SQL = """-- a seat is held once (unique constraint)
INSERT INTO tq_seat (tenant_id, seat, holder) VALUES (:tenant, :seat, :holder)
RETURNING seat, holder
"""
ECHO_SQL = """SELECT :s::text AS s, :i::bigint AS i, :f::float8 AS f, :b::boolean AS b,
       :n::text IS NULL AS n_is_null, :m::jsonb AS m, :a::jsonb AS a,
       ':not_a_param' AS lit, $q$ :nor_this $q$ AS dollar /* :nor :this */
"""
RAISE_SQL = """SELECT tq_refuse(:why)"""
DIV0_SQL = """SELECT 1 / :zero::int AS boom"""
TOUCH_SQL = "UPDATE tq_note SET body = body || '!' WHERE tenant_id = :tenant RETURNING id"
NOTE_SQL = """INSERT INTO tq_note (tenant_id, body) VALUES (:tenant, :body)
RETURNING id, body
"""


@pytest.fixture
def schema(db):
    with db.connect() as c:
        c.execute(BOOKING.joinpath("schema.sql").read_text())
        c.execute("CREATE TABLE IF NOT EXISTS tq_seat (tenant_id text, seat text, holder text,"
                  " CONSTRAINT tq_seat_once UNIQUE (tenant_id, seat))")
        c.execute("CREATE TABLE IF NOT EXISTS tq_note (id bigserial PRIMARY KEY,"
                  " tenant_id text NOT NULL, body text NOT NULL)")
        c.execute("CREATE OR REPLACE FUNCTION tq_refuse(why text) RETURNS int LANGUAGE plpgsql"
                  " AS $$ BEGIN RAISE EXCEPTION 'refused: %', why; END $$")
    yield db
    with db.connect() as c:
        c.execute("DROP TABLE IF EXISTS booking, tq_seat, tq_note")
        c.execute("DROP FUNCTION IF EXISTS tq_refuse(text)")


@pytest.fixture
def ops_dir(tmp_path):
    d = tmp_path / "ops"
    d.mkdir()
    for f in (BOOKING / "ops").glob("*.sql"):
        (d / f.name).write_text(f.read_text())
    (d / "seat.take.sql").write_text(SEAT_SQL)
    (d / "echo.sql").write_text(ECHO_SQL)
    (d / "refuse.sql").write_text(RAISE_SQL)
    (d / "div.zero.sql").write_text(DIV0_SQL)
    (d / "note.add.sql").write_text(NOTE_SQL)
    return d


def _add_op(d, ops_dir, name, sql):
    """A new op file NAME.sql, loaded by a reload of daemon d."""
    (ops_dir / (name + ".sql")).write_text(sql)
    os.kill(d.pid, signal.SIGHUP)
    time.sleep(0.5)


def _concurrently(n, fn):
    out = [None] * n
    go = threading.Barrier(n)

    def run(i):
        go.wait()
        out[i] = fn(i)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


def test_booking_race_over_two_daemons(daemon_factory, schema, ops_dir):
    """50 concurrent creates of one slot through two daemons, no unique
    constraint (check-then-insert): exactly one booking."""
    ds = [daemon_factory("--ops-dir", ops_dir) for _ in range(2)]
    slot = "2026-03-01T10:00:00Z"

    def create(i):
        with Client(ds[i % 2].endpoint, timeout_ms=30000) as c:
            return c.call("clinic", "booking.create", {"slot": slot, "customer": f"c{i}"})
    rs = _concurrently(50, create)
    oks = [r for r in rs if r["ok"]]
    rejected = [r for r in rs if not r["ok"] and r["error"]["code"] == "REJECTED"]
    assert len(oks) == 1, rs
    assert len(rejected) == 49, rs
    assert all("that slot is already booked" in r["error"]["message"] and
               r["error"]["retryable"] is False for r in rejected)
    row = oks[0]["result"]["rows"][0]
    assert oks[0]["result"]["count"] == 1 and isinstance(row["id"], int)
    with schema.connect() as c:
        assert c.execute("SELECT count(*) FROM booking WHERE tenant_id = 'clinic'").fetchone()[0] == 1
    # list and cancel through the other ops of the example
    with Client(ds[0].endpoint) as c:
        lst = ok(c.call("clinic", "booking.list", {"from": "2026-01-01T00:00:00Z",
                                                    "until": "2027-01-01T00:00:00Z"}))
        assert lst["count"] == 1 and lst["rows"][0]["id"] == row["id"]
        ok(c.call("clinic", "booking.cancel", {"id": row["id"]}))
        e = err(c.call("clinic", "booking.cancel", {"id": row["id"]}), "REJECTED")
        assert "no such booking" in e["message"]


def test_burst_under_a_unique_constraint(daemon_factory, schema, ops_dir):
    """60 requests of one tenant, 20 seats 3 times each: the first holder of
    each seat gets it, the 40 others are REJECTED naming the constraint, and
    nothing else is stored (a rejected request does not take its batch
    companions with it)."""
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1)
    res = {}
    lock = threading.Lock()

    def take(i):
        with Client(d.endpoint, timeout_ms=30000) as c:
            r = c.call("theatre", "seat.take", {"seat": f"s{i % 20}", "holder": f"h{i}"})
        with lock:
            res[i] = r
        return r
    _concurrently(60, take)
    oks = {i: r for i, r in res.items() if r["ok"]}
    rej = [r for r in res.values() if not r["ok"]]
    assert len(oks) == 20, res
    assert len(rej) == 40 and all(r["error"]["code"] == "REJECTED" and
                                   "tq_seat_once" in r["error"]["message"] for r in rej), rej
    with schema.connect() as c:
        stored = dict(c.execute("SELECT seat, holder FROM tq_seat WHERE tenant_id = 'theatre'")
                      .fetchall())
    assert len(stored) == 20
    for i, r in oks.items():
        assert stored[f"s{i % 20}"] == f"h{i}" == r["result"]["rows"][0]["holder"]


def test_parameters_and_value_mapping(daemon_factory, schema, ops_dir):
    d = daemon_factory("--ops-dir", ops_dir)
    hostile = "'); DROP TABLE tq_note; -- :body $1 \\ \" \u00e9\u4e16"
    args = {"s": hostile, "i": 2**63 - 1, "f": 0.1, "b": True, "n": None,
            "m": {"k": [1, 2, {"x": None}]}, "a": [1, "two"]}
    with Client(d.endpoint) as c:
        r = ok(c.call("t1", "echo", args))
        row = r["rows"][0]
        assert row["s"] == hostile
        assert row["i"] == 2**63 - 1 and isinstance(row["i"], int)
        assert row["f"] == 0.1 and row["b"] is True and row["n_is_null"] is True
        assert row["m"] == {"k": [1, 2, {"x": None}]} and row["a"] == [1, "two"]
        assert row["lit"] == ":not_a_param" and row["dollar"] == " :nor_this "
        assert r["count"] == 1
        # missing and extra arguments, before anything is queued
        e = err(c.call("t1", "echo", {k: v for k, v in args.items() if k != "f"}),
                "INVALID_ARGUMENT")
        assert "args.f" in e["message"]
        e = err(c.call("t1", "echo", dict(args, extra=1)), "INVALID_ARGUMENT")
        assert "args.extra" in e["message"]
        e = err(c.call("t1", "note.add", {"body": "x", "tenant": "other"}), "INVALID_ARGUMENT")
        assert "args.tenant" in e["message"]
        # stored verbatim
        r = ok(c.call("t1", "note.add", {"body": hostile}))
        assert r["rows"][0]["body"] == hostile
        assert err(c.call("t1", "no.such.op", {}), "UNKNOWN_OP")
    with schema.connect() as c:
        assert c.execute("SELECT body FROM tq_note").fetchall() == [(hostile,)]


def test_raise_and_sql_errors(daemon_factory, schema, ops_dir):
    d = daemon_factory("--ops-dir", ops_dir)
    with Client(d.endpoint) as c:
        e = err(c.call("t2", "refuse", {"why": "closed on sundays"}), "REJECTED",
                retryable=False)
        assert "refused: closed on sundays" in e["message"]
        e = err(c.call("t2", "div.zero", {"zero": 0}), "INTERNAL")
        assert "22012" in e["message"]
        # the tenant is served next
        ok(c.call("t2", "note.add", {"body": "after"}))
        assert ok(c.call("t2", "div.zero", {"zero": 1}))["rows"] == [{"boom": 1}]
    assert "22012" in d.log()


def test_keys_replay_rows_and_refuse_other_args(daemon_factory, schema, ops_dir):
    d = daemon_factory("--ops-dir", ops_dir)
    with Client(d.endpoint) as c:
        first = c.call("t3", "note.add", {"body": "once"}, key="k-1")
        ok(first)
        again = c.call("t3", "note.add", {"body": "once"}, key="k-1")
        assert again["ok"] and again.get("replayed") is True
        assert again["result"] == first["result"]
        err(c.call("t3", "note.add", {"body": "other"}, key="k-1"), "IDEMPOTENCY_KEY_REUSED")
    # the same key sent concurrently many times: one effect
    rs = _concurrently(20, lambda i: Client(d.endpoint).call("t3", "note.add", {"body": "dup"},
                                                              key="k-2"))
    assert all(r["ok"] for r in rs), rs
    assert len({r["result"]["rows"][0]["id"] for r in rs}) == 1
    with schema.connect() as c:
        assert c.execute("SELECT count(*) FROM tq_note WHERE body = 'once'").fetchone()[0] == 1
        assert c.execute("SELECT count(*) FROM tq_note WHERE body = 'dup'").fetchone()[0] == 1


def test_row_lock_held_by_sql_is_a_lock_timeout(daemon_factory, schema, ops_dir):
    d = daemon_factory("--ops-dir", ops_dir, "--lock-timeout-ms", 500)
    _add_op(d, ops_dir, "note.touch", TOUCH_SQL)
    with Client(d.endpoint) as c:
        ok(c.call("t4", "note.add", {"body": "b"}))
        with schema.connect(autocommit=False) as holder:
            holder.execute("SELECT * FROM tq_note WHERE tenant_id = 't4' FOR UPDATE")
            e = err(c.call("t4", "note.touch", {}), "LOCK_TIMEOUT", retryable=True)
            assert "row lock" in e["message"]
            # other tenants are not held up
            ok(c.call("t5", "note.add", {"body": "free"}))
            holder.rollback()
        ok(c.call("t4", "note.touch", {}))


@pytest.mark.parametrize("isolated", [False, True])
def test_session_ended_during_a_row_lock_wait_is_not_an_unknown_outcome(daemon_factory, schema,
                                                                          ops_dir, isolated):
    """Unkeyed requests of ops without reject_if_empty go out with their
    COMMIT in one pipeline.  When the server ends the session while a
    statement waits for a row lock (pg_terminate_backend: FATAL), nothing
    was committed and the daemon knows it: DB_UNAVAILABLE, retryable, not
    OUTCOME_UNKNOWN (which an unkeyed request could never resolve).  Plain:
    the request alone, without savepoints.  Isolated: a failing request
    before it made its batch run again with a savepoint per request, where
    a request's ordinary error does not abort the transaction but a FATAL
    still ends it."""
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--lock-timeout-ms", 5000)
    _add_op(d, ops_dir, "note.touch", TOUCH_SQL)
    t = "t9" + ("i" if isolated else "p")
    with Client(d.endpoint) as c:
        ok(c.call(t, "note.add", {"body": "b"}))
    with schema.connect(autocommit=False) as rows, schema.connect(autocommit=False) as lock, \
            TaggedRawReq(d.endpoint) as s:
        rows.execute("SELECT * FROM tq_note WHERE tenant_id = %s FOR UPDATE", (t,))
        rids = []
        if isolated:
            # the first waits for the lock alone, the next two queue behind
            # it as one batch
            lock.execute(LOCK, (t,))
            rids.append(s.send(pack(envelope(t, "note.add", {"body": "c"}))))
            time.sleep(0.3)
            rids.append(s.send(pack(envelope(t, "div.zero", {"zero": 0}))))
        rids.append(s.send(pack(envelope(t, "note.touch", {}))))
        if isolated:
            time.sleep(0.3)
            lock.rollback()
        assert schema.end_lock_waiters("UPDATE tq_note") == 1
        got, _ = s.recv_for(rids)
        rows.rollback()
    if isolated:
        ok(got[0])
    for r in got[-2 if isolated else -1:]:
        e = err(r, "DB_UNAVAILABLE", retryable=True)
        assert "not executed" in e["message"], e
    with schema.connect() as c:
        bodies = [r[0] for r in c.execute("SELECT body FROM tq_note WHERE tenant_id = %s"
                                          " ORDER BY id", (t,)).fetchall()]
    assert bodies == (["b", "c"] if isolated else ["b"]), bodies
    with Client(d.endpoint) as c:
        ok(c.call(t, "note.touch", {}))


def test_reload_good_and_bad(daemon_factory, schema, ops_dir):
    d = daemon_factory("--ops-dir", ops_dir)
    with Client(d.endpoint) as c:
        err(c.call("t6", "note.count", {}), "UNKNOWN_OP")
        (ops_dir / "note.count.sql").write_text(
            "SELECT count(*) AS n FROM tq_note WHERE tenant_id = :tenant")
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert ok(c.call("t6", "note.count", {}))["rows"] == [{"n": 0}]
        (ops_dir / "broken.sql").write_text("SELECT 'unterminated")
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert "broken.sql:1" in d.log()
        # the old set stays
        assert ok(c.call("t6", "note.count", {}))["rows"] == [{"n": 0}]


@pytest.mark.parametrize("name,text,expect", [
    ("bad.sql", "SELECT 1;\nSELECT 2", "bad.sql:2"),
    ("ping.sql", "SELECT 1", "ping"),
    ("two.sql", "-- reject_if_emtpy: typo\nSELECT 1", "two.sql:1"),
])
def test_start_refused_for_a_bad_file(tmp_path, db, name, text, expect):
    d = tmp_path / "ops"
    d.mkdir()
    (d / name).write_text(text)
    r = run_tenantqd("--ops-dir", str(d), "--check-config", "--database", db.conninfo)
    assert r.returncode == 2, r
    assert expect in r.stderr and "[ops] dir" in r.stderr, r.stderr
    r = run_tenantqd("--ops-dir", str(d), "--database", db.conninfo, "--listen",
                     f"ipc://{tmp_path}/x.sock", "--metrics-listen", "")
    assert r.returncode == 2 and expect in r.stderr, r.stderr


def test_prepared_statements_follow_the_text(daemon_factory, schema, ops_dir):
    """Statements are prepared on first use per connection: a Prepare that
    fails (the table does not exist yet) is forgotten, so the op works once
    the table exists; a reload that changes an op's text runs the new text."""
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1)
    _add_op(d, ops_dir, "late.add",
            "INSERT INTO tq_late (tenant_id, v) VALUES (:tenant, :v) RETURNING v")
    with Client(d.endpoint) as c:
        e = err(c.call("t7", "late.add", {"v": "1"}), "INTERNAL")
        assert "42P01" in e["message"]
        with schema.connect() as db:
            db.execute("CREATE TABLE tq_late (tenant_id text, v text)")
        try:
            assert ok(c.call("t7", "late.add", {"v": "2"}))["rows"] == [{"v": "2"}]
            (ops_dir / "late.add.sql").write_text(
                "INSERT INTO tq_late (tenant_id, v) VALUES (:tenant, :v || '!') RETURNING v")
            os.kill(d.pid, signal.SIGHUP)
            time.sleep(0.5)
            assert ok(c.call("t7", "late.add", {"v": "3"}))["rows"] == [{"v": "3!"}]
        finally:
            with schema.connect() as db:
                db.execute("DROP TABLE tq_late")


def test_requests_are_counted_by_op_name(daemon_factory, schema, ops_dir):
    """tenantq_requests_total counts SQL operations under their own names
    (answers from the shard and refusals at admission), never under a name a
    client made up, and the counts survive a reload."""
    port = free_tcp_port()
    d = daemon_factory("--ops-dir", ops_dir, "--metrics-listen", "127.0.0.1:%d" % port)
    slot = {"slot": "2026-05-01T09:00:00Z", "customer": "ada"}
    with Client(d.endpoint) as c:
        ok(c.call("metrics-t", "booking.create", slot))
        err(c.call("metrics-t", "booking.create", slot), "REJECTED")
        err(c.call("metrics-t", "booking.create", {"slot": slot["slot"]}), "INVALID_ARGUMENT")
        err(c.call("metrics-t", "no.such.op", {}), "UNKNOWN_OP")
        ok(c.call("metrics-t", "booking.list", {"from": "2026-01-01T00:00:00Z",
                                                 "until": "2027-01-01T00:00:00Z"}))
    m = metrics_counters(port)
    assert m.get('op="booking.create",code="OK"') == 1, m
    assert m.get('op="booking.create",code="REJECTED"') == 1, m
    assert m.get('op="booking.create",code="INVALID_ARGUMENT"') == 1, m
    assert m.get('op="booking.list",code="OK"') == 1, m
    assert m.get('op="invalid",code="UNKNOWN_OP"') == 1, m
    assert not any("no.such.op" in k for k in m), m
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    with Client(d.endpoint) as c:
        ok(c.call("metrics-t", "booking.list", {"from": "2026-01-01T00:00:00Z",
                                                 "until": "2027-01-01T00:00:00Z"}))
    m = metrics_counters(port)
    assert m.get('op="booking.list",code="OK"') == 2, m
    assert m.get('op="booking.create",code="OK"') == 1, m


LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s, 0))"


def _queued_behind_the_lock(db, d, tenant, n, send):
    """Hold tenant's advisory lock while n requests queue up in its lane,
    then release it; returns their responses (send(i) makes request i)."""
    res = [None] * n
    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK, (tenant,))

        def run(i):
            with Client(d.endpoint, timeout_ms=30000) as c:
                res[i] = send(c, i)
        ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        time.sleep(1.0)  # all of them admitted and queued behind the first
        holder.rollback()
    for t in ts:
        t.join(60)
    return res


@pytest.mark.parametrize("keyed", [False, True])
def test_rejections_roll_back_alone_in_one_transaction(daemon_factory, schema, ops_dir, keyed):
    """Each request of a batch runs in its own savepoint: 60 queued
    requests (20 seats 3 times each, a unique constraint) commit in the
    transaction that waited for the lock plus one more, not in one
    transaction per rejection; the 40 rejected ones leave no trace, not even
    their idempotency keys (a retry runs again), and the 20 that succeeded
    replay."""
    port = free_tcp_port()
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    before = metric_value(port, "tenantq_transactions_total")
    extra = (lambda i: {"key": "k%d" % i}) if keyed else (lambda i: {})
    res = _queued_behind_the_lock(schema, d, "theatre", 60, lambda c, i: c.call(
        "theatre", "seat.take", {"seat": "s%d" % (i % 20), "holder": "h%d" % i}, **extra(i)))
    oks = {i: r for i, r in enumerate(res) if r["ok"]}
    rej = [r for r in res if not r["ok"]]
    assert len(oks) == 20 and len(rej) == 40, res
    assert all(r["error"]["code"] == "REJECTED" and "tq_seat_once" in r["error"]["message"]
               for r in rej), rej
    txns = metric_value(port, "tenantq_transactions_total") - before
    assert txns <= 3, "%d transactions for one burst: rejections were not isolated" % txns
    with schema.connect() as c:
        stored = dict(c.execute("SELECT seat, holder FROM tq_seat WHERE tenant_id = 'theatre'")
                      .fetchall())
    assert len(stored) == 20
    for i, r in oks.items():
        assert stored["s%d" % (i % 20)] == "h%d" % i == r["result"]["rows"][0]["holder"]
    if keyed:
        recs = idempotency_records(schema, "theatre")
        assert sorted(k for _, k in recs) == sorted("k%d" % i for i in oks), recs
        with Client(d.endpoint) as c:
            i = next(iter(oks))
            again = c.call("theatre", "seat.take", {"seat": "s%d" % (i % 20),
                                                    "holder": "h%d" % i}, key="k%d" % i)
            assert again["ok"] and again.get("replayed") and again["result"] == oks[i]["result"]
            j = next(q for q in range(60) if q not in oks)
            retry = c.call("theatre", "seat.take", {"seat": "s%d" % (j % 20),
                                                    "holder": "h%d" % j}, key="k%d" % j)
            err(retry, "REJECTED")
            assert not retry.get("replayed")


def test_reject_if_empty_undone_alone(daemon_factory, schema, ops_dir):
    """reject_if_empty refuses a statement after it ran: it is rolled back to
    its savepoint and the requests after it run again in the same
    transaction.  30 queued creates of 10 slots: 10 bookings, 20 REJECTED,
    a handful of transactions."""
    port = free_tcp_port()
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    before = metric_value(port, "tenantq_transactions_total")
    res = _queued_behind_the_lock(schema, d, "clinic", 30, lambda c, i: c.call(
        "clinic", "booking.create",
        {"slot": "2026-04-01T%02d:00:00Z" % (i % 10), "customer": "c%d" % i}))
    oks = [r for r in res if r["ok"]]
    rej = [r for r in res if not r["ok"]]
    assert len(oks) == 10 and len(rej) == 20, res
    assert all(r["error"]["code"] == "REJECTED" and
               "that slot is already booked" in r["error"]["message"] for r in rej), rej
    txns = metric_value(port, "tenantq_transactions_total") - before
    assert txns <= 3, "%d transactions for one burst" % txns
    with schema.connect() as c:
        rows = c.execute("SELECT slot, customer FROM booking WHERE tenant_id = 'clinic'"
                         " ORDER BY slot").fetchall()
    assert len(rows) == 10 and len({r[0] for r in rows}) == 10
    assert sorted(r["result"]["rows"][0]["customer"] for r in oks) == sorted(r[1] for r in rows)


def test_a_replay_is_not_run_again_after_an_undo(daemon_factory, schema, ops_dir):
    """A keyed request that failed sends its batch round again with its keys
    looked up; there a retry of a committed seat.take is answered from its
    record.  When the refused create before it (reject_if_empty) is undone,
    the requests after it run again, but not the replay: it stays the
    stored answer (run again, the seat's unique constraint refused it)."""
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1)
    seat = {"seat": "V1", "holder": "h"}
    with Client(d.endpoint, timeout_ms=30000) as c:
        first = c.call("venue", "seat.take", seat, key="venue-seat")
        assert first["ok"], first
        taken = c.call("venue", "booking.create",
                       {"slot": "2026-06-01T10:00:00Z", "customer": "a"})
        assert taken["ok"], taken
    sends = [
        # alone on the only connection, waiting for the lock
        lambda c: c.call("venue", "booking.create",
                         {"slot": "2026-06-01T11:00:00Z", "customer": "b"}),
        # then these two queue as one batch
        lambda c: c.call("venue", "booking.create",
                         {"slot": "2026-06-01T10:00:00Z", "customer": "again"},
                         key="venue-again"),
        lambda c: c.call("venue", "seat.take", seat, key="venue-seat"),
    ]
    res = [None] * len(sends)

    def run(i):
        with Client(d.endpoint, timeout_ms=30000) as c:
            res[i] = sends[i](c)
    with schema.connect(autocommit=False) as holder:
        holder.execute(LOCK, ("venue",))
        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(sends))]
        for t in ts:
            t.start()
            time.sleep(0.3)
        time.sleep(0.5)
        holder.rollback()
    for t in ts:
        t.join(60)
    assert res[0]["ok"], res
    assert not res[1]["ok"] and res[1]["error"]["code"] == "REJECTED", res
    assert res[2]["ok"] and res[2].get("replayed") is True, res
    assert res[2]["result"] == first["result"]
    with schema.connect() as c:
        assert c.execute("SELECT holder FROM tq_seat WHERE tenant_id = 'venue'").fetchall() == [
            ("h",)]


# --- statement batches of several tenants in one transaction ---------------

GATE = "gate"


def _group_behind_a_gate(db, d, sends, hold=None, release_hold_after=None, gates=1):
    """Make requests of several tenants share one transaction: with `gates`
    connections, the advisory locks of as many gate tenants are held outside
    while a request of each waits for it on a connection; meanwhile the
    sends (each
    (tenant, fn(client) -> response), started in order 40 ms apart, so they
    queue in that order) queue up in their lanes.  When the gate opens, the
    connections take the ready lanes together.  hold: another tenant whose
    lock stays held outside until release_hold_after(responses) returns
    (called once the other sends have their answers).  Returns the
    responses and when each arrived (time.monotonic())."""
    res, at = [None] * len(sends), [None] * len(sends)
    gate_res = {}
    with db.connect(autocommit=False) as gate, db.connect(autocommit=False) as held:
        for g in range(gates):
            gate.execute(LOCK, (GATE + str(g),))
        if hold:
            held.execute(LOCK, (hold,))

        def run(i):
            with Client(d.endpoint, timeout_ms=30000) as c:
                res[i] = sends[i][1](c)
            at[i] = time.monotonic()

        def run_gate(g):
            with Client(d.endpoint, timeout_ms=30000) as c:
                gate_res[g] = c.call(GATE + str(g), "note.add", {"body": "gate"})
        tgs = [threading.Thread(target=run_gate, args=(g,)) for g in range(gates)]
        for tg in tgs:
            tg.start()
        time.sleep(0.3)  # the gates' requests hold every connection
        ts = []
        for i in range(len(sends)):
            ts.append(threading.Thread(target=run, args=(i,)))
            ts[-1].start()
            time.sleep(0.04)
        time.sleep(0.5)
        gate.rollback()
        if hold:
            others = [i for i, (t, _) in enumerate(sends) if t != hold]
            for i in others:
                ts[i].join(30)
            release_hold_after([res[i] for i in others])
            held.rollback()
        for t in ts:
            t.join(60)
        for tg in tgs:
            tg.join(60)
    assert len(gate_res) == gates and all(r["ok"] for r in gate_res.values()), gate_res
    return res, at


def _create(tenant, slot, customer, key=None):
    extra = {"key": key} if key else {}
    return (tenant, lambda c: c.call(tenant, "booking.create",
                                     {"slot": slot, "customer": customer}, **extra))


def _bookings(db, prefix):
    with db.connect() as c:
        return sorted(c.execute("SELECT tenant_id, slot, customer FROM booking WHERE "
                                "tenant_id LIKE %s ORDER BY 1, 2", (prefix + "%",)).fetchall())


@pytest.mark.parametrize("keyed", [False, True])
def test_statement_batches_of_many_tenants_share_a_transaction(daemon_factory, schema, ops_dir,
                                                                keyed):
    """20 tenants' bookings queued while the only connection is busy run in
    a few shared transactions, not one each.  The group runs without
    savepoints first; when a request fails it runs again with each request
    in its own savepoint: g5's second create of its slot
    (reject_if_empty: undone after it ran, the requests after it run again)
    and g7's second seat (a unique violation) are REJECTED alone, every
    other request commits exactly once.  Keyed, the two rejected ones are
    failures that may be repeats: their batches run again alone with their
    keys looked up, and still REJECTED; the others' records are stored."""
    port = free_tcp_port()
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    key = (lambda s: s) if keyed else (lambda s: None)
    sends = []
    for g in range(20):
        t = "g%d" % g
        sends.append(_create(t, "2026-05-01T10:00:00Z", "c%d" % g, key("%s-a" % t)))
        if g == 5:
            sends.append(_create(t, "2026-05-01T10:00:00Z", "again", key("%s-b" % t)))
        if g == 7:
            for n, holder in enumerate(("first", "second")):
                sends.append((t, lambda c, holder=holder, n=n: c.call(
                    "g7", "seat.take", {"seat": "A1", "holder": holder},
                    **({"key": "g7-seat-%d" % n} if keyed else {}))))
    txns0 = metric_value(port, "tenantq_transactions_total")
    tenants0 = metric_value(port, "tenantq_transaction_tenants_total")
    res, _ = _group_behind_a_gate(schema, d, sends)
    txns = metric_value(port, "tenantq_transactions_total") - txns0
    tenants = metric_value(port, "tenantq_transaction_tenants_total") - tenants0
    # the gate's own, the group(s) of 20 tenants (run first without
    # savepoints: a failure sends the group back, the failing tenant then
    # isolated), the keyed reruns alone
    assert txns <= (8 if keyed else 4), "%d transactions for 20 tenants (%d batches)" % (
        txns, tenants)
    assert metric_value(port, "tenantq_sql_isolated_reruns_total") >= 1
    assert tenants >= 20
    rejected = [(sends[i][0], r["error"]["message"]) for i, r in enumerate(res) if not r["ok"]]
    assert len(rejected) == 2, res
    assert rejected[0][0] == "g5" and "that slot is already booked" in rejected[0][1]
    assert rejected[1][0] == "g7" and "tq_seat_once" in rejected[1][1]
    assert _bookings(schema, "g") == sorted(
        ("g%d" % g, _ts("2026-05-01T10:00:00Z"), "c%d" % g) for g in range(20))
    with schema.connect() as c:
        assert c.execute("SELECT holder FROM tq_seat WHERE tenant_id = 'g7'").fetchall() == [
            ("first",)]
    if keyed:
        recs = idempotency_records(schema)
        want = {("g%d" % g, "g%d-a" % g) for g in range(20)} | {("g7", "g7-seat-0")}
        assert {tk for tk in recs if tk[0].startswith("g")} == want


def _ts(text):
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_busy_lock_in_a_group_holds_up_only_its_tenant(daemon_factory, schema, ops_dir):
    """A tenant whose lock is held elsewhere when its batch is in a group
    (a try-lock that fails) sends the group back: the others commit at once
    without it, it runs alone, waiting for its lock, and commits once the
    lock is free (on the other connection: alone, it waits on one)."""
    port = free_tcp_port()
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 2,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    busy0 = metric_value(port, "tenantq_lock_busy_total")
    sends = [_create("h%d" % i, "2026-06-01T09:00:00Z", "c%d" % i) for i in range(8)]
    sends.insert(3, _create("held", "2026-06-01T09:00:00Z", "patient"))
    released = {}

    def release(others):
        assert all(r and r["ok"] for r in others), others
        released["at"] = time.monotonic()
    res, at = _group_behind_a_gate(schema, d, sends, hold="held", release_hold_after=release,
                                   gates=2)
    assert all(r["ok"] for r in res), res
    assert at[3] >= released["at"]  # "held" answered only after its lock was free
    assert all(at[i] < released["at"] for i in range(len(sends)) if i != 3)
    assert metric_value(port, "tenantq_lock_busy_total") > busy0
    assert len(_bookings(schema, "h")) == 9


def test_keyed_repeats_in_a_group_replay(daemon_factory, schema, ops_dir):
    """Keyed requests that were done before fail when they run again
    (their slot is booked: by themselves), so their batch goes back to run
    alone with its keys looked up, and they replay.  r2 has a new booking
    before its repeat: that one is undone with the savepoint of its success
    and runs again once (not twice), and the tenants after r2, which ran
    after it, run again in the same transaction and commit once."""
    d = daemon_factory("--ops-dir", ops_dir, "--shards", 1, "--connections-per-shard", 1)
    with Client(d.endpoint) as c:
        first1 = ok(c.call("r1", "booking.create", {"slot": "2026-07-01T08:00:00Z",
                                                    "customer": "x"}, key="r1-k"))
        first2 = ok(c.call("r2", "booking.create", {"slot": "2026-07-01T09:00:00Z",
                                                    "customer": "y"}, key="r2-old"))
    sends = [_create("r0", "2026-07-01T08:00:00Z", "z", "r0-k"),
             _create("r1", "2026-07-01T08:00:00Z", "x", "r1-k"),
             _create("r2", "2026-07-01T10:00:00Z", "new", "r2-new"),
             _create("r2", "2026-07-01T09:00:00Z", "y", "r2-old"),
             _create("r3", "2026-07-01T08:00:00Z", "w", "r3-k"),
             _create("r4", "2026-07-01T08:00:00Z", "v", "r4-k")]
    res, _ = _group_behind_a_gate(schema, d, sends)
    assert all(r["ok"] for r in res), res
    assert res[1].get("replayed") is True and res[1]["result"] == first1
    assert res[3].get("replayed") is True and res[3]["result"] == first2
    assert not any(res[i].get("replayed") for i in (0, 2, 4, 5))
    assert _bookings(schema, "r") == sorted([
        ("r0", _ts("2026-07-01T08:00:00Z"), "z"), ("r1", _ts("2026-07-01T08:00:00Z"), "x"),
        ("r2", _ts("2026-07-01T09:00:00Z"), "y"), ("r2", _ts("2026-07-01T10:00:00Z"), "new"),
        ("r3", _ts("2026-07-01T08:00:00Z"), "w"), ("r4", _ts("2026-07-01T08:00:00Z"), "v")])
    recs = idempotency_records(schema)
    assert {k for t, k in recs if t.startswith("r")} == {
        "r0-k", "r1-k", "r2-new", "r2-old", "r3-k", "r4-k"}
