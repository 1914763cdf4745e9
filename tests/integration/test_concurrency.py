"""The seed's race (duplicate section ids from a read-validate-write TOCTOU)
must be impossible, also across two daemon instances on one database, and
concurrent edits must neither be lost nor share a version."""

import threading

from tqlib import Client, err, ok, run_threads

TENANT = "acme"


def test_seed_race_same_explicit_id_two_daemons(daemon_factory, db):
    d1 = daemon_factory()
    d2 = daemon_factory()
    endpoints = [d1.endpoint, d2.endpoint]
    n = 40
    sid = "home-hero-x"
    barrier = threading.Barrier(n)
    responses = [None] * n

    def worker(i):
        with Client(endpoints[i % 2]) as c:
            ok(c.call("warmup-%d" % i, "ping"))  # connected before the barrier
            barrier.wait(30)
            responses[i] = c.call(TENANT, "section.upsert", {
                "page": "home",
                "section": {"id": sid, "type": "hero", "worker": i}})

    run_threads(n, worker)

    winners = [i for i, r in enumerate(responses) if r["ok"]]
    assert len(winners) == 1, "expected exactly one ok, got %d: %r" % (
        len(winners), [responses[i] for i in winners])
    w = winners[0]
    res = responses[w]["result"]
    assert res["id"] == sid and res["page"] == "home" and res["index"] == 0
    assert res["created"] is True and res["version"] == 1
    for i, r in enumerate(responses):
        if i == w:
            continue
        e = err(r, "DUPLICATE_SECTION_ID", retryable=False)
        assert ('section id "%s" already exists on page "home" at index 0' % sid
                in e["message"]), e

    row = db.row(TENANT)
    assert row["version"] == 1
    secs = row["draft"]["pages"]["home"]["sections"]
    assert secs == [{"id": sid, "type": "hero", "worker": w}]
    ids = [s["id"] for p in row["draft"]["pages"].values() for s in p["sections"]]
    assert ids.count(sid) == 1


def test_concurrent_appends_two_daemons(daemon_factory, db):
    d1 = daemon_factory()
    d2 = daemon_factory()
    endpoints = [d1.endpoint, d2.endpoint]
    threads, per = 20, 10
    results = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def worker(t):
        with Client(endpoints[t % 2]) as c:
            ok(c.call("warmup-%d" % t, "ping"))
            barrier.wait(30)
            for k in range(per):
                r = c.call(TENANT, "section.upsert", {
                    "page": "list", "section": {"type": "item", "t": t, "k": k}})
                results[t].append(ok(r))

    run_threads(threads, worker)

    flat = [r for rs in results for r in rs]
    assert len(flat) == threads * per
    ids = [r["id"] for r in flat]
    versions = [r["version"] for r in flat]
    assert len(set(ids)) == threads * per, "generated ids not distinct"
    assert sorted(versions) == list(range(1, threads * per + 1))
    for rs in results:  # one client's edits take effect in its order
        vs = [r["version"] for r in rs]
        assert vs == sorted(vs), vs
    for r in flat:
        assert r["page"] == "list" and r["created"] is True
        # appends only: a section's index is the number of sections before it
        assert r["index"] == r["version"] - 1, r
    assert set(ids) == {"list-item-main"} | {"list-item-%d" % i
                                              for i in range(2, threads * per + 1)}

    row = db.row(TENANT)
    assert row["version"] == threads * per
    secs = row["draft"]["pages"]["list"]["sections"]
    assert len(secs) == threads * per
    by_version = sorted(flat, key=lambda r: r["version"])
    assert [s["id"] for s in secs] == [r["id"] for r in by_version]
    for t, rs in enumerate(results):
        for k, r in enumerate(rs):
            assert secs[r["index"]] == {"id": r["id"], "type": "item", "t": t, "k": k}
