"""Values and stored data the daemon did not write itself: numeric and
string edge cases round-trip exactly (or are refused cleanly), odd tenant
names are just data, and a draft corrupted by a direct writer gets an error
reply for that tenant without harming the daemon or other tenants."""

import pytest

from tqlib import Client, err, ok

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def test_value_round_trip(daemon, db):
    values = {
        "i64max": 2 ** 63 - 1, "i64min": -2 ** 63, "zero": 0, "negzero": -0.0,
        "f": 0.1, "f15": 1e15, "tiny": 5e-324, "emoji": "\U0001F600 \u00e9 \u4e2d",
        "quote": "a\"b\\c\n\t/", "empty": "", "emptymap": {}, "emptylist": [],
        "bools": [True, False, None],
    }
    with Client(daemon.endpoint) as c:
        res = ok(c.call("vals", "section.upsert",
                        {"page": "home", "section": dict(values, type="hero")}))
        got = ok(c.call("vals", "draft.get"))["draft"]["pages"]["home"]["sections"][0]
    stored = db.sections("vals", "home")[0]
    assert res["id"] == "home-hero-main"
    for k, v in values.items():
        assert got[k] == v, (k, got[k], v)
        assert stored[k] == v, (k, stored[k], v)


@pytest.mark.parametrize("value", [1e19, 1e308, -1e300, 2.0 ** 70])
def test_large_float_round_trip(daemon, db, value):
    """Finite floats beyond the int64 range are valid section values (protocol).
    PostgreSQL's jsonb prints 1e19 as the integer 10000000000000000000, so
    the daemon must read such drafts back (or refuse the value up front):
    the tenant must stay usable either way."""
    t = "floats"
    with Client(daemon.endpoint) as c:
        r = c.call(t, "section.upsert",
                   {"page": "home", "section": {"type": "hero", "n": value}})
        if not r["ok"]:
            err(r, "INVALID_ARGUMENT", retryable=False)
            assert db.row(t) is None
        got = c.call(t, "draft.get")
        assert got["ok"], "tenant unreadable after storing %r: %r" % (value, got)
        if r["ok"]:
            assert got["result"]["draft"]["pages"]["home"]["sections"][0]["n"] == value
        r2 = c.call(t, "section.upsert", {"page": "home", "section": {"type": "text"}})
        assert r2["ok"], "tenant unusable after storing %r: %r" % (value, r2)


def test_uint64_beyond_int64(daemon, db):
    """2**64-1 does not fit JSON's usual int64: stored exactly or refused as
    INVALID_ARGUMENT, never INTERNAL."""
    with Client(daemon.endpoint) as c:
        r = c.call("u64", "section.upsert",
                   {"page": "home", "section": {"type": "hero", "n": 2 ** 64 - 1}})
        if r["ok"]:
            assert db.sections("u64", "home")[0]["n"] == 2 ** 64 - 1
        else:
            e = err(r, "INVALID_ARGUMENT", retryable=False)
            assert "n" in e["message"]
            assert db.row("u64") is None
        daemon.ping()


@pytest.mark.parametrize("tenant", [
    "o'hara\"; DROP TABLE tenantq_storefront; --", "caf\u00e9 \u4e2d\u6587", " spaced ",
    "tenantq:", "%s%n%x", "\\x00"])
def test_odd_tenant_names(daemon, db, tenant):
    with Client(daemon.endpoint) as c:
        r = ok(c.call(tenant, "section.upsert", {"page": "home", "section": {"type": "hero"}}))
        assert r["version"] == 1
        assert ok(c.call(tenant, "draft.get"))["version"] == 1
    assert db.row(tenant)["version"] == 1
    assert [row[0] for row in db.snapshot()] == [tenant]


@pytest.mark.parametrize("draft", [
    '{"pages": 5}', '[]', '"text"', '{"pages": {"home": {"sections": {"a": 1}}}}',
    '{"pages": {"home": {"sections": [5]}}}', '{"pages": {"home": []}}',
    '{"nopages": true}',
])
def test_corrupt_stored_draft(daemon, db, draft):
    """A direct writer stored something that is not a draft."""
    t = "corrupt"
    with db.connect(autocommit=False) as w:
        w.execute(LOCK_SQL, (t,))
        w.execute("INSERT INTO tenantq_storefront (tenant, draft, version) "
                  "VALUES (%s, %s::jsonb, 7)", (t, draft))
    before = db.snapshot()
    with Client(daemon.endpoint) as c:
        for o, a in (("section.upsert", {"page": "home", "section": {"type": "hero"}}),
                     ("section.remove", {"id": "a"}),
                     ("section.move", {"id": "a", "page": "home", "index": 0})):
            r = c.call(t, o, a)
            if r["ok"]:
                continue  # an implementation may repair what it can
            assert r["error"]["code"] != "INTERNAL" or "draft" in r["error"]["message"], r
        daemon.ping()
        # other tenants are served
        assert ok(c.call("healthy", "section.upsert",
                         {"page": "home", "section": {"type": "hero"}}))["version"] == 1
    row = db.row(t)
    if row["draft"] == before[0][1]:
        assert row["version"] == 7  # untouched
    else:
        assert row["version"] > 7   # rewritten as a proper change
        assert isinstance(row["draft"].get("pages"), dict)


def test_stored_section_without_id(daemon, db):
    """Sections a direct writer stored without an id (or with a non-string
    id) do not break id generation or duplicate checks."""
    t = "legacy"
    draft = '{"pages": {"home": {"sections": [{"type": "hero"}, {"id": 5, "type": "hero"}]}}}'
    with db.connect(autocommit=False) as w:
        w.execute(LOCK_SQL, (t,))
        w.execute("INSERT INTO tenantq_storefront (tenant, draft, version) "
                  "VALUES (%s, %s::jsonb, 1)", (t, draft))
    with Client(daemon.endpoint) as c:
        r = c.call(t, "section.upsert", {"page": "home", "section": {"type": "hero"}})
        if r["ok"]:
            assert r["result"]["id"] == "home-hero-main"
            assert r["result"]["index"] == 2 and r["result"]["version"] == 2
            secs = db.sections(t, "home")
            assert secs[:2] == [{"type": "hero"}, {"id": 5, "type": "hero"}]
        else:
            assert r["error"]["code"] != "INTERNAL" or "draft" in r["error"]["message"], r
        daemon.ping()
