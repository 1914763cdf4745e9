"""Queueing behaviour made deterministic by a direct writer that holds the
tenant's advisory lock: coalesced batches with failing members, QUEUE_FULL,
DEADLINE_EXCEEDED, SHUTTING_DOWN while draining, and idempotency keys."""

import signal
import time

from tqlib import Client, RawReq, call, envelope, err, ok, pack

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def _up(t, sid, page="home", **kw):
    return pack(envelope(t, "section.upsert",
                         {"page": page, "section": {"id": sid, "type": "x"}}, **kw))


def test_coalesced_batch_with_failures(daemon_factory, db):
    """Requests queued behind a lock wait run together; a failing member
    fails alone, the others commit with consecutive versions, in order."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    t = "batchy"
    bodies = [
        _up(t, "a"),
        _up(t, "b"),
        _up(t, "a"),                                            # duplicate
        pack(envelope(t, "section.remove", {"id": "ghost"})),   # not found
        _up(t, "c"),
        pack(envelope(t, "section.move", {"id": "a", "page": "home", "index": 9})),
        pack(envelope(t, "section.move", {"id": "a", "page": "home", "index": 2})),
        _up(t, "d"),
    ]
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        for b in bodies:
            s.send(b)
        time.sleep(0.3)  # all of them queued behind the lock wait
        holder.commit()
        replies = [s.recv() for _ in bodies]

    oks = {}
    errs = []
    for r in replies:
        if r["ok"]:
            res = r["result"]
            oks[res.get("id", "move")] = res
        else:
            errs.append(r["error"])
    assert sorted(e["code"] for e in errs) == sorted(
        ["DUPLICATE_SECTION_ID", "NOT_FOUND", "INVALID_ARGUMENT"]), errs
    assert oks["a"]["version"] == 1 and oks["b"]["version"] == 2
    assert oks["c"] == {"id": "c", "page": "home", "index": 2, "created": True, "version": 3}
    assert oks["move"] == {"page": "home", "index": 2, "version": 4}
    assert oks["d"] == {"id": "d", "page": "home", "index": 3, "created": True, "version": 5}
    assert [s_["id"] for s_ in db.sections(t, "home")] == ["b", "c", "a", "d"]
    assert db.row(t)["version"] == 5


def test_queue_full(daemon_factory, db):
    d = daemon_factory("--max-queue-per-tenant", 3, "--lock-timeout-ms", 5000)
    t = "crowded"
    n = 10
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        for k in range(n):
            s.send(_up(t, "s%d" % k))
        time.sleep(0.3)
        # another tenant is unaffected by this tenant's full lane
        assert ok(call(d.endpoint, "other", "section.upsert",
                       {"page": "home", "section": {"type": "x"}}))["version"] == 1
        holder.commit()
        replies = [s.recv() for _ in range(n)]
    done = sorted((int(r["result"]["id"][1:]), r["result"]["version"])
                  for r in replies if r["ok"])
    full = [r for r in replies if not r["ok"]]
    for r in full:
        err(r, "QUEUE_FULL", retryable=True)
    # The limit counts waiting requests, not the batch already executing:
    # one batch (at most 3) waits for the lock, and 3 more may queue behind.
    assert full, "no QUEUE_FULL with 10 requests and max_queue_per_tenant 3"
    assert 3 <= len(done) <= 6, done
    # the accepted ones ran in arrival order; the rejected ones changed nothing
    assert [v for _, v in done] == list(range(1, len(done) + 1)), done
    assert [x["id"] for x in db.sections(t, "home")] == ["s%d" % k for k, _ in done]
    assert db.row(t)["version"] == len(done)


def test_deadline_exceeded_while_queued(daemon_factory, db):
    d = daemon_factory("--lock-timeout-ms", 5000)
    t = "late"
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        s.send(_up(t, "first"))
        time.sleep(0.1)
        s.send(_up(t, "hurried", deadline_ms=200))
        time.sleep(0.8)
        holder.commit()
        replies = [s.recv() for _ in range(2)]
    good = [r for r in replies if r["ok"]]
    bad = [r for r in replies if not r["ok"]]
    assert len(good) == 1 and good[0]["result"]["id"] == "first", replies
    assert len(bad) == 1, replies
    err(bad[0], "DEADLINE_EXCEEDED", retryable=True)
    assert db.sections(t, "home") == [{"id": "first", "type": "x"}]
    assert db.row(t)["version"] == 1


def test_drain_on_sigterm(daemon_factory, db):
    """SIGTERM: new requests get SHUTTING_DOWN, queued ones still finish,
    then exit 0 (the fixture checks the exit)."""
    d = daemon_factory("--lock-timeout-ms", 5000, "--shutdown-grace-ms", 5000)
    t = "draining"
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (t,))
        for k in range(3):
            s.send(_up(t, "s%d" % k))
        time.sleep(0.3)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert d.proc.poll() is None, "exited with work queued\n" + d.tail()
        r = call(d.endpoint, "newcomer", "section.upsert",
                 {"page": "home", "section": {"type": "x"}}, timeout_ms=3000)
        err(r, "SHUTTING_DOWN", retryable=True)
        holder.commit()
        replies = [s.recv() for _ in range(3)]
    for r in replies:
        ok(r)
    assert d.proc.wait(15) == 0, d.tail()
    assert db.row(t)["version"] == 3
    assert db.row("newcomer") is None


def test_idempotency_key(daemon, db):
    t = "idem"
    args = {"page": "home", "section": {"type": "hero"}}
    with Client(daemon.endpoint) as c:
        r1 = c.call(t, "section.upsert", args, key="req-1")
        res = ok(r1)
        assert res["version"] == 1 and not r1.get("replayed")
        r2 = c.call(t, "section.upsert", args, key="req-1")
        assert ok(r2) == res and r2.get("replayed") is True, r2
        assert db.row(t)["version"] == 1
        # same key, different args: refused, nothing changes
        r3 = c.call(t, "section.upsert", {"page": "about", "section": {"type": "hero"}},
                    key="req-1")
        err(r3, "IDEMPOTENCY_KEY_REUSED", retryable=False)
        assert db.row(t)["version"] == 1
        # keys are per tenant; a new key is a new edit
        assert ok(c.call("idem-2", "section.upsert", args, key="req-1"))["version"] == 1
        r4 = ok(c.call(t, "section.upsert", args, key="req-2"))
        assert r4["id"] == "home-hero-2" and r4["version"] == 2
    assert len(db.sections(t, "home")) == 2
