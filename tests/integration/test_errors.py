"""Every error code reachable with one daemon and one database: the exact
code, the retryable flag, a message naming the offending field (or id, page,
limit), nothing changed in the database, and the daemon still answering."""

import math
import re

import msgpack
import pytest

from tqlib import DaemonFactory, call, call_raw, err, ok, pack

T = "errs"
DROP = object()
UPSERT = {"page": "home", "section": {"type": "hero"}}


def req(**over):
    """A valid upsert request for T with fields replaced (DROP removes)."""
    r = {"v": 1, "tenant": T, "op": "section.upsert", "args": UPSERT}
    for k, v in over.items():
        if v is DROP:
            r.pop(k, None)
        else:
            r[k] = v
    return pack(r)


def op(name, args):
    return req(op=name, args=args)


def up(page="home", section=None, **extra):
    a = {"page": page, "section": section if section is not None else {"type": "hero"}}
    a.update(extra)
    return op("section.upsert", a)


def sec(**fields):
    s = {"type": "hero"}
    s.update(fields)
    return s


# setups: edits run (and checked ok) before the failing request
HOME_A = [("section.upsert", {"page": "home", "section": {"id": "a", "type": "hero"}})]
HOME_AB = HOME_A + [("section.upsert", {"page": "home", "section": {"id": "b", "type": "text"}})]
HOME_A_ABOUT_B = HOME_A + [
    ("section.upsert", {"page": "about", "section": {"id": "b", "type": "text"}})]

NON_STR_KEY_ENVELOPE = (b"\x85" + pack("v") + pack(1) + pack("tenant") + pack(T)
                        + pack("op") + pack("draft.get") + pack(7) + pack("x")
                        + pack("args") + pack({}))

INVALID_UTF8_TENANT = (b"\x84" + pack("v") + pack(1) + pack("tenant") + b"\xa2\xff\xfe"
                       + pack("op") + pack("draft.get") + pack("args") + pack({}))

CASES = [
    # --- BAD_REQUEST: the envelope
    ("not-a-map-array", [], pack([1, 2, 3]), "BAD_REQUEST", []),
    ("not-a-map-int", [], pack(7), "BAD_REQUEST", []),
    ("not-msgpack", [], b"\xc1", "BAD_REQUEST", []),
    ("empty-body", [], b"", "BAD_REQUEST", []),
    ("truncated", [], req()[:-3], "BAD_REQUEST", []),
    ("trailing-byte", [], req() + b"\x00", "BAD_REQUEST", []),
    ("two-maps", [], req() + req(), "BAD_REQUEST", []),
    ("missing-v", [], req(v=DROP), "BAD_REQUEST", [r"\bv\b"]),
    ("v-string", [], req(v="1"), "BAD_REQUEST", [r"\bv\b"]),
    ("missing-tenant", [], req(tenant=DROP), "BAD_REQUEST", ["tenant"]),
    ("tenant-int", [], req(tenant=5), "BAD_REQUEST", ["tenant"]),
    ("tenant-bin", [], req(tenant=b"acme"), "BAD_REQUEST", ["tenant"]),
    ("tenant-empty", [], req(tenant=""), "BAD_REQUEST", ["tenant"]),
    ("tenant-129-bytes", [], req(tenant="t" * 129), "BAD_REQUEST", ["tenant"]),
    ("tenant-multibyte-too-long", [], req(tenant="é" * 65), "BAD_REQUEST", ["tenant"]),
    ("tenant-newline", [], req(tenant="a\nb"), "BAD_REQUEST", ["tenant"]),
    ("tenant-control-char", [], req(tenant="a\x01b"), "BAD_REQUEST", ["tenant"]),
    ("tenant-invalid-utf8", [], INVALID_UTF8_TENANT, "BAD_REQUEST", ["tenant"]),
    ("missing-op", [], req(op=DROP), "BAD_REQUEST", [r"\bop\b"]),
    ("op-int", [], req(op=1), "BAD_REQUEST", [r"\bop\b"]),
    ("args-array", [], req(args=[1]), "BAD_REQUEST", [r"\bargs\b"]),
    ("key-empty", [], req(key=""), "BAD_REQUEST", [r"\bkey\b"]),
    ("key-int", [], req(key=5), "BAD_REQUEST", [r"\bkey\b"]),
    ("key-129-bytes", [], req(key="k" * 129), "BAD_REQUEST", [r"\bkey\b"]),
    ("deadline-string", [], req(deadline_ms="10"), "BAD_REQUEST", ["deadline_ms"]),
    ("deadline-negative", [], req(deadline_ms=-1), "BAD_REQUEST", ["deadline_ms"]),
    ("non-string-envelope-key", [], NON_STR_KEY_ENVELOPE, "BAD_REQUEST", []),
    # --- version and op
    ("v2", [], req(v=2), "UNSUPPORTED_VERSION", [r"\bv\b|version"]),
    ("unknown-op", [], req(op="section.explode"), "UNKNOWN_OP", [r"section\.explode"]),
    # --- INVALID_ARGUMENT: section.upsert
    ("page-missing", [], op("section.upsert", {"section": sec()}), "INVALID_ARGUMENT",
     [r"args\.page"]),
    ("page-int", [], up(page=3), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-upper", [], up(page="Home"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-double-dash", [], up(page="a--b"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-leading-dash", [], up(page="-a"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-trailing-dash", [], up(page="a-"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-empty", [], up(page=""), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-underscore", [], up(page="a_b"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-65-bytes", [], up(page="p" * 65), "INVALID_ARGUMENT", [r"args\.page"]),
    ("page-non-ascii", [], up(page="caf\u00e9"), "INVALID_ARGUMENT", [r"args\.page"]),
    ("section-missing", [], op("section.upsert", {"page": "home"}), "INVALID_ARGUMENT",
     [r"args\.section"]),
    ("section-array", [], up(section=[1]), "INVALID_ARGUMENT", [r"args\.section"]),
    ("type-missing", [], up(section={"headline": "x"}), "INVALID_ARGUMENT",
     [r"args\.section\.type"]),
    ("type-int", [], up(section={"type": 1}), "INVALID_ARGUMENT", [r"args\.section\.type"]),
    ("type-upper", [], up(section={"type": "Hero"}), "INVALID_ARGUMENT",
     [r"args\.section\.type"]),
    ("type-65-bytes", [], up(section={"type": "t" * 65}), "INVALID_ARGUMENT",
     [r"args\.section\.type"]),
    ("id-bad-name", [], up(section=sec(id="X_1")), "INVALID_ARGUMENT",
     [r"args\.section\.id"]),
    ("id-int", [], up(section=sec(id=5)), "INVALID_ARGUMENT", [r"args\.section\.id"]),
    ("id-empty", [], up(section=sec(id="")), "INVALID_ARGUMENT", [r"args\.section\.id"]),
    ("binary-value", [], up(section=sec(blob=b"\x00\x01")), "INVALID_ARGUMENT", ["blob"]),
    ("nan", [], up(section=sec(score=math.nan)), "INVALID_ARGUMENT", ["score"]),
    ("infinity", [], up(section=sec(score=math.inf)), "INVALID_ARGUMENT", ["score"]),
    ("nested-nan", [], up(section=sec(data={"list": [1, -math.inf]})), "INVALID_ARGUMENT",
     ["data"]),
    ("nested-binary", [], up(section=sec(data=[b"x"])), "INVALID_ARGUMENT", ["data"]),
    ("non-string-key-in-section", [], up(section={"type": "hero", 1: "x"}),
     "INVALID_ARGUMENT", [r"args\.section"]),
    ("non-string-key-nested", [], up(section=sec(m={2: "x"})), "INVALID_ARGUMENT",
     [r"args\.section"]),
    ("ext-value", [], up(section=sec(e=msgpack.ExtType(5, b"x"))), "INVALID_ARGUMENT",
     [r"args\.section"]),
    ("index-negative", [], up(index=-1), "INVALID_ARGUMENT", [r"args\.index"]),
    ("index-past-end-new-page", [], up(index=1), "INVALID_ARGUMENT", [r"args\.index"]),
    ("index-past-end", HOME_A, up(index=2), "INVALID_ARGUMENT", [r"args\.index"]),
    ("index-string", [], up(index="0"), "INVALID_ARGUMENT", [r"args\.index"]),
    ("index-float", [], up(index=0.0), "INVALID_ARGUMENT", [r"args\.index"]),
    ("upsert-unknown-arg", [], up(colour="red"), "INVALID_ARGUMENT", ["colour"]),
    # --- INVALID_ARGUMENT: other ops
    ("remove-id-missing", HOME_A, op("section.remove", {}), "INVALID_ARGUMENT",
     [r"args\.id"]),
    ("remove-id-int", HOME_A, op("section.remove", {"id": 1}), "INVALID_ARGUMENT",
     [r"args\.id"]),
    ("remove-unknown-arg", HOME_A, op("section.remove", {"id": "a", "colour": 1}),
     "INVALID_ARGUMENT", ["colour"]),
    ("move-id-missing", HOME_A, op("section.move", {"page": "home", "index": 0}),
     "INVALID_ARGUMENT", [r"args\.id"]),
    ("move-page-bad", HOME_A, op("section.move", {"id": "a", "page": "A", "index": 0}),
     "INVALID_ARGUMENT", [r"args\.page"]),
    ("move-index-same-page", HOME_A, op("section.move", {"id": "a", "page": "home", "index": 1}),
     "INVALID_ARGUMENT", [r"args\.index"]),
    ("move-index-new-page", HOME_A, op("section.move", {"id": "a", "page": "other", "index": 1}),
     "INVALID_ARGUMENT", [r"args\.index"]),
    ("move-index-negative", HOME_AB, op("section.move", {"id": "a", "page": "home", "index": -1}),
     "INVALID_ARGUMENT", [r"args\.index"]),
    ("move-index-past-end", HOME_AB, op("section.move", {"id": "a", "page": "home", "index": 2}),
     "INVALID_ARGUMENT", [r"args\.index"]),
    ("move-unknown-arg", HOME_A,
     op("section.move", {"id": "a", "page": "home", "index": 0, "colour": 1}),
     "INVALID_ARGUMENT", ["colour"]),
    ("get-unknown-arg", HOME_A, op("draft.get", {"colour": 1}), "INVALID_ARGUMENT", ["colour"]),
    ("publish-unknown-arg", HOME_A, op("draft.publish", {"colour": 1}), "INVALID_ARGUMENT",
     ["colour"]),
    ("discard-unknown-arg", HOME_A, op("draft.discard", {"colour": 1}), "INVALID_ARGUMENT",
     ["colour"]),
    # --- NOT_FOUND
    ("remove-unknown-no-row", [], op("section.remove", {"id": "ghost"}), "NOT_FOUND", ["ghost"]),
    ("remove-unknown", HOME_A, op("section.remove", {"id": "ghost"}), "NOT_FOUND", ["ghost"]),
    ("move-unknown", HOME_A, op("section.move", {"id": "ghost", "page": "home", "index": 0}),
     "NOT_FOUND", ["ghost"]),
    # --- DUPLICATE_SECTION_ID
    ("duplicate-other-page", HOME_A_ABOUT_B, up(page="about", section=sec(id="a")),
     "DUPLICATE_SECTION_ID", ['section id "a" already exists on page "home" at index 0']),
    ("duplicate-append-same-page", HOME_AB, up(section=sec(id="b")),
     "DUPLICATE_SECTION_ID", ['section id "b" already exists on page "home" at index 1']),
    ("duplicate-on-replace", HOME_AB, up(section=sec(id="a"), index=1),
     "DUPLICATE_SECTION_ID", ['section id "a" already exists on page "home" at index 0']),
]


@pytest.fixture(scope="module")
def edaemon(test_database):
    f = DaemonFactory(test_database)
    d = f()
    yield d
    f.stop_all()


@pytest.mark.parametrize("name,setup,body,code,patterns", CASES, ids=[c[0] for c in CASES])
def test_error(edaemon, db, name, setup, body, code, patterns):
    for o, a in setup:
        ok(call(edaemon.endpoint, T, o, a))
    before = db.snapshot()
    r = call_raw(edaemon.endpoint, body)
    e = err(r, code, retryable=False)
    for p in patterns:
        assert re.search(p, e["message"]), "message %r does not name %r" % (e["message"], p)
    assert db.snapshot() == before, "the failed request changed the database"
    edaemon.ping()


def test_boundaries_accepted(edaemon, db):
    """The limits themselves are valid: 128-byte tenant, 64-byte names,
    index == length appends, ok with unknown envelope keys."""
    r = call(edaemon.endpoint, "t" * 128, "ping")
    assert ok(r) == {"pong": True}
    r = call(edaemon.endpoint, "\u00e9" * 64, "ping")  # 128 bytes of UTF-8
    assert ok(r) == {"pong": True}
    name = "p" * 64
    res = ok(call(edaemon.endpoint, T, "section.upsert",
                  {"page": name, "section": {"type": name, "id": name}}))
    assert res["id"] == name
    res = ok(call(edaemon.endpoint, T, "section.upsert",
                  {"page": name, "section": {"type": "x", "id": "y"}, "index": 1}))
    assert res["index"] == 1 and res["created"] is True
    res = ok(call(edaemon.endpoint, T, "draft.get", None, colour="ignored"))
    assert res["version"] == 2
    # a generated id that would exceed 64 bytes is refused, naming the field
    r = call(edaemon.endpoint, T, "section.upsert", {"page": name, "section": {"type": "x"}})
    e = err(r, "INVALID_ARGUMENT", retryable=False)
    assert "args.section.id" in e["message"], e


def test_draft_too_large(daemon_factory, db):
    d = daemon_factory("--max-draft-bytes", 2048)
    ok(call(d.endpoint, T, "section.upsert", {"page": "home", "section": {"id": "a", "type": "hero"}}))
    before = db.snapshot()
    r = call(d.endpoint, T, "section.upsert",
             {"page": "home", "section": {"type": "text", "body": "x" * 3000}})
    e = err(r, "DRAFT_TOO_LARGE", retryable=False)
    assert "2048" in e["message"], e
    assert db.snapshot() == before
    # a small edit still fits, then growing past the limit by replacement fails
    ok(call(d.endpoint, T, "section.upsert", {"page": "home", "section": {"type": "text"}}))
    before = db.snapshot()
    r = call(d.endpoint, T, "section.upsert",
             {"page": "home", "index": 0, "section": {"type": "hero", "body": "y" * 2100}})
    err(r, "DRAFT_TOO_LARGE", retryable=False)
    assert db.snapshot() == before
    d.ping()


def test_bad_request_with_unusable_tenant_is_answered(edaemon, db):
    """A request whose tenant cannot be routed is still answered (by the
    front), for several tenants in a row, and the daemon keeps serving."""
    for t in ["", "x" * 200, "\x00"]:
        err(call(edaemon.endpoint, t, "section.upsert", UPSERT), "BAD_REQUEST", retryable=False)
    assert db.snapshot() == []
    edaemon.ping()
