"""Hostile bytes over real nanomsg REQ sockets: random garbage, every
truncation of a valid request, container headers claiming ~4 billion
elements, deep nesting, oversized messages, invalid UTF-8.  Each gets an
error reply where the transport allows one (never INTERNAL), nothing is
executed, the daemon keeps answering, its memory stays bounded, and it exits
cleanly at teardown (checked by the fixture, with sanitizers in that pass).
Floods of connections: test_fd_exhaustion.py."""

import random

from tqlib import Client, NNTimeout, RawReq, envelope, err, ok, pack, sanitized_build

T = "hostile"
INPUT_ERRORS = {"BAD_REQUEST", "UNSUPPORTED_VERSION", "UNKNOWN_OP", "INVALID_ARGUMENT"}


def _prefix(args_bytes, tenant_bytes=None, op="section.upsert"):
    """A request map whose args value is given as raw msgpack bytes."""
    return (b"\x84" + pack("v") + pack(1)
            + pack("tenant") + (tenant_bytes if tenant_bytes is not None else pack(T))
            + pack("op") + pack(op)
            + pack("args") + args_bytes)


def _section_with(value_bytes):
    """args {page: home, section: {type: hero, x: <raw>}}"""
    return _prefix(b"\x82" + pack("page") + pack("home") + pack("section")
                   + b"\x82" + pack("type") + pack("hero") + pack("x") + value_bytes)


def _input_error(r):
    assert r["ok"] is False, "hostile input was executed: %r" % (r,)
    assert r["error"]["code"] in INPUT_ERRORS, r
    assert r["error"]["retryable"] is False, r
    return r["error"]["code"]


def test_hostile_bytes(daemon_factory, db):
    d = daemon_factory("--max-message-bytes", 65536)
    base_rss = d.rss_kb()
    rng = random.Random(0x7E4A17)

    with Client(d.endpoint, timeout_ms=5000) as c:
        # 1. seeded random garbage of random lengths
        for i in range(300):
            n = rng.choice((rng.randint(0, 8), rng.randint(0, 64), rng.randint(0, 2000)))
            data = bytes(rng.getrandbits(8) for _ in range(n))
            try:
                _input_error(c.raw(data))
            except NNTimeout:
                raise AssertionError("no reply to garbage #%d (%d bytes): %s" % (
                    i, n, data[:64].hex()))
        # also garbage that starts like a map
        for i in range(100):
            data = bytes([0x80 | rng.randint(0, 15)]) + bytes(
                rng.getrandbits(8) for _ in range(rng.randint(0, 100)))
            _input_error(c.raw(data))

        # 2. every proper prefix of a valid request is malformed
        valid = pack(envelope(T, "section.upsert", {
            "page": "home", "section": {"type": "hero", "headline": "hello \u2603"}}))
        for i in range(len(valid)):
            r = c.raw(valid[:i])
            assert err(r, "BAD_REQUEST", retryable=False), (i, r)
        assert db.row(T) is None
        assert ok(c.raw(valid))["version"] == 1

        # 3. container/string headers claiming ~4 billion elements or bytes
        huge = [
            b"\xdf\xff\xff\xff\xff",                      # map32
            b"\xdd\xff\xff\xff\xff",                      # array32
            b"\xdd\x00\x80\x00\x00" * 8,                  # nested array32 (8 Mi each)
            b"\x81" + pack("v") + b"\xdd\xff\xff\xff\xff",
            _prefix(b"\xdd\xff\xff\xff\xff"),             # args: array32
            _prefix(b"\xdf\xff\xff\xff\xff"),             # args: map32
            _prefix(pack({}), tenant_bytes=b"\xdb\xff\xff\xff\xff"),  # str32 tenant
            _section_with(b"\xdf\xff\xff\xff\xff"),
            _section_with(b"\xdd\x00\x80\x00\x00" * 16),
            _section_with(b"\xc6\xff\xff\xff\xff"),       # bin32
            _section_with(b"\xdb\xff\xff\xff\xf0"),       # str32
        ]
        for data in huge:
            r = c.raw(data)
            err(r, "BAD_REQUEST", retryable=False)

        # 4. deep nesting inside args (valid msgpack, 5000 levels)
        for data in (_section_with(b"\x91" * 5000 + b"\xc0"),
                     _section_with((b"\x81" + pack("k")) * 5000 + b"\xc0"),
                     _prefix(b"\x91" * 5000 + b"\xc0")):
            _input_error(c.raw(data))

        # 5. invalid UTF-8: in the tenant (error reply or none), in a section value
        bad_tenant = _prefix(pack({}), tenant_bytes=b"\xa3a\xff\xfe", op="draft.get")
        try:
            err(c.raw(bad_tenant), "BAD_REQUEST", retryable=False)
        except NNTimeout:
            pass
        for raw_str in (b"\xa2\xff\xfe", b"\xa3\xed\xa0\x80", b"\xa2\xc0\xaf"):
            _input_error(c.raw(_section_with(raw_str)))
        # a NUL inside a section string is valid msgpack and valid UTF-8 but
        # not storable as jsonb text: must be refused or stored, never INTERNAL
        r = c.raw(_section_with(pack("a\x00b")))
        nul_stored = r["ok"]
        if not nul_stored:
            _input_error(r)

    # 6. a message over --max-message-bytes: the transport drops it
    big = pack(envelope(T, "section.upsert", {
        "page": "home", "section": {"type": "text", "body": "x" * 100000}}))
    assert len(big) > 65536
    before = db.snapshot()
    with Client(d.endpoint, timeout_ms=1000) as c:
        try:
            r = c.raw(big)
        except NNTimeout:
            pass  # expected: no reply
        else:
            _input_error(r)
    assert db.snapshot() == before
    # one just under the limit is served
    fits = pack(envelope(T, "section.upsert", {
        "page": "home", "section": {"type": "text", "body": "y" * 50000}}))
    assert len(fits) < 65536
    with Client(d.endpoint) as c:
        r = ok(c.raw(fits))
        assert r["id"] == "home-text-main"

    d.ping()
    row = db.row(T)
    assert row["version"] == 2 + nul_stored, row["version"]
    rss = d.rss_kb()
    if sanitized_build():
        assert rss - base_rss < 200 * 1024, "RSS grew from %d kB to %d kB" % (base_rss, rss)
    else:
        assert rss < 200 * 1024, "RSS %d kB" % rss


def test_garbage_does_not_stall_other_clients(daemon_factory, db):
    """Pipelined garbage on one connection while another client edits."""
    d = daemon_factory()
    rng = random.Random(42)
    with RawReq(d.endpoint) as flood, Client(d.endpoint) as c:
        n = 100
        for _ in range(n):
            flood.send(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        for k in range(20):
            r = ok(c.call(T, "section.upsert", {"page": "p", "section": {"id": "s%d" % k,
                                                                         "type": "x"}}))
            assert r["version"] == k + 1
        for _ in range(n):
            _input_error(flood.recv())
    assert db.row(T)["version"] == 20
