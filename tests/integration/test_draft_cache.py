"""The draft cache (draft_cache_mb): a shard keeps the parsed state it last
committed or read and skips reading the row's JSON while the row is still
that version, (version, xmin).  Whatever writes the row behind the daemon's
back (a direct writer following the lock protocol, with or without
incrementing version, or deleting the row), the next edit must start from
the stored row, never from a stale cached copy."""

import pytest

from tqlib import Client, free_tcp_port, ok

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def _counter(port, name):
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


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
        hits = _counter(port, "tenantq_draft_cache_hits_total")
        if cache_mb:
            assert hits >= 2, hits   # the 2nd and 3rd edit found the state cached
        else:
            assert hits == 0, hits

        # a direct writer appends a section and does NOT increment version
        _direct(db, t, "UPDATE tenantq_storefront SET draft = jsonb_insert(draft, "
                       "'{pages,home,sections,-1}', '{\"id\":\"direct-1\",\"type\":\"x\"}', "
                       "true) WHERE tenant = %s", t)
        r = _upsert(c, t, "s3")
        assert r["version"] == 4 and r["index"] == 4, r
        ids = [s["id"] for s in db.sections(t, "home")]
        assert ids == ["s0", "s1", "s2", "direct-1", "s3"], ids

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

        # a batch that failed validation leaves the state as stored
        bad = c.call(t, "section.upsert", {"page": "home", "section": {"id": "fresh",
                                                                       "type": "y"},
                                           "index": 5})
        assert not bad["ok"], bad
        assert _upsert(c, t, "after")["version"] == 2
        assert [s["id"] for s in db.sections(t, "home")] == ["fresh", "after"]
    # existing rows read: without the cache all 7; with it at least the two
    # changed behind the daemon's back
    misses = _counter(port, "tenantq_draft_cache_misses_total")
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
        cached = _counter(port, "tenantq_draft_cache_bytes")
    assert 0 < cached <= 1024 * 1024, cached
    for i in (0, 99, 199):
        assert [s["id"] for s in db.sections("cache-budget-%d" % i, "home")] == ["s0", "s1"]
