"""Coalescing correctness: a tenant's queued edits run as one transaction
(one lock, one read, one write, one commit) and must give exactly what the
same edits give one by one.  A direct writer holding the tenant's advisory
lock makes the queue build up deterministically; an independent model of
the operations (PROTOCOL.md section 5) says what every reply must be."""

import copy
import time

import pytest

from tqlib import Client, TaggedRawReq, envelope, err, ok, pack

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


# --------------------------------------------------------------------------
# the sequence: appends without id, explicit ids (some colliding), replaces
# by index, removes of present and absent ids, moves (some out of range),
# reads in the middle

def _up(page, section, index=None):
    args = {"page": page, "section": section}
    if index is not None:
        args["index"] = index
    return ("section.upsert", args)


def _rm(sid):
    return ("section.remove", {"id": sid})


def _mv(sid, page, index):
    return ("section.move", {"id": sid, "page": page, "index": index})


GET = ("draft.get", None)

SEQUENCE = [
    _up("home", {"type": "hero"}),                                  # home-hero-main
    _up("home", {"type": "hero", "headline": "second"}),            # home-hero-2
    _up("home", {"type": "text", "body": "a"}),                     # home-text-main
    _up("home", {"id": "promo", "type": "banner"}),
    _up("home", {"id": "promo", "type": "banner"}),                 # duplicate
    _up("about", {"type": "hero"}),                                 # about-hero-main
    _up("about", {"id": "home-hero-2", "type": "x"}),               # duplicate on another page
    _up("home", {"type": "hero", "headline": "new"}, index=0),      # replace, keeps the id
    _up("home", {"id": "promo", "type": "x"}, index=1),             # replace with an id used elsewhere
    _up("home", {"id": "promo", "type": "banner", "n": 2}, index=3),  # replace, same id
    _up("home", {"type": "x"}, index=9),                            # index out of range
    _rm("ghost"),                                                   # not found
    _rm("home-hero-2"),
    GET,
    _up("home", {"type": "hero"}),                                  # home-hero-2 again (free)
    _mv("promo", "about", 0),
    _mv("promo", "about", 5),                                       # out of range
    _mv("ghost", "home", 0),                                        # not found
    _mv("home-text-main", "home", 3),                               # out of range (len 3 without it)
    _mv("home-text-main", "home", 2),
    _rm("promo"),
    _rm("promo"),                                                   # not found any more
    _up("about", {"id": "promo", "type": "banner", "n": 3}),        # id free again
    _up("gallery", {"type": "img"}, index=0),                       # index = length: append
    _up("gallery", {"type": "img"}, index=1),                       # gallery-img-2
    _up("gallery", {"id": "gallery-img-2", "type": "img"}, index=0),  # duplicate of index 1
    _mv("gallery-img-main", "blog", 0),                             # page created by a move
    _up("blog", {"type": "text", "data": {"list": [1, 2.5, True, None, "x"], "m": {}}}),
    GET,
    _rm("about-hero-main"),
    _up("about", {"type": "hero"}),                                 # about-hero-main again
    _up("home", {"id": "about-hero-main", "type": "hero"}),         # duplicate
    _mv("home-hero-main", "home", 0),                               # same place: still a change
    _up("home", {"type": "hero", "headline": "third"}, index=0),
    _up("home", {"type": "hero"}),                                  # home-hero-3
    _up("home", {"type": "hero"}),                                  # home-hero-4
    _rm("home-hero-3"),
    _up("home", {"type": "hero"}),                                  # home-hero-3 (first free)
    _mv("gallery-img-2", "gallery", 1),                             # out of range (len 0 without it)
    _up("gallery", {"type": "img"}, index=5),                       # out of range (len 1)
    GET,
]


# --------------------------------------------------------------------------
# the model: what PROTOCOL.md section 5 says each op does

class Model:
    def __init__(self):
        self.draft = {"pages": {}}
        self.version = 0

    def _pages(self):
        return self.draft["pages"]

    def _find(self, sid, skip=None):
        for pname, page in self._pages().items():
            for i, sec in enumerate(page["sections"]):
                if sec["id"] == sid and (pname, i) != skip:
                    return pname, i
        return None

    def _ids(self):
        return {s["id"] for p in self._pages().values() for s in p["sections"]}

    def apply(self, op, args):
        """(True, result) or (False, code)."""
        pages = self._pages()
        if op == "draft.get":
            return True, {"draft": copy.deepcopy(self.draft), "version": self.version}
        if op == "section.upsert":
            pname, sec = args["page"], dict(args["section"])
            secs = pages.get(pname, {}).get("sections", [])
            index = args.get("index", len(secs))
            if index > len(secs):
                return False, "INVALID_ARGUMENT"
            replace = index < len(secs)
            if "id" in sec:
                if self._find(sec["id"], skip=(pname, index) if replace else None):
                    return False, "DUPLICATE_SECTION_ID"
            elif replace:
                sec["id"] = secs[index]["id"]
            else:
                ids, prefix = self._ids(), "%s-%s-" % (pname, sec["type"])
                sec["id"] = prefix + "main"
                k = 2
                while sec["id"] in ids:
                    sec["id"] = "%s%d" % (prefix, k)
                    k += 1
            page = pages.setdefault(pname, {"sections": []})
            if replace:
                page["sections"][index] = sec
            else:
                page["sections"].append(sec)
            self.version += 1
            return True, {"id": sec["id"], "page": pname, "index": index,
                          "created": not replace, "version": self.version}
        if op == "section.remove":
            at = self._find(args["id"])
            if at is None:
                return False, "NOT_FOUND"
            del pages[at[0]]["sections"][at[1]]
            self.version += 1
            return True, {"page": at[0], "index": at[1], "version": self.version}
        if op == "section.move":
            at = self._find(args["id"])
            if at is None:
                return False, "NOT_FOUND"
            tname, index = args["page"], args["index"]
            tlen = len(pages.get(tname, {}).get("sections", []))
            if tname == at[0]:
                tlen -= 1
            if index > tlen:
                return False, "INVALID_ARGUMENT"
            sec = pages[at[0]]["sections"].pop(at[1])
            pages.setdefault(tname, {"sections": []})["sections"].insert(index, sec)
            self.version += 1
            return True, {"page": tname, "index": index, "version": self.version}
        raise AssertionError("model has no op %s" % op)


def _expected():
    m = Model()
    return [m.apply(op, args) for op, args in SEQUENCE], m


def _check_against_model(replies, tenant):
    """Every reply is what the model says; returns the versions of the
    committed changes in order."""
    expected, _ = _expected()
    versions = []
    for i, ((op, args), (want_ok, want), r) in enumerate(zip(SEQUENCE, expected, replies)):
        where = "request %d (%s %r) of %s" % (i, op, args, tenant)
        if want_ok:
            assert r["ok"] is True, "%s: expected ok %r, got %r" % (where, want, r)
            assert r["result"] == want, "%s: expected %r, got %r" % (where, want, r)
            if op != "draft.get":
                versions.append(r["result"]["version"])
        else:
            assert r["ok"] is False, "%s: expected %s, got %r" % (where, want, r)
            assert r["error"]["code"] == want, "%s: expected %s, got %r" % (where, want, r)
            assert r["error"]["retryable"] is False, (where, r)
    return versions


def _body(tenant, op, args):
    return pack(envelope(tenant, op, args))


def _pipelined_behind_lock(d, db, tenant, seq):
    """Send seq for tenant while a direct writer holds its lock: the first
    request alone waits for the lock on a connection, the rest queue in the
    lane and run as one batch once it is released.  Returns the replies in
    the order of seq."""
    with db.connect(autocommit=False) as holder, TaggedRawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (tenant,))
        rids = [s.send(_body(tenant, *seq[0]))]
        time.sleep(0.3)  # the first one is waiting for the lock now
        rids += [s.send(_body(tenant, op, args)) for op, args in seq[1:]]
        time.sleep(0.3)  # all of them queued behind it
        holder.commit()
        replies, _ = s.recv_for(rids)
    return replies


def _same_but_tenant(ra, rb, ta, tb):
    """Replies equal field by field; messages may differ in the tenant name."""
    assert ra["ok"] == rb["ok"], (ra, rb)
    if ra["ok"]:
        assert ra["result"] == rb["result"], (ra, rb)
        assert bool(ra.get("replayed")) == bool(rb.get("replayed")), (ra, rb)
    else:
        ea, eb = ra["error"], rb["error"]
        assert ea["code"] == eb["code"], (ra, rb)
        assert ea["retryable"] == eb["retryable"], (ra, rb)
        assert ea["message"].replace(ta, "<T>") == eb["message"].replace(tb, "<T>"), (ra, rb)


def test_batched_equals_one_by_one(daemon_factory, db):
    """The issue's requirement: batched edits with interleaved conflicts give
    the same results as one by one, request by request, and the same
    stored draft."""
    d = daemon_factory("--lock-timeout-ms", 5000)  # --max-batch: default 64
    ta, tb = "coal-a", "coal-b"
    n = len(SEQUENCE)
    assert 40 <= n < 64

    batched = _pipelined_behind_lock(d, db, ta, SEQUENCE)

    # coalesced: the first request ran alone (it was the one waiting for the
    # lock), every other one in one transaction with all the rest
    assert batched[0]["ok"] and batched[0]["timing"]["batch"] == 1, batched[0]
    for i, r in enumerate(batched[1:], 1):
        if r["ok"]:
            assert r["timing"]["batch"] == n - 1, (i, r)
    assert sum(1 for r in batched if r["ok"] and r["timing"]["batch"] > 1) > n // 2

    with Client(d.endpoint) as c:
        single = [c.call(tb, op, args) for op, args in SEQUENCE]
    for i, r in enumerate(single):
        if r["ok"]:
            assert r["timing"]["batch"] == 1, (i, r)

    for i, (ra, rb) in enumerate(zip(batched, single)):
        try:
            _same_but_tenant(ra, rb, ta, tb)
        except AssertionError as e:
            raise AssertionError("request %d %r differs: %s" % (i, SEQUENCE[i], e)) from None

    # both are what the operations table says; versions are one per committed
    # change, consecutive, and failed requests took none
    va = _check_against_model(batched, ta)
    vb = _check_against_model(single, tb)
    assert va == vb == list(range(1, len(va) + 1)), (va, vb)
    _, model = _expected()
    assert model.version == len(va)

    # the final drafts, as read through the daemon and as stored
    with Client(d.endpoint) as c:
        ga = ok(c.call(ta, "draft.get"))
        gb = ok(c.call(tb, "draft.get"))
    assert ga == gb == {"draft": model.draft, "version": model.version}
    row_a, row_b = db.row(ta), db.row(tb)
    assert row_a == row_b == {"draft": model.draft, "published": None,
                              "version": model.version}


def test_failed_members_change_nothing(daemon_factory, db):
    """A batch made only of failing edits and reads writes nothing (the
    version stays), and failures between successes take no version."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    t = "coal-fail"
    with Client(d.endpoint) as c:
        ok(c.call(t, "section.upsert", {"page": "home", "section": {"id": "a", "type": "x"}}))
    before = db.row(t)
    seq = [
        _up("home", {"id": "b", "type": "x"}),       # waits for the lock alone
        _up("home", {"id": "a", "type": "x"}),       # duplicate
        _rm("ghost"),
        _mv("a", "home", 7),
        GET,
        _up("home", {"type": "x"}, index=4),
        _up("home", {"id": "b", "type": "y"}),       # duplicate of the first
    ]
    replies = _pipelined_behind_lock(d, db, t, seq)
    assert ok(replies[0])["version"] == 2
    assert [r["error"]["code"] if not r["ok"] else "ok" for r in replies[1:]] == [
        "DUPLICATE_SECTION_ID", "NOT_FOUND", "INVALID_ARGUMENT", "ok",
        "INVALID_ARGUMENT", "DUPLICATE_SECTION_ID"]
    got = ok(replies[4])
    assert replies[4]["timing"]["batch"] == len(seq) - 1
    assert got["version"] == 2
    assert got["draft"] == {"pages": {"home": {"sections": [
        {"id": "a", "type": "x"}, {"id": "b", "type": "x"}]}}}
    after = db.row(t)
    assert after["version"] == 2
    assert after["draft"] == got["draft"]
    assert after["published"] == before["published"] is None


def test_commit_failure_fails_the_whole_batch(daemon_factory, db):
    """The batch's single write violates a constraint added for the test:
    every request of the batch (successes, validation failures and reads
    alike) gets the same error, and nothing of it is stored."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    t, other = "coal-commit", "coal-bystander"
    with Client(d.endpoint) as c:
        for k in range(3):
            ok(c.call(t, "section.upsert", {"page": "home", "section": {"id": "s%d" % k,
                                                                        "type": "x"}}))
        ok(c.call(other, "section.upsert", {"page": "home", "section": {"type": "x"}}))
    # versions 4 (the request that waits for the lock alone) and 5 may be
    # stored, the batch after it ends at 7
    with db.connect() as c:
        c.execute("ALTER TABLE tenantq_storefront ADD CONSTRAINT tq_test_tmp "
                  "CHECK (tenant <> 'coal-commit' OR version < 6)")
    try:
        seq = [
            _up("home", {"id": "first", "type": "x"}),   # alone: version 4, allowed
            _up("home", {"id": "n1", "type": "x"}),      # 5
            _up("home", {"id": "s0", "type": "x"}),      # duplicate
            GET,
            _rm("s1"),                                    # 6
            _rm("ghost"),                                 # not found
            _mv("s2", "about", 0),                        # 7: the write is refused
        ]
        with db.connect(autocommit=False) as holder, TaggedRawReq(d.endpoint) as s:
            holder.execute(LOCK_SQL, (t,))
            rids = [s.send(_body(t, *seq[0]))]
            time.sleep(0.3)
            rids += [s.send(_body(t, op, args)) for op, args in seq[1:]]
            time.sleep(0.3)
            holder.commit()
            replies, _ = s.recv_for(rids)
        # the lone first request committed before the batch started
        assert ok(replies[0])["version"] == 4, replies[0]
        before_batch = {"draft": {"pages": {"home": {"sections": [
            {"id": "s0", "type": "x"}, {"id": "s1", "type": "x"}, {"id": "s2", "type": "x"},
            {"id": "first", "type": "x"}]}}}, "published": None, "version": 4}
        codes = {r["error"]["code"] for r in replies[1:] if not r["ok"]}
        assert all(not r["ok"] for r in replies[1:]), replies
        assert len(codes) == 1, replies
        # a constraint violation is no transient outage: INTERNAL, not retryable
        assert codes == {"INTERNAL"}, replies
        assert all(r["error"]["retryable"] is False for r in replies[1:]), replies
        msgs = {r["error"]["message"] for r in replies[1:]}
        assert len(msgs) == 1, msgs
        assert t in msgs.pop()
        assert db.row(t) == before_batch
        with db.connect() as c:
            n = c.execute("SELECT count(*) FROM tenantq_idempotency WHERE tenant = %s",
                          (t,)).fetchone()[0]
        # libtenantq is not involved: no keys were sent, so none are stored
        assert n == 0
    finally:
        with db.connect() as c:
            c.execute("ALTER TABLE tenantq_storefront DROP CONSTRAINT IF EXISTS tq_test_tmp")
    # the tenant and the daemon carry on from the stored state
    with Client(d.endpoint) as c:
        r = ok(c.call(t, "section.remove", {"id": "s1"}))
        assert r == {"page": "home", "index": 1, "version": 5}
        assert ok(c.call(other, "draft.get"))["version"] == 1
    assert db.row(t)["version"] == 5
    d.ping()


@pytest.mark.parametrize("keyed", [False, True])
def test_commit_failure_with_keys_stores_no_record(daemon_factory, db, keyed):
    """Same, with idempotency keys: a refused batch stores no record, so the
    same keys work afterwards and apply the edits exactly once."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    t = "coal-keys"
    with Client(d.endpoint) as c:
        ok(c.call(t, "section.upsert", {"page": "home", "section": {"id": "s0", "type": "x"}}))
    extra = (lambda i: {"key": "k-%d" % i}) if keyed else (lambda i: {})
    seq = [("section.upsert", {"page": "home", "section": {"id": "e%d" % i, "type": "x"}})
           for i in range(6)]
    with db.connect() as c:
        c.execute("ALTER TABLE tenantq_storefront ADD CONSTRAINT tq_test_tmp "
                  "CHECK (tenant <> 'coal-keys' OR version < 4)")
    try:
        with db.connect(autocommit=False) as holder, TaggedRawReq(d.endpoint) as s:
            holder.execute(LOCK_SQL, (t,))
            rids = [s.send(pack(envelope(t, seq[0][0], seq[0][1], **extra(0))))]
            time.sleep(0.3)
            rids += [s.send(pack(envelope(t, op, args, **extra(i))))
                     for i, (op, args) in enumerate(seq[1:], 1)]
            time.sleep(0.3)
            holder.commit()
            replies, _ = s.recv_for(rids)
        assert ok(replies[0])["version"] == 2
        codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies[1:]]
        assert len(set(codes)) == 1 and codes[0] != "ok", codes
        assert db.row(t)["version"] == 2
        with db.connect() as c:
            keys = [k for (k,) in c.execute(
                "SELECT key FROM tenantq_idempotency WHERE tenant = %s ORDER BY key",
                (t,)).fetchall()]
        assert keys == (["k-0"] if keyed else [])
    finally:
        with db.connect() as c:
            c.execute("ALTER TABLE tenantq_storefront DROP CONSTRAINT IF EXISTS tq_test_tmp")
    with Client(d.endpoint) as c:
        again = [c.call(t, op, args, **extra(i)) for i, (op, args) in enumerate(seq)]
    if keyed:
        assert again[0].get("replayed") is True and ok(again[0])["version"] == 2
    else:
        err(again[0], "DUPLICATE_SECTION_ID")
    assert [ok(r)["version"] for r in again[1:]] == [3, 4, 5, 6, 7]
    assert [s_["id"] for s_ in db.sections(t, "home")] == ["s0"] + ["e%d" % i for i in range(6)]


def test_keys_inside_a_batch_equal_one_by_one(daemon_factory, db):
    """Idempotency keys inside one batch: a repeat of a key bound earlier in
    the same transaction replays it, a different request with that key is
    IDEMPOTENCY_KEY_REUSED, a key whose request failed stays free; all
    exactly as when the same requests come one by one."""
    d = daemon_factory("--lock-timeout-ms", 5000)
    ta, tb = "keys-a", "keys-b"
    x = {"page": "home", "section": {"type": "x"}}
    seq = [
        ("section.upsert", x, "k1"),                                  # alone, home-x-main
        ("section.upsert", x, "k2"),                                  # home-x-2
        ("section.upsert", x, "k2"),                                  # replay of the previous
        ("section.upsert", {"page": "home", "section": {"type": "y"}}, "k2"),  # reused
        ("section.remove", {"id": "home-x-main"}, "k3"),
        ("section.remove", {"id": "home-x-main"}, "k3"),              # replay, not NOT_FOUND
        ("section.remove", {"id": "home-x-main"}, "k4"),              # NOT_FOUND: k4 stays free
        ("section.upsert", {"page": "home", "section": {"id": "z", "type": "x"}}, "k4"),
        ("section.upsert", x, "k1"),                                  # replay from the stored record
        ("section.upsert", x, "k5"),                                  # home-x-main (free again)
        ("draft.get", None, None),
    ]

    def body(t, op, args, key):
        return pack(envelope(t, op, args, **({"key": key} if key else {})))

    with db.connect(autocommit=False) as holder, TaggedRawReq(d.endpoint) as s:
        holder.execute(LOCK_SQL, (ta,))
        rids = [s.send(body(ta, *seq[0]))]
        time.sleep(0.3)
        rids += [s.send(body(ta, *req)) for req in seq[1:]]
        time.sleep(0.3)
        holder.commit()
        batched, _ = s.recv_for(rids)
    assert batched[1]["timing"]["batch"] == len(seq) - 1, batched[1]
    with Client(d.endpoint) as c:
        single = [c.raw(body(tb, *req)) for req in seq]
    for i, (ra, rb) in enumerate(zip(batched, single)):
        try:
            _same_but_tenant(ra, rb, ta, tb)
        except AssertionError as e:
            raise AssertionError("request %d %r differs: %s" % (i, seq[i], e)) from None

    outcome = [("replayed" if r.get("replayed") else "ok") if r["ok"] else r["error"]["code"]
               for r in batched]
    assert outcome == ["ok", "ok", "replayed", "IDEMPOTENCY_KEY_REUSED", "ok", "replayed",
                       "NOT_FOUND", "ok", "replayed", "ok", "ok"], outcome
    assert batched[2]["result"] == batched[1]["result"]
    assert batched[5]["result"] == batched[4]["result"]
    assert batched[8]["result"] == batched[0]["result"]
    assert [ok(batched[i])["version"] for i in (0, 1, 4, 7, 9)] == [1, 2, 3, 4, 5]
    assert ok(batched[9])["id"] == "home-x-main"
    assert db.row(ta) == db.row(tb)
    assert db.row(ta)["version"] == 5
    with db.connect() as c:
        for t in (ta, tb):
            keys = [k for (k,) in c.execute(
                "SELECT key FROM tenantq_idempotency WHERE tenant = %s ORDER BY key",
                (t,)).fetchall()]
            assert keys == ["k1", "k2", "k3", "k4", "k5"], (t, keys)
