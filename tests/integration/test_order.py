"""Per-tenant arrival order: a client's sequential edits apply in order, and
requests pipelined on one connection (many in flight, several tenants
interleaved, so the daemon may coalesce them) execute in the order sent."""

import threading

from tqlib import Client, RawReq, envelope, ok, pack


def test_sequential_edits_apply_in_order(daemon, db):
    t = "orderly"
    with Client(daemon.endpoint) as c:
        def up(page, section, **kw):
            return ok(c.call(t, "section.upsert", dict(page=page, section=section, **kw)))

        assert up("home", {"id": "a", "type": "hero"}) == \
            {"id": "a", "page": "home", "index": 0, "created": True, "version": 1}
        assert up("home", {"id": "b", "type": "text"}) == \
            {"id": "b", "page": "home", "index": 1, "created": True, "version": 2}
        assert up("home", {"id": "c", "type": "text"}) == \
            {"id": "c", "page": "home", "index": 2, "created": True, "version": 3}
        assert ok(c.call(t, "section.move", {"id": "c", "page": "home", "index": 0})) == \
            {"page": "home", "index": 0, "version": 4}          # c a b
        assert ok(c.call(t, "section.move", {"id": "a", "page": "about", "index": 0})) == \
            {"page": "about", "index": 0, "version": 5}         # c b | a
        assert up("home", {"type": "banner", "x": 1}, index=1) == \
            {"id": "b", "page": "home", "index": 1, "created": False, "version": 6}
        assert ok(c.call(t, "section.remove", {"id": "c"})) == \
            {"page": "home", "index": 0, "version": 7}          # b | a
        assert ok(c.call(t, "section.move", {"id": "b", "page": "about", "index": 1})) == \
            {"page": "about", "index": 1, "version": 8}         # | a b
        assert up("home", {"type": "hero"}) == \
            {"id": "home-hero-main", "page": "home", "index": 0, "created": True,
             "version": 9}
        got = ok(c.call(t, "draft.get"))

    want = {"pages": {
        "home": {"sections": [{"id": "home-hero-main", "type": "hero"}]},
        "about": {"sections": [{"id": "a", "type": "hero"},
                               {"id": "b", "type": "banner", "x": 1}]},
    }}
    assert got == {"draft": want, "version": 9}
    row = db.row(t)
    assert row["draft"] == want and row["version"] == 9


def test_pipelined_tenants_keep_arrival_order(daemon_factory, db):
    d = daemon_factory("--shards", 3)
    tenants = ["shop-%02d" % i for i in range(20)]
    edits = 25
    nthreads = 8
    got = {t: [] for t in tenants}
    lock = threading.Lock()
    errors = []

    def worker(w):
        mine = tenants[w::nthreads]
        try:
            with RawReq(d.endpoint) as s:
                sent = 0
                for k in range(edits):          # interleave this thread's tenants
                    for t in mine:
                        s.send(pack(envelope(t, "section.upsert", {
                            "page": "home",
                            "section": {"id": "%s-s%d" % (t, k), "type": "item", "k": k}})))
                        sent += 1
                replies = [s.recv() for _ in range(sent)]
            with lock:
                for r in replies:
                    res = ok(r)
                    t, k = res["id"].rsplit("-s", 1)
                    got[t].append((int(k), res))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads), "threads hung"
    if errors:
        raise errors[0]

    for t in tenants:
        assert len(got[t]) == edits, (t, len(got[t]))
        for k, res in got[t]:
            # sent k-th: executed k-th (version k+1, appended at index k)
            assert res == {"id": "%s-s%d" % (t, k), "page": "home", "index": k,
                           "created": True, "version": k + 1}, (t, k, res)
        row = db.row(t)
        assert row["version"] == edits
        assert row["draft"] == {"pages": {"home": {"sections": [
            {"id": "%s-s%d" % (t, k), "type": "item", "k": k} for k in range(edits)]}}}
