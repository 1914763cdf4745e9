"""Several tenants' batches in one transaction (max_batch_tenants).

With one shard and one connection, a blocker tenant whose advisory lock is
held by a direct SQL session occupies the connection while the test queues
edits of other tenants; when the blocker's lock is released, the queued
lanes outnumber the idle connections and run together.  A trigger logs every
write of tenantq_storefront with the writing transaction's id, so the tests
see which edits shared a transaction, and what each tenant ends up with is
read from the database."""

import time

import pytest

from tqlib import TaggedRawReq, envelope, err, free_tcp_port, ok, pack

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"
BLOCKER = "grp-blocker"


def _edit(tenant, sid=None, **extra):
    section = {"type": "x"}
    if sid:
        section["id"] = sid
    return pack(envelope(tenant, "section.upsert", {"page": "home", "section": section},
                         **extra))


def _after_blocker(log):
    """The writes logged after the blocker's."""
    return log[[t for t, _, _ in log].index(BLOCKER) + 1:]


def _one_connection(daemon_factory, *flags):
    return daemon_factory("--shards", 1, "--connections-per-shard", 1,
                          "--lock-timeout-ms", 10000, "--default-deadline-ms", 30000, *flags)


class Behind:
    """Queue requests behind the blocker: on entering, the blocker's edit
    holds the daemon's only connection (its lock is held by SQL); send()
    queues more; release() lets the blocker (and then the queue) run."""

    def __init__(self, d, db):
        self.d, self.db = d, db

    def __enter__(self):
        self.holder = self.db.connect(autocommit=False)
        self.holder.execute(LOCK_SQL, (BLOCKER,))
        self.sock = TaggedRawReq(self.d.endpoint, timeout_ms=20000)
        self.blocker_rid = self.sock.send(_edit(BLOCKER))
        time.sleep(0.3)   # the blocker's batch has the connection and waits
        return self

    def send(self, body):
        return self.sock.send(body)

    def release(self):
        time.sleep(0.3)   # everything sent is queued
        self.holder.commit()
        self.holder.close()
        self.holder = None

    def __exit__(self, *exc):
        if self.holder:
            self.holder.close()
        self.sock.close()


@pytest.mark.parametrize("tenants_per_txn", [1, 16])
def test_queued_lanes_share_one_transaction(daemon_factory, db, write_log, tenants_per_txn):
    """Ten tenants with one edit each, one with three edits (a batch of its
    own inside the shared transaction), one read and one validation failure:
    the same replies as alone, and with max_batch_tenants 16 every write is
    in ONE transaction; with 1, each tenant's write is in its own."""
    d = _one_connection(daemon_factory, "--max-batch-tenants", tenants_per_txn)
    ones = ["grp-one-%d" % i for i in range(10)]
    three, reader, dup = "grp-three", "grp-reader", "grp-dup"
    with TaggedRawReq(d.endpoint) as s:
        pre = [s.send(_edit(reader, "r1")), s.send(_edit(dup, "taken"))]
        for r in s.recv_for(pre)[0]:
            ok(r)
    with Behind(d, db) as q:
        rids = [q.send(_edit(t)) for t in ones]
        rids += [q.send(_edit(three, "s%d" % k)) for k in range(3)]
        rids.append(q.send(pack(envelope(reader, "draft.get"))))
        rids.append(q.send(_edit(dup, "taken-2")))
        rids.append(q.send(pack(envelope(dup, "section.upsert",
                                         {"page": "about",
                                          "section": {"id": "taken", "type": "x"}}))))
        q.release()
        replies, _ = q.sock.recv_for([q.blocker_rid] + rids)
    assert ok(replies[0])["version"] == 1
    replies = replies[1:]
    for r in replies[:10]:
        assert ok(r) == {"id": "home-x-main", "page": "home", "index": 0, "created": True,
                         "version": 1}, r
        assert r["timing"]["batch"] == 1
    for k, r in enumerate(replies[10:13]):
        assert ok(r)["version"] == k + 1 and ok(r)["id"] == "s%d" % k, r
        assert r["timing"]["batch"] == 3
    assert [s["id"] for s in ok(replies[13])["draft"]["pages"]["home"]["sections"]] == ["r1"]
    assert ok(replies[14])["version"] == 2
    err(replies[15], "DUPLICATE_SECTION_ID", retryable=False)
    assert [s["id"] for s in db.sections(dup, "home")] == ["taken", "taken-2"]
    assert db.row(dup)["version"] == 2

    log = _after_blocker(write_log())
    written = sorted(t for t, _, _ in log)
    assert written == sorted(ones + [three, dup]), log
    xids = {x for _, _, x in log}
    if tenants_per_txn == 1:
        assert len(xids) == 12, log
    else:
        assert len(xids) == 1, log
    assert db.row(three)["version"] == 3


def test_locked_tenant_does_not_hold_up_its_group(daemon_factory, db, write_log):
    """A tenant locked by a direct writer is queued with eight others: its
    try-lock fails, the eight commit together at once, and it runs again
    alone, waiting for its lock, and succeeds when the writer is done."""
    port = free_tcp_port()
    d = _one_connection(daemon_factory, "--metrics-listen", "127.0.0.1:%d" % port)
    locked = "grp-locked"
    others = ["grp-free-%d" % i for i in range(8)]
    with db.connect(autocommit=False) as writer:
        writer.execute(LOCK_SQL, (locked,))
        with Behind(d, db) as q:
            lrid = q.send(_edit(locked))
            rids = [q.send(_edit(t)) for t in others]
            q.release()
            t0 = time.monotonic()
            replies, _ = q.sock.recv_for([q.blocker_rid] + rids)
            others_s = time.monotonic() - t0
            for r in replies:
                assert ok(r)["version"] == 1, r
            # the locked tenant is still waiting, alone on the connection
            assert db.row(locked) is None
            time.sleep(0.5)
            assert db.row(locked) is None
            writer.commit()
            [lr], _ = q.sock.recv_for([lrid])
    assert others_s < 2.0, others_s   # not the 10 s lock wait
    assert ok(lr)["version"] == 1, lr
    log = _after_blocker(write_log())
    xid_of = {t: x for t, _, x in log}
    assert len({xid_of[t] for t in others}) == 1, log
    assert xid_of[locked] not in {xid_of[t] for t in others}, log
    text = metrics_text(port)
    assert "\ntenantq_lock_busy_total 1\n" in text, text


def metrics_text(port):
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def test_failing_tenant_reruns_alone(daemon_factory, db, write_log):
    """One tenant's write fails inside a shared transaction (a trigger
    refuses it): nothing of the transaction is kept, every tenant runs again
    alone, the five others succeed and only the failing one hears the
    error."""
    d = _one_connection(daemon_factory)
    bad = "grp-bad"
    good = ["grp-good-%d" % i for i in range(5)]
    with db.connect() as c:
        c.execute("CREATE FUNCTION tq_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
                  "BEGIN IF NEW.tenant = 'grp-bad' THEN RAISE EXCEPTION 'refused for test'; "
                  "END IF; RETURN NEW; END $$")
        c.execute("CREATE TRIGGER tq_test_refuse BEFORE INSERT OR UPDATE ON tenantq_storefront "
                  "FOR EACH ROW EXECUTE FUNCTION tq_test_refuse()")
    try:
        with Behind(d, db) as q:
            rids = [q.send(_edit(t)) for t in good[:2]]
            rids.append(q.send(_edit(bad)))
            rids += [q.send(_edit(t)) for t in good[2:]]
            q.release()
            replies, _ = q.sock.recv_for([q.blocker_rid] + rids)
    finally:
        with db.connect() as c:
            c.execute("DROP TRIGGER IF EXISTS tq_test_refuse ON tenantq_storefront")
            c.execute("DROP FUNCTION IF EXISTS tq_test_refuse()")
    replies = replies[1:]
    bad_reply = replies.pop(2)
    e = err(bad_reply, "INTERNAL", retryable=False)
    assert bad in e["message"] and "refused for test" in e["message"], e
    for r in replies:
        assert ok(r)["version"] == 1, r
    assert db.row(bad) is None
    for t in good:
        assert db.row(t)["version"] == 1
    log = _after_blocker(write_log())
    # the shared attempt left nothing; each good tenant committed alone
    assert sorted(t for t, _, _ in log) == sorted(good), log
    assert len({x for _, _, x in log}) == 5, log
    d.ping()


def test_repeated_key_inside_a_group_replays(daemon_factory, db, write_log):
    """A keyed edit that already committed is sent again and queued with two
    other tenants' edits: the shared transaction fails on the key's record,
    the repeat then runs with its key looked up and is answered from the
    record (replayed, no second effect); the others succeed."""
    d = _one_connection(daemon_factory)
    t, b, c = "grp-key-a", "grp-key-b", "grp-key-c"
    body = _edit(t, key="k-1")
    with TaggedRawReq(d.endpoint) as s:
        [first], _ = s.recv_for([s.send(body)])
    first = ok(first)
    with Behind(d, db) as q:
        rids = [q.send(_edit(b)), q.send(body), q.send(_edit(c))]
        q.release()
        replies, _ = q.sock.recv_for([q.blocker_rid] + rids)
    assert ok(replies[1])["version"] == 1 and ok(replies[3])["version"] == 1, replies
    rep = replies[2]
    assert rep.get("replayed") is True and ok(rep) == first, rep
    assert db.row(t)["version"] == 1
    assert [s["id"] for s in db.sections(t, "home")] == ["home-x-main"]
    assert db.row(b)["version"] == 1 and db.row(c)["version"] == 1
    log = [(tn, v) for tn, v, _ in _after_blocker(write_log())]
    assert sorted(log) == sorted([(b, 1), (c, 1)]), log
