"""A direct writer holding the tenant's advisory lock (the default key
SQL) makes the daemon give up with LOCK_TIMEOUT after lock_timeout_ms,
changing nothing; once the lock is released the same edit goes through."""

import threading
import time

from tqlib import Client, err, ok

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"
EDIT = {"page": "home", "section": {"id": "home-hero-main", "type": "hero"}}


def _expect_lock_timeout(c, tenant, args):
    t0 = time.monotonic()
    r = c.call(tenant, "section.upsert", args)
    elapsed = time.monotonic() - t0
    e = err(r, "LOCK_TIMEOUT", retryable=True)
    assert tenant in e["message"], e
    assert "held elsewhere" in e["message"], e
    # it waited for the lock (300 ms), and not for much longer
    assert 0.25 <= elapsed < 5, elapsed


def test_lock_timeout_then_success(daemon_factory, db):
    d = daemon_factory("--lock-timeout-ms", 300)
    tenant = "locked-shop"
    with Client(d.endpoint) as c:
        # first: a tenant without a row
        with db.connect(autocommit=False) as holder:
            holder.execute(LOCK_SQL, (tenant,))
            _expect_lock_timeout(c, tenant, EDIT)
            assert db.row(tenant) is None
            holder.commit()
        r = ok(c.call(tenant, "section.upsert", EDIT))
        assert r["id"] == "home-hero-main" and r["version"] == 1

        # then: an existing row keeps its version and content
        before = db.row(tenant)
        with db.connect(autocommit=False) as holder:
            holder.execute(LOCK_SQL, (tenant,))
            _expect_lock_timeout(c, tenant, {"page": "home", "section": {"type": "text"}})
            assert db.row(tenant) == before
            holder.rollback()
        r = ok(c.call(tenant, "section.upsert", {"page": "home", "section": {"type": "text"}}))
        assert r == {"id": "home-text-main", "page": "home", "index": 1,
                     "created": True, "version": 2}
        assert db.row(tenant)["version"] == 2
    d.ping()


def test_lock_released_while_waiting(daemon_factory, db):
    """A lock released before lock_timeout_ms: the edit waits, then commits."""
    d = daemon_factory("--lock-timeout-ms", 3000)
    tenant = "briefly-locked"
    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK_SQL, (tenant,))
        timer = threading.Timer(0.4, holder.commit)
        timer.start()
        try:
            t0 = time.monotonic()
            with Client(d.endpoint) as c:
                r = ok(c.call(tenant, "section.upsert", EDIT))
            assert time.monotonic() - t0 >= 0.3
        finally:
            timer.join()
    assert r["version"] == 1
    assert db.sections(tenant, "home") == [{"id": "home-hero-main", "type": "hero"}]


def test_waiting_tenant_does_not_block_its_shard(daemon_factory, db):
    """One shard with two connections: while one tenant waits for a lock held
    elsewhere, another tenant's edit on the same shard still runs at once."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 2,
                       "--lock-timeout-ms", 2000)
    slow, fast = "slow-shop", "fast-shop"
    result = {}
    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK_SQL, (slow,))

        def waiter():
            with Client(d.endpoint) as c:
                result["slow"] = c.call(slow, "section.upsert", EDIT)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)  # let the slow tenant's transaction start waiting
        with Client(d.endpoint) as c:
            t0 = time.monotonic()
            r = ok(c.call(fast, "section.upsert", EDIT))
            took = time.monotonic() - t0
        holder.commit()
        t.join(10)
    assert r["version"] == 1
    assert took < 1.0, "other tenant waited %.2fs behind a lock wait" % took
    assert ok(result["slow"])["version"] == 1
