"""Exactly-once effects under faults: a daemon killed with SIGKILL under load
and replaced on the same endpoint, nanomsg REQ re-sends, many concurrent
deliveries of one keyed request, and the CLI's retries (tq_set_retries).
Clients retry the same request bytes, hence the same idempotency key; the
database must then hold every edit exactly once, each key's record once, and
every reply to a retry must be the original result (replayed) or a fresh
success of a request that had not run."""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from tqlib import (NN_REQ, NN_REQ_RESEND_IVL, Client, NNSocket, build_dir, cli, daemon_at,
                   envelope, free_tcp_port, idempotency_records, join_threads, metrics_counters,
                   ok, pack, send_until_ok, sigkill, start_threads, unpack, err, RawReq)

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"


def _all_ids(draft):
    return [s["id"] for p in draft["pages"].values() for s in p["sections"]]


@pytest.mark.parametrize("gap_s", [0.3, 4.0], ids=["resend-on-reconnect", "client-retry"])
def test_kill9_under_load_then_successor(daemon_factory, db, gap_s):
    """16 clients, each 25 keyed edits (half with explicit ids, half with
    generated ones) on 4 shared tenants.  After ~100 acknowledgements the
    daemon gets SIGKILL; gap_s later a new daemon starts on the same
    endpoint.  Clients retry what got no reply within 3 s (or a retryable
    error) with the same bytes.  With the short gap nanomsg's REQ re-sends
    the requests in flight when it reconnects; with the long one the
    clients time out and retry themselves."""
    clients, per, tenants = 16, 25, 4
    d1 = daemon_factory("--default-deadline-ms", 5000)
    endpoint = d1.endpoint
    acked = [0]
    acked_lock = threading.Lock()
    enough = threading.Event()
    outcome = {}  # key -> (tenant, final response, tries log)
    barrier = threading.Barrier(clients + 1)

    def worker(i):
        tenant = "shop-%d" % (i % tenants)
        with Client(endpoint, timeout_ms=3000) as c:
            ok(c.call("warmup-%d" % i, "ping"))
            barrier.wait(30)
            for n in range(per):
                key = "c%d-%d" % (i, n)
                section = {"type": "t%d" % i, "k": key}
                if i % 2 == 0:
                    section["id"] = key  # explicit: a double execution is a duplicate id
                body = pack(envelope(tenant, "section.upsert",
                                     {"page": "home", "section": section}, key=key))
                tries = []
                r = send_until_ok(c, body, limit_s=30, log=tries)
                outcome[key] = (tenant, r, tries)
                with acked_lock:
                    acked[0] += 1
                    if acked[0] >= 100:
                        enough.set()

    threads, errors = start_threads(clients, worker)
    d2 = None
    try:
        barrier.wait(30)
        assert enough.wait(60), "fewer than 100 edits acknowledged in 60s"
        sigkill(d1)
        killed_at = acked[0]
        time.sleep(gap_s)  # clients now wait on a dead endpoint
        d2 = daemon_at(daemon_factory, endpoint, "--default-deadline-ms", 5000)
        join_threads(threads, errors)
        retried = _check_kill9_outcome(db, outcome, clients * per, tenants, killed_at)
        if gap_s > 3:  # longer than the clients' timeout: they had to retry
            assert retried >= 1, "no client timed out and retried"
        d2.ping()
    finally:
        if d2 is None:
            for t in threads:
                t.join(40)
        # the successor listens on a path inside the killed daemon's dir
        shutil.rmtree(d1.dir, ignore_errors=True)


def _check_kill9_outcome(db, outcome, total, tenants, killed_at):
    assert killed_at < total, "the kill came after the load"
    assert len(outcome) == total
    records = idempotency_records(db)
    assert len(records) == total, "idempotency records: %d, edits: %d" % (len(records), total)
    rows = {t: db.row(t) for t in ("shop-%d" % k for k in range(tenants))}
    retried = replayed = 0
    for key, (tenant, r, tries) in outcome.items():
        res = r["result"]
        # the reply the client finally got is the stored result of its key
        assert records.get((tenant, key)) == res, (key, res, records.get((tenant, key)))
        if len(tries) > 1:
            retried += 1
        if r.get("replayed"):
            replayed += 1  # a client retry or nanomsg's re-send after reconnecting
        secs = rows[tenant]["draft"]["pages"]["home"]["sections"]
        assert secs[res["index"]]["k"] == key and secs[res["index"]]["id"] == res["id"], \
            (key, res, secs[res["index"]])
        for t in tries[:-1]:
            assert t in ("timeout", "DB_UNAVAILABLE", "OUTCOME_UNKNOWN", "SHUTTING_DOWN",
                         "DEADLINE_EXCEEDED", "QUEUE_FULL", "LOCK_TIMEOUT"), (key, tries)
    for tenant, row in rows.items():
        secs = row["draft"]["pages"]["home"]["sections"]
        ids = _all_ids(row["draft"])
        assert len(ids) == len(set(ids)), "duplicate section ids in %s" % tenant
        ks = [s["k"] for s in secs]
        assert len(ks) == len(set(ks)), "an edit of %s was applied twice" % tenant
        mine = sorted(k for k, o in outcome.items() if o[0] == tenant)
        assert sorted(ks) == mine, "%s: sections differ from the acknowledged edits" % tenant
        # every committed change was exactly one of these edits
        assert row["version"] == len(secs) == len(mine)
        # and per tenant the results' versions are 1..n, each once
        assert sorted(outcome[k][1]["result"]["version"] for k in mine) == \
            list(range(1, len(mine) + 1))
    # Whether a request was caught between its COMMIT and its reply (then
    # answered by a replay) depends on where the kill lands; the checks above
    # hold either way, and the long-gap run asserts that clients retried.
    print("kill -9 after %d acks: %d edits retried by the client, %d replies replayed"
          % (killed_at, retried, replayed))
    return retried


def test_req_resend_executes_once(daemon_factory, db):
    """A REQ socket re-sending every 100 ms while the tenant's lock is held
    for ~1 s delivers the request about ten times; it runs once."""
    port = free_tcp_port()
    d = daemon_factory("--lock-timeout-ms", 5000, "--metrics-listen", "127.0.0.1:%d" % port)
    t = "slow-shop"
    body = pack(envelope(t, "section.upsert",
                         {"page": "home", "section": {"type": "hero"}}, key="resent-1"))
    before = metrics_counters(port).get('op="section.upsert",code="OK"', 0)
    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK_SQL, (t,))
        with NNSocket(d.endpoint, timeout_ms=10000) as s:
            s._opt(NN_REQ, NN_REQ_RESEND_IVL, 100)
            s.send(body)
            time.sleep(1.0)
            holder.commit()
            r = unpack(s.recv())
            time.sleep(0.5)  # the re-sends queued behind it are answered by now
            # nanomsg 1.1.5 aborts in nn_close of a cooked REQ socket whose
            # re-sends raced the reply (nn_req_term frees the request chunk a
            # second time: chunk.c:231 NN_CHUNK_TAG assertion, reproducible
            # against the slower ASan daemon).  A bug of the client library,
            # not of the daemon: this test process keeps the socket open
            # rather than close it.  (libtenantq keeps its resend interval
            # above its call timeout, so it re-sends only on reconnects.)
            s.fd = -1
    res = ok(r)
    assert res == {"id": "home-hero-main", "page": "home", "index": 0,
                   "created": True, "version": 1}, r
    delivered = metrics_counters(port).get('op="section.upsert",code="OK"', 0) - before
    # each delivery is answered ok (one execution, the rest replays); about
    # ten arrived, at least a few must have (else nothing was tested)
    assert delivered >= 4, "only %d deliveries: the socket did not re-send" % delivered
    row = db.row(t)
    assert row["version"] == 1
    assert row["draft"] == {"pages": {"home": {"sections": [{"id": "home-hero-main",
                                                               "type": "hero"}]}}}
    assert idempotency_records(db) == {(t, "resent-1"): res}


@pytest.mark.parametrize("mode", ["one-daemon", "lock-held", "two-daemons"])
def test_twenty_concurrent_deliveries_of_one_key(daemon_factory, db, mode):
    """20 sockets send the same bytes (same key) at once: one effect, 20
    equal results, 19 of them replayed.  lock-held: the tenant's lock is
    held 300 ms by SQL so all 20 queue in the lane together; two-daemons:
    the deliveries are spread over two instances on one database."""
    n = 20
    daemons = [daemon_factory("--lock-timeout-ms", 5000)]
    if mode == "two-daemons":
        daemons.append(daemon_factory("--lock-timeout-ms", 5000))
    t = "dup-shop"
    body = pack(envelope(t, "section.upsert",
                         {"page": "home", "section": {"type": "item", "n": 1}}, key="same-key"))
    barrier = threading.Barrier(n)
    replies = [None] * n

    def worker(i):
        with Client(daemons[i % len(daemons)].endpoint, timeout_ms=10000) as c:
            ok(c.call("warmup-%d" % i, "ping"))
            barrier.wait(30)
            replies[i] = c.raw(body)

    holder = None
    if mode == "lock-held":
        holder = db.connect(autocommit=False)
        holder.execute(LOCK_SQL, (t,))
    try:
        threads, errors = start_threads(n, worker)
        if holder is not None:
            time.sleep(0.3)
            holder.commit()
        join_threads(threads, errors)
    finally:
        if holder is not None:
            holder.close()
    results = [ok(r) for r in replies]
    assert all(res == results[0] for res in results), results
    assert results[0] == {"id": "home-item-main", "page": "home", "index": 0,
                          "created": True, "version": 1}
    flags = sorted(bool(r.get("replayed")) for r in replies)
    assert flags == [False] + [True] * (n - 1), flags
    row = db.row(t)
    assert row["version"] == 1
    assert row["draft"]["pages"]["home"]["sections"] == [
        {"id": "home-item-main", "type": "item", "n": 1}]
    assert idempotency_records(db) == {(t, "same-key"): results[0]}


def test_cli_retries_lock_timeout(daemon_factory, db):
    """tenantq -r N -k KEY: LOCK_TIMEOUT is retryable; with the lock held
    600 ms and lock_timeout_ms 200 the CLI gets through once, version 1."""
    port = free_tcp_port()
    d = daemon_factory("--lock-timeout-ms", 200, "--metrics-listen", "127.0.0.1:%d" % port)
    t = "cli-shop"
    args = '{"page":"home","section":{"type":"hero"}}'
    expected = {"id": "home-hero-main", "page": "home", "index": 0,
                "created": True, "version": 1}
    with db.connect(autocommit=False) as holder:
        holder.execute(LOCK_SQL, (t,))
        # without retries: the error, exit 1, nothing changed
        p = cli("-e", d.endpoint, "-k", "cli-key", "call", t, "section.upsert", args)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert p.stderr.startswith("LOCK_TIMEOUT:"), p.stderr
        assert db.row(t) is None and idempotency_records(db) == {}
        # with retries, the lock released 600 ms into the call
        release = threading.Timer(0.6, holder.commit)
        t0 = time.monotonic()
        release.start()
        try:
            p = cli("-e", d.endpoint, "-r", 10, "-k", "cli-key", "call", t, "section.upsert", args)
        finally:
            release.join()
        took = time.monotonic() - t0
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert json.loads(p.stdout) == expected
    assert took >= 0.5, "the CLI succeeded while the lock was held (%.2fs)" % took
    codes = metrics_counters(port)
    # 1 from the first call + at least one retried LOCK_TIMEOUT in the second
    assert codes.get('op="section.upsert",code="LOCK_TIMEOUT"', 0) >= 2, codes
    assert codes.get('op="section.upsert",code="OK"', 0) == 1, codes
    # the same command again (a retry after a lost reply) replays: no effect
    p = cli("-e", d.endpoint, "-r", 5, "-k", "cli-key", "call", t, "section.upsert", args)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert json.loads(p.stdout) == expected
    row = db.row(t)
    assert row["version"] == 1
    assert row["draft"]["pages"]["home"]["sections"] == [{"id": "home-hero-main",
                                                         "type": "hero"}]
    assert idempotency_records(db) == {(t, "cli-key"): expected}


def test_expired_records_are_deleted_under_load(daemon_factory, db):
    """idempotency_ttl_s = 1: expired records are deleted in the background
    even while 64 clients (tenantq-load) keep both of the shard's connections
    busy the whole time: the cleanup must not wait for an idle moment that
    never comes.  A key is free again once its record is gone."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 2, "--idempotency-ttl-s", 1)
    load = subprocess.Popen(
        [os.path.join(build_dir(), "tests", "load", "tenantq-load"), "--mode", "daemon",
         "-e", d.endpoint, "--database", db.conninfo, "--clients", "64", "--tenants", "100",
         "--duration", "11", "--no-check"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        # the first pass is due 5 s after the daemon started, then catches up
        # in batches; from 9 s in, and while the load still runs (it stops at
        # 11 s), nothing more than 5 s old may be left (polled until 10.5 s:
        # a sanitizer build on a busy machine catches up more slowly)
        start = time.monotonic()
        time.sleep(9.0)
        while True:
            with db.connect() as c:
                old, total = c.execute(
                    "SELECT count(*) FILTER (WHERE created_at < now() - interval '5 s'),"
                    " count(*) FROM tenantq_idempotency").fetchone()
            if old == 0 or time.monotonic() - start > 10.5:
                break
            time.sleep(0.25)
        rc = load.wait(30)
    finally:
        load.kill()
    assert rc == 0, rc
    assert total > 1000, total
    assert old == 0, "%d of %d records were past their TTL by 4 s" % (old, total)
    # within its TTL a key replays; once expired (deleted or not yet) it runs afresh
    with Client(d.endpoint) as c:
        body = pack(envelope("ttl-0", "section.upsert",
                             {"page": "home", "section": {"type": "x"}}, key="ttl-key"))
        first = c.raw(body)
        again = c.raw(body)
        time.sleep(1.5)
        later = c.raw(body)
    assert ok(first) and not first.get("replayed"), first
    assert again.get("replayed") and again["result"] == first["result"], again
    assert not later.get("replayed") and ok(later)["version"] > first["result"]["version"], later


def test_a_read_with_an_edits_key_is_refused(daemon, db):
    """The same key with a different op is IDEMPOTENCY_KEY_REUSED.  A
    draft.get carrying a key that an edit bound is refused, also when both
    arrive together (one batch) and when the tenant's state is cached; a
    read's own key binds nothing (a read has no effect to record)."""
    t = "keyed-read"
    up = {"page": "home", "section": {"type": "hero"}}
    with Client(daemon.endpoint) as c:
        assert ok(c.call(t, "section.upsert", up, key="k1"))["version"] == 1
        err(c.call(t, "draft.get", key="k1"), "IDEMPOTENCY_KEY_REUSED")
        r = ok(c.call(t, "draft.get", key="k2"))
        assert r["version"] == 1, r
        r2 = c.call(t, "section.upsert", {"page": "home", "section": {"type": "text"}}, key="k2")
        assert ok(r2)["version"] == 2 and not r2.get("replayed"), r2
    with RawReq(daemon.endpoint) as s:
        s.send(pack(envelope(t, "section.upsert",
                             {"page": "home", "section": {"type": "faq"}}, key="k3")))
        s.send(pack(envelope(t, "draft.get", key="k3")))
        replies = [s.recv() for _ in range(2)]
    edits = [r for r in replies if r["ok"]]
    assert len(edits) == 1 and edits[0]["result"]["version"] == 3, replies
    refused = [r for r in replies if not r["ok"]]
    assert len(refused) == 1 and refused[0]["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", replies
    assert db.row(t)["version"] == 3
