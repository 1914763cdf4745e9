"""Fault injection: two daemon instances and a direct SQL writer on the same
tenants, PostgreSQL restarted and stopped under load, requests refused by
deadline or queue limits (checked in the database: they never ran and bound
no key), and SIGTERM under load.  Tests named test_slow_* take over 20 s.

Every edit carries an idempotency key and a field "k" naming it, so the
database shows which edits ran and how often."""

import os
import signal
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from tqlib import (DB, Client, NNTimeout, RawReq, envelope, err, free_tcp_port, metric_value,
                   idempotency_records, init_db, join_threads, ok, pack, pg_restart,
                   send_until_ok, start_threads)

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def _up(tenant, key, sid=None, stype="item", **kw):
    section = {"type": stype, "k": key}
    if sid is not None:
        section["id"] = sid
    return pack(envelope(tenant, "section.upsert", {"page": "home", "section": section},
                         key=key, **kw))


def _check_tenant(row, acked_keys, tenant):
    """The tenant's draft holds each acknowledged key exactly once, nothing
    else, no duplicate id, and its version counts exactly these changes."""
    secs = [s for p in row["draft"]["pages"].values() for s in p["sections"]]
    ids = [s["id"] for s in secs]
    assert len(ids) == len(set(ids)), "%s: duplicate section ids %r" % (
        tenant, sorted(i for i in set(ids) if ids.count(i) > 1))
    ks = sorted(s["k"] for s in secs)
    assert ks == sorted(acked_keys), "%s: stored edits differ from acknowledged ones " \
        "(missing %r, extra %r)" % (tenant, sorted(set(acked_keys) - set(ks)),
                                    sorted(set(ks) - set(acked_keys)))
    assert row["version"] == len(secs), (tenant, row["version"], len(secs))


# --------------------------------------------------------------------------
# two instances and a direct writer

def _sql_append(conn, tenant, key):
    """One edit by a direct writer that follows the documented lock
    protocol: lock, read, append a section with the daemon's id rule
    (home-item-main, home-item-2, ... first free in the draft), write
    version+1, commit.  Returns (id, version)."""
    conn.execute(LOCK_SQL, (tenant,))
    r = conn.execute("SELECT draft, version FROM tenantq_storefront WHERE tenant = %s",
                     (tenant,)).fetchone()
    draft, version = (r[0], r[1]) if r else ({"pages": {}}, 0)
    used = {s["id"] for p in draft["pages"].values() for s in p["sections"]}
    sid = "home-item-main"
    n = 2
    while sid in used:
        sid = "home-item-%d" % n
        n += 1
    draft["pages"].setdefault("home", {"sections": []})["sections"].append(
        {"id": sid, "type": "item", "k": key})
    conn.execute("INSERT INTO tenantq_storefront (tenant, draft, version) VALUES (%s, %s, %s) "
                 "ON CONFLICT (tenant) DO UPDATE SET draft = EXCLUDED.draft, "
                 "version = EXCLUDED.version, updated_at = now()",
                 (tenant, Jsonb(draft), version + 1))
    conn.commit()
    return sid, version + 1


def test_two_daemons_and_direct_writer(daemon_factory, db):
    """6 clients over two instances and 2 direct SQL writers append to the
    same 3 tenants, all generating ids from the same rule: no duplicate id,
    no lost acknowledged edit, versions 1..n each given out once."""
    ports = [free_tcp_port(), free_tcp_port()]
    d1, d2 = (daemon_factory("--metrics-listen", "127.0.0.1:%d" % p) for p in ports)
    tenants = ["shared-%d" % i for i in range(3)]
    n_clients, n_sql, per = 6, 2, 30
    acked = {t: [] for t in tenants}  # tenant -> [(key, id, version)]
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients + n_sql)

    def worker(i):
        if i < n_clients:
            with Client((d1, d2)[i % 2].endpoint, timeout_ms=10000) as c:
                ok(c.call("warmup-%d" % i, "ping"))
                barrier.wait(30)
                for n in range(per):
                    t = tenants[(i + n) % len(tenants)]
                    key = "d%d-%d" % (i, n)
                    res = send_until_ok(c, _up(t, key), limit_s=30)["result"]
                    with lock:
                        acked[t].append((key, res["id"], res["version"]))
        else:
            with psycopg.connect(db.conninfo, autocommit=False) as conn:
                barrier.wait(30)
                for n in range(per):
                    t = tenants[(i + n) % len(tenants)]
                    key = "sql%d-%d" % (i, n)
                    sid, version = _sql_append(conn, t, key)
                    with lock:
                        acked[t].append((key, sid, version))

    join_threads(*start_threads(n_clients + n_sql, worker))

    for t in tenants:
        row = db.row(t)
        _check_tenant(row, [k for k, _, _ in acked[t]], t)
        assert sorted(v for _, _, v in acked[t]) == list(range(1, len(acked[t]) + 1)), t
        # each writer's reported id is where its edit landed
        by_key = {s["k"]: s["id"] for s in row["draft"]["pages"]["home"]["sections"]}
        for key, sid, _ in acked[t]:
            assert by_key[key] == sid, (t, key, sid, by_key[key])
    assert sum(len(a) for a in acked.values()) == (n_clients + n_sql) * per
    # each instance's cached drafts went stale under the other writers: the
    # one-round-trip guard caught that (nothing was written from a stale copy)
    assert sum(metric_value(p, "tenantq_draft_cache_stale_total") for p in ports) > 0
    d1.ping()
    d2.ping()


# --------------------------------------------------------------------------
# PostgreSQL restarted and stopped under load

OUTAGE_CODES = {"DB_UNAVAILABLE", "DEADLINE_EXCEEDED", "OUTCOME_UNKNOWN", "LOCK_TIMEOUT"}


def test_slow_pg_restart_and_10s_outage_under_load(daemon_factory, cluster, db):
    """~25 s.  6 clients edit 3 tenants without pause while PostgreSQL gets
    `pg_ctl restart -m fast` and later is stopped for 10 s.  The daemon
    must not crash, must answer every request with a success or a retryable
    error (never ok while the server is down), serve again by itself soon
    after the server is back (reconnect backoff is capped at 5 s, +-25 %
    jitter: 10 s is a generous bound), and lose nothing acknowledged."""
    init_db(cluster.conninfo)
    pgdb = DB(cluster.conninfo)
    d = daemon_factory("--default-deadline-ms", 1500, "--lock-timeout-ms", 1000,
                       "--shards", 2, conninfo=cluster.conninfo)
    tenants = ["o%d" % i for i in range(3)]
    n_clients = 6
    stop = threading.Event()
    replies = []  # (monotonic time of the reply, tenant, key, code or 'ok'/'replayed'/'timeout')
    acked = {t: [] for t in tenants}
    lock = threading.Lock()

    def worker(i):
        with Client(d.endpoint, timeout_ms=5000) as c:
            n = 0
            while not stop.is_set():
                t = tenants[i % len(tenants)]
                key = "o%d-%d" % (i, n)
                body = _up(t, key, sid=key)
                give_up = time.monotonic() + 40
                while True:  # one edit: the same bytes until ok
                    try:
                        r = c.raw(body)
                        what = ("replayed" if r.get("replayed") else "ok") if r["ok"] \
                            else r["error"]["code"]
                    except NNTimeout:
                        r, what = None, "timeout"
                    with lock:
                        replies.append((time.monotonic(), t, key, what))
                    if r is not None and r["ok"]:
                        break
                    if r is not None:
                        assert r["error"]["retryable"] is True, r
                    assert time.monotonic() < give_up, "edit %s never succeeded" % key
                    time.sleep(0.05)
                with lock:
                    acked[t].append(key)
                n += 1

    threads, errors = start_threads(n_clients, worker)
    try:
        time.sleep(1.0)
        pg_restart(cluster)
        time.sleep(2.0)
        t_stop0 = time.monotonic()
        cluster.stop()
        t_stopped = time.monotonic()
        time.sleep(10.0)
        assert d.proc.poll() is None, "tenantqd died during the outage\n" + d.tail()
        t_start = time.monotonic()
        cluster.start()
        t_started = time.monotonic()
        # service resumes by itself: a fresh edit succeeds within 10 s
        with Client(d.endpoint, timeout_ms=5000) as c:
            probe = _up("probe", "probe-1", sid="probe-1", deadline_ms=1000)
            while True:
                r = c.raw(probe)
                if r["ok"]:
                    break
                assert r["error"]["code"] in OUTAGE_CODES, r
                assert time.monotonic() - t_started < 10, \
                    "no success %.1fs after the server came back: %r" % (
                        time.monotonic() - t_started, r)
                time.sleep(0.1)
        resumed_after = time.monotonic() - t_started
        time.sleep(1.0)
    finally:
        stop.set()
        join_threads(threads, errors, timeout=60)

    codes = {}
    for _, _, _, what in replies:
        codes[what] = codes.get(what, 0) + 1
    print("replies: %r; resumed %.1fs after the server was back" % (codes, resumed_after))
    bad = [x for x in replies if x[3] not in OUTAGE_CODES | {"ok", "replayed"}]
    assert not bad, "replies other than success or a retryable error: %r" % bad[:10]
    # (0.5 s after pg_ctl stop returned: a reply to a commit just before the
    # stop may reach a client thread a little late)
    lied = [x for x in replies
            if x[3] in ("ok", "replayed") and t_stopped + 0.5 < x[0] < t_start]
    assert not lied, "ok while the server was down: %r" % lied[:10]
    down = [x for x in replies if t_stop0 < x[0] < t_start and x[3] in OUTAGE_CODES]
    assert down, "no request noticed the outage"
    after = [x for x in replies if x[0] > t_started and x[3] in ("ok", "replayed")]
    assert after, "the clients got no success after the server came back"
    assert d.proc.poll() is None, d.tail()
    d.ping()
    for t in tenants:
        _check_tenant(pgdb.row(t), acked[t], t)
    records = idempotency_records(pgdb)
    for t in tenants:
        for key in acked[t]:
            assert (t, key) in records, (t, key)


# --------------------------------------------------------------------------
# refused requests never run and bind no key

def test_deadline_behind_held_lock_never_runs(daemon_factory, db):
    """deadline_ms 200 queued behind a batch waiting 1 s for the tenant's
    lock: DEADLINE_EXCEEDED; after the release it has not run (no section,
    no key record, also not later), and its key is free: the same bytes
    sent again run fresh.  A request that is itself waiting for the lock
    when its deadline passes is refused the same way (retryable, nothing
    changed)."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    t = "late"
    first, hurried = _up(t, "first", sid="first"), _up(t, "hurried", sid="hurried",
                                                       deadline_ms=200)
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        s.send(first)
        time.sleep(0.1)
        s.send(hurried)
        time.sleep(1.0)
        holder.commit()
        replies = [s.recv() for _ in range(2)]
    good = [r for r in replies if r["ok"]]
    assert len(good) == 1 and good[0]["result"]["id"] == "first", replies
    err([r for r in replies if not r["ok"]][0], "DEADLINE_EXCEEDED", retryable=True)
    for _ in range(2):  # right after the release, and once more later
        assert db.sections(t, "home") == [{"id": "first", "type": "item", "k": "first"}]
        assert db.row(t)["version"] == 1
        assert set(idempotency_records(db)) == {(t, "first")}
        time.sleep(0.5)
    with Client(d.endpoint) as c:
        r = c.raw(hurried)
    assert ok(r) == {"id": "hurried", "page": "home", "index": 1, "created": True,
                     "version": 2} and not r.get("replayed"), r
    assert db.row(t)["version"] == 2

    # alone in the lane: the deadline bounds the lock wait itself
    t2 = "late-alone"
    with db.connect(autocommit=False) as holder, Client(d.endpoint) as c:
        holder.execute(LOCK_SQL, (t2,))
        r = c.raw(_up(t2, "alone", sid="alone", deadline_ms=200))
        time.sleep(0.8)
        holder.commit()
    # the deadline, not lock_timeout_ms (5000), is what ran out
    e = err(r, "DEADLINE_EXCEEDED", retryable=True)
    assert "advisory lock" in e["message"] and t2 in e["message"], e
    time.sleep(0.3)
    assert db.row(t2) is None
    assert (t2, "alone") not in idempotency_records(db)


def _refused_then_retried(d, db, t, keys, done_keys):
    """The keys not in done_keys got QUEUE_FULL: nothing of them is stored;
    sent again (same bytes), each runs fresh, once."""
    refused = [k for k in keys if k not in done_keys]
    assert [s["k"] for s in db.sections(t, "home")] == done_keys
    assert db.row(t)["version"] == len(done_keys)
    records = idempotency_records(db, t)
    assert sorted(k for _, k in records) == sorted(done_keys), records
    with Client(d.endpoint) as c:
        for n, k in enumerate(refused):
            r = c.raw(_up(t, k, sid=k))
            assert ok(r)["version"] == len(done_keys) + n + 1 and not r.get("replayed"), r
    assert [s["k"] for s in db.sections(t, "home")] == done_keys + refused
    assert db.row(t)["version"] == len(keys)
    assert len(idempotency_records(db, t)) == len(keys)


def test_queue_full_per_tenant_binds_no_key(daemon_factory, db):
    d = daemon_factory("--max-queue-per-tenant", 3, "--lock-timeout-ms", 5000)
    t = "crowded"
    keys = ["q%d" % n for n in range(10)]
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        for k in keys:
            s.send(_up(t, k, sid=k))
        time.sleep(0.3)
        holder.commit()
        replies = [s.recv() for _ in keys]
    done = [r["result"]["id"] for r in replies if r["ok"]]
    for r in replies:
        if not r["ok"]:
            e = err(r, "QUEUE_FULL", retryable=True)
            assert "max_queue_per_tenant" in e["message"] or "queue" in e["message"], e
    # as in test_queueing.test_queue_full: the batch waiting for the lock
    # (at most 3) and up to 3 queued behind it
    assert 3 <= len(done) <= 6, done
    time.sleep(0.3)
    _refused_then_retried(d, db, t, keys, sorted(done, key=keys.index))


def test_queue_full_max_pending_binds_no_key(daemon_factory, db):
    """--max-pending 5 with one tenant's lock held: of 8 requests exactly 5
    are admitted; the other 3, and a request for another tenant, get
    QUEUE_FULL and leave nothing behind."""
    d = daemon_factory("--max-pending", 5, "--max-queue-per-tenant", 5, "--lock-timeout-ms", 5000)
    t = "pending"
    keys = ["p%d" % n for n in range(8)]
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        for k in keys:
            s.send(_up(t, k, sid=k))
        time.sleep(0.3)
        s.send(_up("bystander", "b1", sid="b1"))
        # the refusals come at once, while the lock is still held
        early = [s.recv() for _ in range(4)]
        holder.commit()
        late = [s.recv() for _ in range(5)]
    for r in early:
        e = err(r, "QUEUE_FULL", retryable=True)
        assert "max_pending" in e["message"], e
    done = [ok(r)["id"] for r in late]
    assert done == keys[:5], done
    assert [r["result"]["version"] for r in late] == [1, 2, 3, 4, 5]
    assert db.row("bystander") is None
    assert ("bystander", "b1") not in idempotency_records(db)
    time.sleep(0.3)
    _refused_then_retried(d, db, t, keys, done)


# --------------------------------------------------------------------------
# SIGTERM under load

def test_sigterm_under_load(daemon_factory, db):
    """8 clients editing in a loop plus 5 edits queued behind a lock held
    0.5 s into the drain: SIGTERM makes the daemon answer every request
    (ok, or SHUTTING_DOWN for new ones), finish the queued edits, and exit 0
    within the grace period; what it refused is not in the database."""
    grace_ms = 3000
    d = daemon_factory("--shutdown-grace-ms", grace_ms, "--lock-timeout-ms", 5000)
    tenants = ["busy-%d" % i for i in range(4)]
    n_clients = 8
    log = {i: [] for i in range(n_clients)}  # (tenant, key, 'ok'/code/'NO REPLY')
    started = threading.Barrier(n_clients + 1)

    def worker(i):
        with Client(d.endpoint, timeout_ms=5000) as c:
            ok(c.call("warmup-%d" % i, "ping"))
            started.wait(30)
            for n in range(100000):
                t = tenants[i % len(tenants)]
                key = "s%d-%d" % (i, n)
                try:
                    r = c.raw(_up(t, key, sid=key))
                except NNTimeout:
                    log[i].append((t, key, "NO REPLY"))
                    return
                log[i].append((t, key, "ok" if r["ok"] else r["error"]["code"]))
                if not r["ok"]:
                    return  # SHUTTING_DOWN (checked below): the daemon is leaving

    held = "held"
    held_keys = ["h%d" % n for n in range(5)]
    held_replies = []
    threads, errors = start_threads(n_clients, worker)
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint, timeout_ms=8000) as s:
        holder.execute(LOCK_SQL, (held,))
        for k in held_keys:
            s.send(_up(held, k, sid=k))

        def read_held():  # read while the daemon drains (unread replies are dropped)
            for _ in held_keys:
                try:
                    held_replies.append(s.recv())
                except NNTimeout:
                    held_replies.append(None)

        reader = threading.Thread(target=read_held)
        reader.start()
        started.wait(30)
        time.sleep(1.0)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        holder.commit()
        try:
            rc = d.proc.wait(grace_ms / 1000 + 5)
        finally:
            took = time.monotonic() - t0
            reader.join(15)
            join_threads(threads, errors, timeout=15)
    assert rc == 0, d.tail()
    # the grace period bounds the drain; 2 s of slack for process teardown
    assert took < grace_ms / 1000 + 2, "exit took %.1fs with a %d ms grace" % (took, grace_ms)

    assert all(r is not None for r in held_replies), "queued edits got no reply"
    assert [ok(r)["id"] for r in held_replies] == held_keys
    records = idempotency_records(db)
    total_ok = 0
    acked = {t: [] for t in tenants}
    for i, entries in log.items():
        assert entries, "client %d sent nothing" % i
        outcomes = [e[2] for e in entries]
        assert "NO REPLY" not in outcomes, "client %d: a request got no reply: %r" % (
            i, entries[-3:])
        # oks, then exactly one SHUTTING_DOWN that ended the client's loop
        assert outcomes[-1] == "SHUTTING_DOWN" and set(outcomes[:-1]) <= {"ok"}, \
            (i, outcomes[-3:])
        t, key, _ = entries[-1]
        assert (t, key) not in records, "refused %s was stored" % key
        acked[t].extend(e[1] for e in entries[:-1])
        total_ok += len(entries) - 1
    assert total_ok > n_clients, "hardly any load before SIGTERM (%d edits)" % total_ok
    for t in tenants:
        _check_tenant(db.row(t), acked[t], t)
    _check_tenant(db.row(held), held_keys, held)


ACTIVITY_SQL = ("SELECT pid, wait_event_type, left(query, 80) FROM pg_stat_activity "
                "WHERE application_name = 'tenantqd'")


def test_cleanup_never_waits_for_locked_records(daemon_factory, db):
    """Expired idempotency records that another session holds locked are
    skipped, not waited for: the others are deleted, no daemon session waits
    on a lock, and SIGTERM still ends the daemon within its grace.  (The
    cleanup's DELETE once waited, without any timeout, on such a lock; a
    stop then never finished, whatever the grace or a second signal.)"""
    expired = ("INSERT INTO tenantq_idempotency (tenant, key, fingerprint, response, created_at) "
               "SELECT %s, 'k' || g, 'f', '{}', now() - interval '2 days' "
               "FROM generate_series(1, %s) g")
    with db.connect() as c:
        c.execute(expired, ("held", 10))
        c.execute(expired, ("free", 5))
    with db.connect(autocommit=False) as holder:
        holder.execute("SELECT * FROM tenantq_idempotency WHERE tenant = 'held' FOR UPDATE")
        d = daemon_factory("--shards", 1, "--shutdown-grace-ms", 1000)
        deadline = time.monotonic() + 15  # the first pass is due 5 s after start
        with db.connect() as a:
            while a.execute("SELECT count(*) FROM tenantq_idempotency "
                            "WHERE tenant = 'free'").fetchone()[0] > 0:
                assert time.monotonic() < deadline, a.execute(ACTIVITY_SQL).fetchall()
                time.sleep(0.2)
            assert a.execute("SELECT count(*) FROM tenantq_idempotency "
                             "WHERE tenant = 'held'").fetchone()[0] == 10
            waiting = [r for r in a.execute(ACTIVITY_SQL).fetchall() if r[1] == "Lock"]
            assert waiting == [], waiting
        t0 = time.monotonic()
        d.stop(timeout=5)
        assert time.monotonic() - t0 < 4, "stop took %.1f s" % (time.monotonic() - t0)


def test_commit_on_a_server_that_stopped_answering_is_bounded(daemon_factory, db):
    """The server stops answering while a COMMIT is out (its backend is
    frozen: as if the network were cut, so none of its own timeouts can
    fire).  The daemon gives up after lock_timeout_ms + statement_timeout_ms
    + 5 s, answers OUTCOME_UNKNOWN (the commit may or may not have happened),
    and a SIGTERM during that wait still ends it then, exit 0."""
    d = daemon_factory("--shards", 1, "--shutdown-grace-ms", 500, "--lock-timeout-ms", 1000,
                       "--statement-timeout-ms", 1000)
    t = "frozen"
    with Client(d.endpoint) as c:
        ok(c.call(t, "section.upsert", {"page": "home", "section": {"id": "a", "type": "x"}}))
    frozen = None
    try:
        with db.connect(autocommit=False) as holder, RawReq(d.endpoint, timeout_ms=20000) as s:
            # a plain row lock (not the advisory one): the daemon's write waits for it
            holder.execute("SELECT 1 FROM tenantq_storefront WHERE tenant = %s FOR UPDATE", (t,))
            s.send(pack(envelope(t, "section.upsert",
                                 {"page": "home", "section": {"id": "b", "type": "x"}}, key="b")))
            with db.connect() as a:
                for _ in range(50):
                    waiting = [r[0] for r in a.execute(ACTIVITY_SQL).fetchall() if r[1] == "Lock"]
                    if waiting:
                        break
                    time.sleep(0.1)
            assert len(waiting) == 1, waiting
            frozen = waiting[0]
            os.kill(frozen, signal.SIGSTOP)
            holder.rollback()
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            r = s.recv()
            rc = d.proc.wait(15)
            took = time.monotonic() - t0
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
    assert r["ok"] is False and r["error"]["code"] == "OUTCOME_UNKNOWN", r
    assert rc == 0, d.tail()
    assert took < 7 + 3, "exit took %.1f s (limit 1 + 1 + 5 s, grace 0.5 s)" % took
    assert "no answer from the server within 7000 ms" in d.log(), d.tail()
