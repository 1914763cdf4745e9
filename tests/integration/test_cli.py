"""The tenantq command-line tool against a real daemon: result JSON on
stdout, `CODE: message` on stderr with exit 1 for daemon errors, 2 for usage
errors, 3 for timeouts/transport."""

import json
import os
import tempfile
import time

from tqlib import cli, free_tcp_port, metric_value

UPSERT = '{"page":"home","section":{"type":"hero"}}'


def test_call_prints_result_json(daemon, db):
    p = cli("-e", daemon.endpoint, "call", "acme", "section.upsert", UPSERT)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    res = json.loads(p.stdout)
    assert res == {"id": "home-hero-main", "page": "home", "index": 0,
                   "created": True, "version": 1}
    assert db.sections("acme", "home") == [{"id": "home-hero-main", "type": "hero"}]

    p = cli("-e", daemon.endpoint, "call", "acme", "draft.get")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"draft": {"pages": {"home": {"sections": [
        {"id": "home-hero-main", "type": "hero"}]}}}, "version": 1}


def test_daemon_error_exits_1(daemon, db):
    dup = '{"page":"home","section":{"id":"x","type":"hero"}}'
    p = cli("-e", daemon.endpoint, "call", "acme", "section.upsert", dup)
    assert p.returncode == 0, p.stderr
    p = cli("-e", daemon.endpoint, "call", "acme", "section.upsert", dup)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("DUPLICATE_SECTION_ID:"), p.stderr
    assert '"x"' in p.stderr
    assert p.stdout == ""
    assert db.row("acme")["version"] == 1


def test_usage_errors_exit_2(daemon, db):
    for args in (["call", "acme", "section.upsert", "{not json"],
                 ["call", "acme", "section.upsert", "[1,2]"],
                 ["call", "acme"],
                 ["frobnicate"],
                 []):
        p = cli("-e", daemon.endpoint, *args)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert p.stderr.strip(), args
    assert db.snapshot() == []


def test_usage_errors_say_what_is_wrong(daemon, db):
    """Each of these was reported misleadingly: nesting as "out of memory", a
    huge timeout as "expected milliseconds > 0", a port beyond 65535 as a
    transport error (exit 3)."""
    deep = '{"page":"home","section":{"type":"hero","x":' + '[' * 40 + ']' * 40 + '}}'
    cases = [
        (["-e", daemon.endpoint, "call", "acme", "section.upsert", deep],
         "USAGE: args nest deeper than 31 levels"),
        (["-e", daemon.endpoint, "-t", "99999999999999", "call", "acme", "draft.get"],
         "expected 1..2147483647 milliseconds"),
        (["-e", daemon.endpoint, "-d", "99999999999", "call", "acme", "draft.get"],
         "expected 1..4294967295 milliseconds"),
        (["-e", "tcp://127.0.0.1:99999", "call", "acme", "draft.get"],
         'USAGE: invalid endpoint "tcp://127.0.0.1:99999"'),
        (["-e", "tcp://127.0.0.1", "call", "acme", "draft.get"], "USAGE: invalid endpoint"),
    ]
    for args, want in cases:
        p = cli(*args)
        assert p.returncode == 2 and want in p.stderr, (args, p.returncode, p.stderr)
    assert db.snapshot() == []


def test_ping_and_env_endpoint(daemon, db):
    p = cli("-e", daemon.endpoint, "ping")
    assert p.returncode == 0 and "pong" in p.stdout, (p.returncode, p.stdout, p.stderr)
    p = cli("ping", env={"TENANTQ_ENDPOINT": daemon.endpoint})
    assert p.returncode == 0 and "pong" in p.stdout, (p.returncode, p.stdout, p.stderr)
    p = cli("call", "acme", "section.upsert", UPSERT,
            env={"TENANTQ_ENDPOINT": daemon.endpoint})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == "home-hero-main"


def test_unreachable_exits_3(db):
    d = tempfile.mkdtemp(prefix="tq-it-")
    ep = "ipc://%s/nobody.sock" % d
    try:
        p = cli("-e", ep, "-t", "300", "ping", timeout=10)
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
        p = cli("-e", ep, "-t", "300", "call", "acme", "section.upsert", UPSERT, timeout=10)
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
        assert p.stderr.strip()
    finally:
        os.rmdir(d)
    assert db.snapshot() == []


def test_failover_to_the_next_endpoint(daemon_factory, db):
    """Two daemons on one database, both listed: every tenant is served
    while one of them is down, its tenants by the other (the contract: a tenant goes
    to its rendezvous endpoint while that endpoint is up), each call well
    before its timeout; edits land exactly once."""
    port = free_tcp_port()
    d1 = daemon_factory("--metrics-listen", "127.0.0.1:%d" % port)
    d2 = daemon_factory()
    eps = "%s,%s" % (d1.endpoint, d2.endpoint)
    tenants = ["fo-%d" % i for i in range(12)]
    for t in tenants:
        p = cli("-e", eps, "-t", "5000", "call", t, "section.upsert", UPSERT)
        assert p.returncode == 0, (t, p.returncode, p.stderr)
        assert json.loads(p.stdout)["version"] == 1, p.stdout
    on_d1 = metric_value(port, "tenantq_transactions_total")
    assert 1 <= on_d1 < len(tenants), "tenants served by the first daemon: %d" % on_d1
    d1.stop()
    for t in tenants:
        start = time.monotonic()
        p = cli("-e", eps, "-t", "5000", "call", t, "section.upsert",
                '{"page":"home","section":{"type":"text"}}')
        took = time.monotonic() - start
        assert p.returncode == 0, (t, p.returncode, p.stderr)
        assert json.loads(p.stdout)["version"] == 2, p.stdout
        assert took < 3.0, (t, took)
    for t in tenants:
        assert db.row(t)["version"] == 2, t
        assert [s["type"] for s in db.sections(t, "home")] == ["hero", "text"], t
    # a client that lists only the stopped daemon still times out (exit 3)
    p = cli("-e", d1.endpoint, "-t", "300", "call", "fo-0", "draft.get")
    assert p.returncode == 3 and p.stderr.startswith("TIMEOUT:"), (p.returncode, p.stderr)
