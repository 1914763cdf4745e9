"""The draft cache (draft_cache_mb): a shard keeps the parsed state it last
committed or read and skips reading the row's JSON while the row is still
that version, (version, xmin).  Whatever writes the row behind the daemon's
back (a direct writer following the lock protocol, with or without
incrementing version, or deleting the row), the next edit must start from
the stored row, never from a stale cached copy."""

import time

import pytest

from tqlib import Client, RawReq, envelope, free_tcp_port, metric_value, ok, pack

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def _upsert(c, tenant, sid):
    return ok(c.call(tenant, "section.upsert",
                     {"page": "home", "section": {"id": sid, "type": "x"}}))


def _direct(db, tenant, sql, *params):
    """Run sql as a direct writer: the tenant's advisory lock, then sql."""
    with db.connect(autocommit=False) as c:
        c.execute(LOCK_SQL, (tenant,))
        c.execute(sql, params)
        c.commit()


@pytest.mark.parametrize("cache_mb", [0, 32])
def test_writes_behind_the_daemon_are_seen(daemon_factory, db, cache_mb):
    port = free_tcp_port()
    d = daemon_factory("--draft-cache-mb", cache_mb, "--metrics-listen", "127.0.0.1:%d" % port)
    t = "cache-behind"
    with Client(d.endpoint) as c:
        for k in range(3):
            assert _upsert(c, t, "s%d" % k)["version"] == k + 1
        hits = metric_value(port, "tenantq_draft_cache_hits_total")
        one_trip = metric_value(port, "tenantq_transactions_one_round_trip_total")
        if cache_mb:
            assert hits >= 2, hits   # the 2nd and 3rd edit found the state cached
            assert one_trip >= 2, one_trip  # ... and went in one round trip
        else:
            assert hits == 0, hits
            assert one_trip == 0, one_trip
        assert metric_value(port, "tenantq_draft_cache_stale_total") == 0

        # a direct writer appends a section and does NOT increment version
        _direct(db, t, "UPDATE tenantq_storefront SET draft = jsonb_insert(draft, "
                       "'{pages,home,sections,-1}', '{\"id\":\"direct-1\",\"type\":\"x\"}', "
                       "true) WHERE tenant = %s", t)
        r = _upsert(c, t, "s3")
        assert r["version"] == 4 and r["index"] == 4, r
        ids = [s["id"] for s in db.sections(t, "home")]
        assert ids == ["s0", "s1", "s2", "direct-1", "s3"], ids
        # the one-round-trip guard saw the row move and nothing was written
        # from the stale copy; the edit ran again from the row
        assert metric_value(port, "tenantq_draft_cache_stale_total") == (1 if cache_mb else 0)

        # ... and one that does increment it
        _direct(db, t, "UPDATE tenantq_storefront SET version = version + 1, draft = "
                       "jsonb_set(draft, '{pages,home,sections,0,type}', '\"changed\"') "
                       "WHERE tenant = %s", t)
        got = ok(c.call(t, "draft.get"))
        assert got["version"] == 5
        assert got["draft"]["pages"]["home"]["sections"][0]["type"] == "changed"
        r = _upsert(c, t, "s4")
        assert r["version"] == 6, r
        secs = db.sections(t, "home")
        assert [s["id"] for s in secs] == ["s0", "s1", "s2", "direct-1", "s3", "s4"]
        assert secs[0]["type"] == "changed"

        # the row deleted: the tenant starts again from the empty state
        _direct(db, t, "DELETE FROM tenantq_storefront WHERE tenant = %s", t)
        r = _upsert(c, t, "fresh")
        assert r["version"] == 1 and r["index"] == 0, r
        assert [s["id"] for s in db.sections(t, "home")] == ["fresh"]
        assert metric_value(port, "tenantq_draft_cache_stale_total") == (2 if cache_mb else 0)

        # a batch that failed validation leaves the state as stored
        bad = c.call(t, "section.upsert", {"page": "home", "section": {"id": "fresh",
                                                                       "type": "y"},
                                           "index": 5})
        assert not bad["ok"], bad
        assert _upsert(c, t, "after")["version"] == 2
        assert [s["id"] for s in db.sections(t, "home")] == ["fresh", "after"]
    # existing rows read: without the cache all 7; with it at least the two
    # changed behind the daemon's back
    misses = metric_value(port, "tenantq_draft_cache_misses_total")
    assert misses == 7 if cache_mb == 0 else misses >= 2, misses


def test_cache_stays_within_its_budget(daemon_factory, db):
    """1 MiB over 1 shard: 200 tenants with ~8 KB drafts do not fit; the
    reckoned bytes stay under the budget and every tenant's state is right."""
    port = free_tcp_port()
    d = daemon_factory("--shards", 1, "--draft-cache-mb", 1,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    text = "x" * 1000
    with Client(d.endpoint) as c:
        for rnd in range(2):
            for i in range(200):
                r = ok(c.call("cache-budget-%d" % i, "section.upsert",
                              {"page": "home", "section": {"id": "s%d" % rnd, "type": "t",
                                                           "body": text}}))
                assert r["version"] == rnd + 1, r
        cached = metric_value(port, "tenantq_draft_cache_bytes")
    assert 0 < cached <= 1024 * 1024, cached
    for i in (0, 99, 199):
        assert [s["id"] for s in db.sections("cache-budget-%d" % i, "home")] == ["s0", "s1"]


def _edit(tenant, sid, key):
    return pack(envelope(tenant, "section.upsert",
                         {"page": "home", "section": {"id": sid, "type": "x"}}, key=key))


def test_shared_one_round_trip_never_writes_without_the_lock(daemon_factory, db):
    """Three cached tenants' edits share one transaction sent in one round
    trip (one shard, one connection, so they queue behind a fourth tenant's
    lock wait).  One of them has its advisory lock held by a direct writer:
    its try-lock must stop the whole pipeline before anything is written, so
    its row stays untouched while the lock is held; it then runs alone once
    the lock is free, and the other two are committed as well."""
    port = free_tcp_port()
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1, "--lock-timeout-ms", 5000,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    locked, others, gate = "ort-locked", ["ort-b", "ort-c"], "ort-gate"
    with Client(d.endpoint) as c:
        for t in [locked] + others:
            assert _upsert(c, t, "first")["version"] == 1
    before = db.row(locked)
    with db.connect(autocommit=False) as hold_gate, \
            db.connect(autocommit=False) as hold_locked, RawReq(d.endpoint) as s:
        hold_gate.execute(LOCK_SQL, (gate,))
        hold_locked.execute(LOCK_SQL, (locked,))
        s.send(_edit(gate, "g", "g1"))       # the connection now waits for this lock
        time.sleep(0.3)
        for t in [locked] + others:          # queued: three ready lanes, no idle connection
            s.send(_edit(t, "second", t + "-2"))
        time.sleep(0.2)
        hold_gate.commit()                   # the three go out together
        time.sleep(0.5)
        assert db.row(locked) == before, "written while its advisory lock was held elsewhere"
        busy = metric_value(port, "tenantq_lock_busy_total")
        assert busy >= 1, busy
        hold_locked.commit()
        replies = [s.recv() for _ in range(4)]
    assert all(r["ok"] for r in replies), replies
    assert sorted(r["result"]["version"] for r in replies) == [1, 2, 2, 2], replies
    for t in [locked] + others:
        assert [x["id"] for x in db.sections(t, "home")] == ["first", "second"], t
        assert db.row(t)["version"] == 2
    assert metric_value(port, "tenantq_transactions_one_round_trip_total") >= 1


def _seeded(d, db, tenant):
    """Give tenant its first section through d (so d has its state cached);
    returns the row."""
    with Client(d.endpoint) as c:
        assert _upsert(c, tenant, "first")["version"] == 1
    return db.row(tenant)


def test_shutdown_waits_for_a_one_round_trip_transaction(daemon_factory, db):
    """A transaction sent whole (cached state) cannot be withdrawn: when the
    shutdown grace ends while it waits for a lock held elsewhere, the daemon
    waits for it (bounded by lock_timeout_ms), answers it LOCK_TIMEOUT and
    exits 0; nothing of it is ever stored."""
    import signal
    d = daemon_factory("--shards", 1, "--lock-timeout-ms", 2000, "--shutdown-grace-ms", 300)
    t = "ort-stop"
    before = _seeded(d, db, t)
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint, timeout_ms=8000) as s:
        holder.execute(LOCK_SQL, (t,))
        s.send(_edit(t, "second", "stop-2"))
        time.sleep(0.3)  # sent, waiting for the lock
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        r = s.recv()
        rc = d.proc.wait(10)
        took = time.monotonic() - t0
        holder.commit()
    assert rc == 0, d.tail()
    assert r["ok"] is False and r["error"]["code"] == "LOCK_TIMEOUT", r
    assert 1.2 < took < 4.5, "exit took %.1fs (lock_timeout 2 s, grace 0.3 s)" % took
    time.sleep(0.3)
    assert db.row(t) == before


def test_one_round_trip_of_32_tenants_fits_one_pipeline(daemon_factory, db):
    """max_batch_tenants at its limit (32): 32 cached tenants' keyed edits
    (lock, guard, key records and write each, 131 statements in all) go out
    in one round trip and all commit.  The pipeline once had room for only
    128 statements, and all 32 got a false DB_UNAVAILABLE."""
    port = free_tcp_port()
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1, "--max-batch-tenants", 32,
                       "--metrics-listen", "127.0.0.1:%d" % port)
    tenants, gate = ["ort32-%02d" % i for i in range(32)], "ort32-gate"
    with Client(d.endpoint) as c:
        for t in tenants:
            assert _upsert(c, t, "first")["version"] == 1
    one_trip = metric_value(port, "tenantq_transactions_one_round_trip_total")
    with db.connect(autocommit=False) as hold_gate, RawReq(d.endpoint) as s:
        hold_gate.execute(LOCK_SQL, (gate,))
        s.send(_edit(gate, "g", "g1"))       # the only connection waits for this lock
        time.sleep(0.3)
        for t in tenants:                    # 32 ready lanes behind it
            s.send(_edit(t, "second", t + "-2"))
        time.sleep(0.3)
        hold_gate.commit()
        replies = [s.recv() for _ in range(33)]
    assert [r for r in replies if not r["ok"]] == [], replies
    for t in tenants:
        assert [x["id"] for x in db.sections(t, "home")] == ["first", "second"], t
    assert metric_value(port, "tenantq_transactions_one_round_trip_total") == one_trip + 1


@pytest.mark.parametrize("cache_mb", [0, 32])
def test_lock_wait_ended_by_the_server_is_not_outcome_unknown(daemon_factory, db, cache_mb):
    """The server ends the daemon's session while its transaction waits for
    a lock (pg_terminate_backend, as in a fast shutdown): the transaction
    failed before COMMIT, so the reply is DB_UNAVAILABLE (nothing changed,
    safe to retry), not OUTCOME_UNKNOWN; with the state cached the lock
    statement shares a pipeline with COMMIT, and once said the latter."""
    d = daemon_factory("--shards", 1, "--draft-cache-mb", cache_mb, "--lock-timeout-ms", 10000)
    t = "ort-terminated"
    before = _seeded(d, db, t)
    with db.connect(autocommit=False) as holder, RawReq(d.endpoint, timeout_ms=8000) as s:
        holder.execute(LOCK_SQL, (t,))
        s.send(pack(envelope(t, "section.upsert",
                             {"page": "home", "section": {"id": "second", "type": "x"}})))
        assert db.end_lock_waiters() > 0, "the daemon's transaction never waited for the lock"
        r = s.recv()
        holder.commit()
    assert r["ok"] is False and r["error"]["code"] == "DB_UNAVAILABLE", r
    assert r["error"]["retryable"] is True, r
    assert db.row(t) == before
    with Client(d.endpoint) as c:  # and the daemon is back in business
        assert _upsert(c, t, "third")["version"] == 2
