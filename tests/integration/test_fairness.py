"""Fairness and head-of-line isolation inside one shard.

Fairness: with one shard, one connection and max_batch 8, a hot tenant with
hundreds of queued edits gets one batch per turn and the other tenants' lanes
are served in between (round-robin), so a cold tenant's single edit never
waits for the hot tenant's whole queue.  The order in which the shard ran its
transactions is read from the database: a trigger logs every write of
tenantq_storefront with a sequence number (one connection: the writes are
strictly serial, so the log order is the execution order).

Head-of-line isolation: while a direct SQL session holds one tenant's
advisory lock, the edit of that tenant occupies one connection waiting for
it; the other tenants of the same shard keep going on the other
connection(s)."""

import threading
import time

import pytest

from tqlib import Client, TaggedRawReq, envelope, join_threads, ok, pack, start_threads

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s::text, 0))"

HOT_N = 400
HOT_SOCKETS = 4        # 100 replies unread per socket at most (the limit is ~200)
COLD_N = 10
MAX_BATCH = 8


@pytest.fixture
def commit_log(write_log):
    """A function returning [(tenant, version)] of every write of
    tenantq_storefront in execution order (conftest's write_log)."""
    return lambda: [(t, v) for t, v, _ in write_log()]


def _edit(tenant, sid):
    return pack(envelope(tenant, "section.upsert",
                         {"page": "home", "section": {"id": sid, "type": "x"}}))


def _send_hot(socks, hot):
    """HOT_N upserts of hot spread over socks; returns [(sock, [rids])]."""
    per = HOT_N // len(socks)
    out = []
    for k, s in enumerate(socks):
        out.append((s, [s.send(_edit(hot, "h%d" % (k * per + i))) for i in range(per)]))
    return out


def _read_all(sent):
    """Start one reader thread per (sock, rids) of sent, so that no socket
    piles up unread replies; returns (threads, results, errors): once
    join_threads(threads, errors) returned, results[k] holds the replies to
    sent[k] in the order of its rids."""
    results = [None] * len(sent)

    def reader(k):
        s, rids = sent[k]
        results[k] = s.recv_for(rids)[0]
    threads, errors = start_threads(len(sent), reader)
    return threads, results, errors


def _check_hot_and_cold(hot_replies, cold_replies):
    hot_versions = []
    for r in hot_replies:
        res = ok(r)
        assert res["created"] is True
        assert 1 <= r["timing"]["batch"] <= MAX_BATCH, r
        hot_versions.append(res["version"])
    assert sorted(hot_versions) == list(range(1, HOT_N + 1))
    for r in cold_replies:
        assert ok(r)["version"] == 1, r


def test_round_robin_with_batch_cap(daemon_factory, db, commit_log):
    """Hot lane queued first (400 edits), ten cold tenants queued behind it,
    while a third tenant's transaction holds the only connection.  Once it
    is released the hot tenant gets ONE batch of 8, then every cold tenant
    runs, then the hot tenant's remaining batches.  A shard that served the
    hot lane to completion (or in arrival order) would run all 50 hot
    batches before any cold edit."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1,
                       "--max-batch", MAX_BATCH, "--lock-timeout-ms", 10000,
                       "--default-deadline-ms", 30000)
    hot, blocker = "fair-hot", "fair-blocker"
    cold = ["fair-cold-%d" % i for i in range(COLD_N)]
    socks = [TaggedRawReq(d.endpoint, timeout_ms=20000) for _ in range(HOT_SOCKETS + 1)]
    try:
        with db.connect(autocommit=False) as holder:
            holder.execute(LOCK_SQL, (blocker,))
            brid = socks[0].send(_edit(blocker, "b"))
            time.sleep(0.3)   # the blocker's batch holds the only connection now
            sent = _send_hot(socks[1:], hot)
            time.sleep(0.3)   # every hot edit is queued: the hot lane is first in line
            cold_sock = socks[0]
            cold_rids = [brid] + [cold_sock.send(_edit(t, "c")) for t in cold]
            time.sleep(0.3)   # the cold lanes are queued behind the hot one
            threads, results, errors = _read_all(sent + [(cold_sock, cold_rids)])
            holder.commit()
            join_threads(threads, errors, timeout=60)
    finally:
        for s in socks:
            s.close()

    cold_replies = results[-1]
    assert ok(cold_replies[0])["version"] == 1           # the blocker
    _check_hot_and_cold([r for rs in results[:-1] for r in rs], cold_replies[1:])

    log = commit_log()
    assert len(log) == 1 + HOT_N // MAX_BATCH + COLD_N, log
    assert log[0] == (blocker, 1), log
    hot_writes = [v for t, v in log if t == hot]
    # the cap: every hot transaction ran exactly max_batch edits
    assert hot_writes == list(range(MAX_BATCH, HOT_N + 1, MAX_BATCH)), hot_writes
    cold_pos = [i for i, (t, _) in enumerate(log) if t in cold]
    assert sorted(t for t, _ in log if t in cold) == sorted(cold)
    last_cold = max(cold_pos)
    hot_before = sum(1 for t, _ in log[:last_cold] if t == hot)
    # round-robin: the hot lane gets at most one turn (one batch) before all
    # cold lanes queued at the same time have had theirs; a second one is
    # tolerated, 50 would mean the hot lane was served to completion
    assert hot_before <= 2, "hot batches before the last cold edit: %d\n%r" % (hot_before, log)
    # and the words: every cold edit done before the hot queue is
    assert last_cold < len(log) - 1 and log[-1] == (hot, HOT_N), log


def test_cold_edits_during_hot_flood(daemon_factory, db, commit_log):
    """No lock games: 400 hot edits pipelined, ten cold edits sent in the
    middle of the flood.  Every cold edit commits before the hot tenant's
    last one, and each is overtaken by only a few hot batches after it was
    sent."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1,
                       "--max-batch", MAX_BATCH, "--default-deadline-ms", 30000)
    hot = "flood-hot"
    cold = ["flood-cold-%d" % i for i in range(COLD_N)]
    socks = [TaggedRawReq(d.endpoint, timeout_ms=20000) for _ in range(HOT_SOCKETS + 1)]
    try:
        half = socks[1:1 + HOT_SOCKETS // 2], socks[1 + HOT_SOCKETS // 2:]
        per = HOT_N // HOT_SOCKETS
        sent = []
        n = 0
        for group in half:
            for s in group:
                sent.append((s, [s.send(_edit(hot, "h%d" % (n + i))) for i in range(per)]))
                n += per
            if group is half[0]:
                cold_rids = [socks[0].send(_edit(t, "c")) for t in cold]
        threads, results, errors = _read_all(sent + [(socks[0], cold_rids)])
        join_threads(threads, errors, timeout=60)
    finally:
        for s in socks:
            s.close()
    _check_hot_and_cold([r for rs in results[:-1] for r in rs], results[-1])

    log = commit_log()
    hot_writes = [v for t, v in log if t == hot]
    assert hot_writes[-1] == HOT_N and all(
        0 < b - a <= MAX_BATCH for a, b in zip([0] + hot_writes, hot_writes)), hot_writes
    assert sorted(t for t, _ in log if t in cold) == sorted(cold)
    last_cold = max(i for i, (t, _) in enumerate(log) if t in cold)
    hot_version_then = max([v for t, v in log[:last_cold] if t == hot] or [0])
    # 200 hot edits were sent after the cold ones: with round-robin the cold
    # lanes are served long before the hot lane runs dry
    assert log[-1][0] == hot and hot_version_then < HOT_N, log
    assert hot_version_then <= HOT_N - 100, (
        "cold edits ran only when the hot tenant was at version %d of %d" % (
            hot_version_then, HOT_N))


# --------------------------------------------------------------------------
# head-of-line isolation

ROUND_TRIP_LIMIT_S = 0.100


def _hold_locks(db, tenants, seconds):
    """Start a thread holding the advisory locks of tenants for `seconds`;
    returns (thread, started event)."""
    started = threading.Event()
    failure = []

    def hold():
        try:
            with db.connect(autocommit=False) as c:
                for t in tenants:
                    c.execute(LOCK_SQL, (t,))
                started.set()
                time.sleep(seconds)
                c.commit()
        except BaseException as e:  # reported by the caller
            failure.append(e)
            started.set()
    th = threading.Thread(target=hold)
    th.start()
    assert started.wait(10)
    assert not failure, failure
    return th


def _isolation(d, db, locked, hold_s, n_others=16):
    """Lock `locked` for hold_s, start one edit per locked tenant (each
    occupies a connection waiting), then time n_others sequential edits of
    other tenants.  Returns (round trips in seconds, locked replies)."""
    holder = _hold_locks(db, locked, hold_s)
    t_lock = time.monotonic()
    waiting = TaggedRawReq(d.endpoint, timeout_ms=int(hold_s * 1000) + 10000)
    try:
        rids = [waiting.send(_edit(t, "locked")) for t in locked]
        time.sleep(0.2)  # their batches have taken connections and wait
        times = []
        with Client(d.endpoint) as c:
            for i in range(n_others):
                t0 = time.monotonic()
                r = c.call("hol-other-%d" % i, "section.upsert",
                           {"page": "home", "section": {"type": "x"}})
                times.append(time.monotonic() - t0)
                assert ok(r)["version"] == 1, r
        others_done = time.monotonic() - t_lock
        locked_replies, _ = waiting.recv_for(rids)
        waited = time.monotonic() - t_lock
    finally:
        waiting.close()
        holder.join(hold_s + 10)
    # the locked tenants really were blocked the whole time, and the others
    # finished while the lock was still held
    assert others_done < hold_s - 0.2, others_done
    assert waited >= hold_s - 0.1, waited
    for r in locked_replies:
        assert ok(r)["version"] == 1, r
        assert r["timing"]["exec_us"] >= (hold_s - 0.4) * 1e6, r
    return times, locked_replies


def test_locked_tenant_does_not_block_its_shard(daemon_factory, db):
    """The issue: while one tenant's lock is held by a direct SQL session
    for 3 s, 16 sequential edits of other tenants on the same daemon each
    finish in well under 100 ms.  (Timing is the requirement here; the
    round trip measured by the client is typically 1-10 ms, so 100 ms has a
    wide margin even under ASan on a busy machine.)"""
    d = daemon_factory("--shards", 1, "--lock-timeout-ms", 5000)
    times, _ = _isolation(d, db, ["hol-locked"], 3.0)
    assert max(times) < ROUND_TRIP_LIMIT_S, ["%.1f ms" % (t * 1000) for t in times]


def test_two_locked_tenants_three_connections(daemon_factory, db):
    """Two tenants locked at once take two of three connections; the third
    keeps serving everyone else."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 3, "--lock-timeout-ms", 5000)
    times, _ = _isolation(d, db, ["hol-locked-1", "hol-locked-2"], 3.0)
    assert max(times) < ROUND_TRIP_LIMIT_S, ["%.1f ms" % (t * 1000) for t in times]


def test_single_connection_is_blocked(daemon_factory, db):
    """Control for the two tests above: with one connection per shard the
    same measurement does see the blocking (the other tenant waits for the
    lock holder), so the 100 ms bound is a real check."""
    d = daemon_factory("--shards", 1, "--connections-per-shard", 1, "--lock-timeout-ms", 5000)
    holder = _hold_locks(db, ["hol-only"], 1.0)
    try:
        with TaggedRawReq(d.endpoint) as waiting:
            rid = waiting.send(_edit("hol-only", "locked"))
            time.sleep(0.2)
            with Client(d.endpoint) as c:
                t0 = time.monotonic()
                r = c.call("hol-victim", "section.upsert",
                           {"page": "home", "section": {"type": "x"}})
                took = time.monotonic() - t0
            assert ok(r)["version"] == 1
            (locked,), _ = waiting.recv_for([rid])
            assert ok(locked)["version"] == 1
    finally:
        holder.join(15)
    assert took > 0.5, "the only connection was busy, yet the edit took %.3fs" % took

