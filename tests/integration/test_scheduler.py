"""Scheduling and transaction-shape regressions found by a hostile review:
a ping must not wait behind other tenants' work for a free connection, and
a serializable (or repeatable-read) database default must not break edits
that waited for the tenant's lock."""

import threading
import time

from tqlib import Client, err, ok

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"
EDIT = {"page": "home", "section": {"type": "hero"}}


def test_ping_does_not_wait_for_a_connection(daemon_factory, db):
    """One shard, one connection, busy with an edit waiting for a lock held
    elsewhere, and another tenant's edit queued for the connection: pings of
    a third tenant still pass through at once (they need no database)."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1,
                       "--lock-timeout-ms", 4000)
    results = {}

    def edit(tenant):
        with Client(d.endpoint, timeout_ms=15000) as c:
            results[tenant] = c.call(tenant, "section.upsert", EDIT)

    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK_SQL, ("held",))
        threads = [threading.Thread(target=edit, args=(t,)) for t in ("held", "queued")]
        threads[0].start()
        time.sleep(0.3)  # the held tenant's edit now owns the only connection
        threads[1].start()
        time.sleep(0.3)  # and the queued tenant's lane is ready, waiting for it
        with Client(d.endpoint, timeout_ms=2000) as c:
            for i in range(5):
                t0 = time.monotonic()
                r = ok(c.call(f"pinger-{i}", "ping"))
                assert r == {"pong": True}
                assert time.monotonic() - t0 < 1.0
        assert not results, "the edits must still be waiting for the lock"
        holder.commit()
    for t in threads:
        t.join(20)
    ok(results["held"])
    ok(results["queued"])


def test_serializable_database_default_does_not_break_edits(daemon_factory, db):
    """With default_transaction_isolation = serializable, an edit that waited
    for the lock while a direct writer changed the row used to fail with
    40001 (reported as DB_UNAVAILABLE).  tenantqd begins READ COMMITTED."""
    with db.connect() as c:
        dbname = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_isolation = serializable')
    try:
        d = daemon_factory("--shards", 1, "--connections-per-shard", 1,
                           "--lock-timeout-ms", 5000, "--draft-cache-mb", 0)
        tenant = "serial-shop"
        with Client(d.endpoint) as c:
            ok(c.call(tenant, "section.upsert", EDIT))
        for round_ in range(3):
            box = {}

            def edit():
                with Client(d.endpoint, timeout_ms=15000) as c:
                    box["r"] = c.call(tenant, "section.upsert",
                                      {"page": "home", "section": {"type": "text"}})

            with db.connect(autocommit=False) as w:
                w.execute(LOCK_SQL, (tenant,))
                th = threading.Thread(target=edit)
                th.start()
                time.sleep(0.4)  # the daemon's transaction has begun and waits for the lock
                w.execute("UPDATE tenantq_storefront SET version = version + 1, "
                          "draft = jsonb_set(draft, '{direct}', to_jsonb(%s::int)) "
                          "WHERE tenant = %s", (round_, tenant))
                w.commit()
            th.join(20)
            r = ok(box["r"])
            row = db.row(tenant)
            assert row["version"] == r["version"]
            assert row["draft"]["direct"] == round_
    finally:
        with db.connect() as c:
            c.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_isolation')
