"""Operations end to end (proto/PROTOCOL.md "Operations"): results, generated ids, the
stored JSON after each change, publish/discard, preserved unknown fields,
and the version counter."""

from tqlib import Client, ok

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def test_upsert_generated_ids_remove_replace(daemon, db):
    t = "shop"
    with Client(daemon.endpoint) as c:
        def up(args):
            return ok(c.call(t, "section.upsert", args))

        # a tenant without a row reads as an empty draft, and stays without one
        assert ok(c.call(t, "draft.get")) == {"draft": {"pages": {}}, "version": 0}
        assert ok(c.call(t, "ping")) == {"pong": True}
        assert db.row(t) is None

        assert up({"page": "home", "section": {"type": "hero"}}) == \
            {"id": "home-hero-main", "page": "home", "index": 0, "created": True, "version": 1}
        assert db.row(t) == {"draft": {"pages": {"home": {"sections": [
            {"id": "home-hero-main", "type": "hero"}]}}}, "published": None, "version": 1}
        assert up({"page": "home", "section": {"type": "hero"}})["id"] == "home-hero-2"
        assert up({"page": "home", "section": {"type": "hero"}, "index": 2})["id"] == "home-hero-3"
        # ids are unique across pages: the first free one in the whole draft
        assert up({"page": "about", "section": {"type": "text"}})["id"] == "about-text-main"
        r = ok(c.call(t, "section.remove", {"id": "home-hero-main"}))
        assert r == {"page": "home", "index": 0, "version": 5}
        assert [s["id"] for s in db.sections(t, "home")] == ["home-hero-2", "home-hero-3"]
        # -main is free again
        assert up({"page": "home", "section": {"type": "hero"}}) == \
            {"id": "home-hero-main", "page": "home", "index": 2, "created": True, "version": 6}

        # replace without id keeps the old id and drops the old fields
        assert up({"page": "home", "index": 0,
                   "section": {"type": "banner", "headline": "Sale"}}) == \
            {"id": "home-hero-2", "page": "home", "index": 0, "created": False, "version": 7}
        assert db.sections(t, "home")[0] == {"id": "home-hero-2", "type": "banner",
                                             "headline": "Sale"}
        # replace with an explicit id (free, or the section's own) takes it
        assert up({"page": "home", "index": 0, "section": {"id": "promo", "type": "banner"}}) == \
            {"id": "promo", "page": "home", "index": 0, "created": False, "version": 8}
        assert up({"page": "home", "index": 0, "section": {"id": "promo", "type": "hero"}}) == \
            {"id": "promo", "page": "home", "index": 0, "created": False, "version": 9}
        # a generated id skips explicit ids that look generated
        assert up({"page": "blog", "section": {"id": "blog-post-main", "type": "text"}})["id"] == \
            "blog-post-main"
        assert up({"page": "blog", "section": {"type": "post"}})["id"] == "blog-post-2"

        row = db.row(t)
        assert row["version"] == 11
        assert row["draft"] == {"pages": {
            "home": {"sections": [{"id": "promo", "type": "hero"},
                                  {"id": "home-hero-3", "type": "hero"},
                                  {"id": "home-hero-main", "type": "hero"}]},
            "about": {"sections": [{"id": "about-text-main", "type": "text"}]},
            "blog": {"sections": [{"id": "blog-post-main", "type": "text"},
                                  {"id": "blog-post-2", "type": "post"}]},
        }}
        assert ok(c.call(t, "draft.get")) == {"draft": row["draft"], "version": 11}


def test_move(daemon, db):
    t = "mover"
    with Client(daemon.endpoint) as c:
        for sid in "abc":
            ok(c.call(t, "section.upsert", {"page": "home", "section": {"id": sid, "type": "x"}}))
        assert ok(c.call(t, "section.move", {"id": "a", "page": "home", "index": 2})) == \
            {"page": "home", "index": 2, "version": 4}
        assert [s["id"] for s in db.sections(t, "home")] == ["b", "c", "a"]
        # to a page that does not exist yet
        assert ok(c.call(t, "section.move", {"id": "c", "page": "new", "index": 0})) == \
            {"page": "new", "index": 0, "version": 5}
        assert [s["id"] for s in db.sections(t, "home")] == ["b", "a"]
        assert db.sections(t, "new") == [{"id": "c", "type": "x"}]
        # forward within its page
        r = ok(c.call(t, "section.move", {"id": "a", "page": "home", "index": 0}))
        assert r == {"page": "home", "index": 0, "version": 6}
        assert [s["id"] for s in db.sections(t, "home")] == ["a", "b"]
        assert db.row(t)["version"] == 6


def test_publish_and_discard(daemon, db):
    t = "pub"
    with Client(daemon.endpoint) as c:
        ok(c.call(t, "section.upsert", {"page": "home", "section": {"type": "hero", "h": "v1"}}))
        r = ok(c.call(t, "draft.publish"))
        assert r == {"version": 2}
        row = db.row(t)
        assert row["version"] == 2
        assert row["published"] == row["draft"] == {"pages": {"home": {"sections": [
            {"id": "home-hero-main", "type": "hero", "h": "v1"}]}}}
        published = row["published"]

        ok(c.call(t, "section.upsert", {"page": "home", "index": 0,
                                        "section": {"type": "hero", "h": "v2"}}))
        ok(c.call(t, "section.upsert", {"page": "faq", "section": {"type": "text"}}))
        row = db.row(t)
        assert row["published"] == published and row["draft"] != published
        assert row["version"] == 4

        assert ok(c.call(t, "draft.discard")) == {"version": 5}
        row = db.row(t)
        assert row["draft"] == published and row["published"] == published
        assert row["version"] == 5
        assert ok(c.call(t, "draft.get")) == {"draft": published, "version": 5}

        # discard without anything published: the empty draft
        t2 = "never-published"
        ok(c.call(t2, "section.upsert", {"page": "home", "section": {"type": "hero"}}))
        assert ok(c.call(t2, "draft.discard")) == {"version": 2}
        row = db.row(t2)
        assert row["draft"] == {"pages": {}} and row["published"] is None
        assert row["version"] == 2


def test_unknown_fields_preserved(daemon, db):
    t = "rich"
    extra = {"nested": {"list": [1, 2.5, True, None, "s", {"k": []}]},
             "x-custom": "y", "big": 2 ** 53, "neg": -7, "unicode": "caf\u00e9 \u2603"}
    section = dict(extra, type="hero")
    with Client(daemon.endpoint) as c:
        r = ok(c.call(t, "section.upsert", {"page": "home", "section": section}))
        assert r["id"] == "home-hero-main"
        assert db.sections(t, "home") == [dict(section, id="home-hero-main")]

        # a direct writer (taking the same lock) adds fields the daemon does
        # not know at every level; later edits must keep them
        with db.connect(autocommit=False) as w:
            w.execute(LOCK_SQL, (t,))
            w.execute("""UPDATE tenantq_storefront
                         SET draft = jsonb_set(jsonb_set(draft, '{theme}', '"dark"'),
                                               '{pages,home,title}', '"Home"')
                         WHERE tenant = %s""", (t,))
        v = db.row(t)["version"]
        r = ok(c.call(t, "section.upsert", {"page": "home", "section": {"type": "text"}}))
        assert r["index"] == 1
        draft = db.row(t)["draft"]
        assert draft["theme"] == "dark"
        assert draft["pages"]["home"]["title"] == "Home"
        assert draft["pages"]["home"]["sections"][0] == dict(section, id="home-hero-main")
        assert db.row(t)["version"] == v + 1
        got = ok(c.call(t, "draft.get"))
        assert got["draft"] == draft
        # the move of a section carries its fields along
        ok(c.call(t, "section.move", {"id": "home-hero-main", "page": "other", "index": 0}))
        assert db.sections(t, "other") == [dict(section, id="home-hero-main")]


def test_versions_are_per_tenant(daemon, db):
    with Client(daemon.endpoint) as c:
        for i in range(3):
            assert ok(c.call("t-one", "section.upsert",
                             {"page": "p", "section": {"type": "a"}}))["version"] == i + 1
        assert ok(c.call("t-two", "section.upsert",
                         {"page": "p", "section": {"type": "a"}}))["version"] == 1
    assert db.row("t-one")["version"] == 3
    assert db.row("t-two")["version"] == 1
