"""The authenticated listener: with [daemon] auth_token_file every request
must carry the file's token as the envelope key auth (UNAUTHENTICATED
otherwise, before anything is queued); without it auth is ignored.  Also:
the counter in /metrics, the token never in the log, SIGHUP re-reading the
file, the refusal of bad files at start (exit 2 naming the key), and the
CLI's $TENANTQ_AUTH_TOKEN and --auth-token-file."""

import os
import secrets
import signal
import time

import pytest

from tqlib import (Client, Daemon, cli, err, free_tcp_port, metrics_counters, ok,
                   run_tenantqd)

KEY = "[daemon] auth_token_file"
UNAUTH = 'op="invalid",code="UNAUTHENTICATED"'


def _token_file(path, token, mode=0o600, text=None):
    path.write_text(token + "\n" if text is None else text)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def token():
    return "tq-" + secrets.token_hex(16)


@pytest.fixture
def authd(daemon_factory, tmp_path, token):
    """A daemon whose token file holds token (with a trailing newline)."""
    path = _token_file(tmp_path / "token", token)
    d = daemon_factory("--auth-token-file", path, auth=token)
    d.token_path = path
    return d


def _wait_for(pred, what, limit=5.0):
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_missing_wrong_and_right_auth(authd, db, token):
    up = {"page": "home", "section": {"type": "hero"}}
    with Client(authd.endpoint) as c:
        refused = [
            c.call("acme", "section.upsert", up, key="k1"),                   # missing
            c.call("acme", "section.upsert", up, key="k1", auth=None),        # nil = missing
            c.call("acme", "section.upsert", up, key="k1",
                   auth="x" * len(token)),                                    # wrong, same length
            c.call("acme", "section.upsert", up, key="k1", auth=token[:-1]),  # a prefix
            c.call("acme", "section.upsert", up, key="k1", auth=token + "x"),  # longer
            c.call("acme", "section.upsert", up, key="k1", auth=token + "\n"),  # file's newline
            c.call("acme", "section.upsert", up, key="k1", auth=""),
            c.call("acme", "section.upsert", up, key="k1", auth=token.encode()),  # bin, not str
            c.call("acme", "section.upsert", up, key="k1", auth=7),
            c.call("acme", "no.such.op", auth="wrong"),  # before the op is looked at
            c.call("acme", "ping"),
        ]
        for r in refused:
            e = err(r, "UNAUTHENTICATED", retryable=False)
            assert "auth" in e["message"] and "nothing was queued" in e["message"], e
            assert token not in e["message"], e
        # nothing was queued: no row, and the key is still free
        assert db.row("acme") is None
        res = ok(c.call("acme", "section.upsert", up, key="k1", auth=token))
        assert res["version"] == 1 and res["created"] is True
        assert ok(c.call("acme", "ping", auth=token)) == {"pong": True}
        err(c.call("acme", "no.such.op", auth=token), "UNKNOWN_OP")
    assert db.row("acme")["version"] == 1


def test_auth_ignored_without_a_token_file(daemon):
    with Client(daemon.endpoint) as c:
        assert ok(c.call("t", "ping")) == {"pong": True}
        assert ok(c.call("t", "ping", auth="anything")) == {"pong": True}
        assert ok(c.call("t", "ping", auth=12)) == {"pong": True}
        assert ok(c.call("t", "section.upsert", {"page": "p", "section": {"type": "x"}},
                         auth=""))["version"] == 1


def test_failures_counted_in_metrics(daemon_factory, tmp_path, token):
    port = free_tcp_port()
    path = _token_file(tmp_path / "token", token)
    d = daemon_factory("--auth-token-file", path, "--metrics-listen", "127.0.0.1:%d" % port,
                       auth=token)
    before = metrics_counters(port).get(UNAUTH, 0)
    with Client(d.endpoint) as c:
        for i in range(5):
            err(c.call("m", "ping", auth="nope-%d" % i), "UNAUTHENTICATED")
        err(c.call("m", "draft.get"), "UNAUTHENTICATED")
        ok(c.call("m", "ping", auth=token))
    counters = metrics_counters(port)
    assert counters.get(UNAUTH, 0) - before == 6, counters
    assert counters.get('op="ping",code="OK"', 0) >= 1, counters


def test_token_never_in_the_log_and_sighup_rereads(daemon_factory, tmp_path, token):
    path = _token_file(tmp_path / "token", token)
    d = daemon_factory("--auth-token-file", path, "--log-level", "debug", auth=token)
    new = "tq-" + secrets.token_hex(16)
    with Client(d.endpoint) as c:
        err(c.call("h", "ping", auth=token[:8]), "UNAUTHENTICATED")
        ok(c.call("h", "ping", auth=token))
        # a new token: after SIGHUP the old one is refused, the new one accepted
        _token_file(tmp_path / "token", new)
        os.kill(d.pid, signal.SIGHUP)
        _wait_for(lambda: not c.call("h", "ping", auth=token)["ok"], "old token still accepted")
        err(c.call("h", "ping", auth=token), "UNAUTHENTICATED")
        assert ok(c.call("h", "ping", auth=new)) == {"pong": True}
        d.auth = new
        # a failed re-read (empty, blank, readable by others, gone) keeps the
        # token in use and warns
        for text, mode in (("", 0o600), ("\n", 0o600), (token + "\n", 0o644), (None, None)):
            warned = d.log().count("keeping the token read before")
            if text is None:
                os.unlink(path)
            else:
                _token_file(tmp_path / "token", "", text=text, mode=mode)
            os.kill(d.pid, signal.SIGHUP)
            _wait_for(lambda: d.log().count("keeping the token read before") > warned,
                      "no warning for a bad file on SIGHUP (%r)" % text)
            assert ok(c.call("h", "ping", auth=new)) == {"pong": True}
            err(c.call("h", "ping", auth=token), "UNAUTHENTICATED")
        assert "accessible by other users" in d.log()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(15)
    log = d.log()
    assert KEY in log and "warning" in log, log
    for secret in (token, new, token[:8]):
        assert secret not in log, "a token is in the daemon's log:\n" + log


def test_sighup_does_not_turn_authentication_off(daemon_factory, tmp_path, token):
    """A config file that loses the key keeps the token (a restart turns it
    off); one that gains it turns authentication on."""
    path = _token_file(tmp_path / "token", token)
    conf = tmp_path / "tenantqd.conf"
    conf.write_text("[daemon]\nauth_token_file = %s\n" % path)
    d = daemon_factory("-c", str(conf), auth=token)
    with Client(d.endpoint) as c:
        conf.write_text("[daemon]\n")
        os.kill(d.pid, signal.SIGHUP)
        _wait_for(lambda: "needs a restart" in d.log(), "no warning for the removed key")
        err(c.call("h", "ping"), "UNAUTHENTICATED")
        ok(c.call("h", "ping", auth=token))

    conf2 = tmp_path / "open.conf"
    conf2.write_text("[daemon]\n")
    d2 = daemon_factory("-c", str(conf2))
    with Client(d2.endpoint) as c:
        ok(c.call("h", "ping"))
        conf2.write_text("[daemon]\nauth_token_file = %s\n" % path)
        os.kill(d2.pid, signal.SIGHUP)
        _wait_for(lambda: not c.call("h", "ping")["ok"], "authentication not turned on")
        err(c.call("h", "ping"), "UNAUTHENTICATED")
        ok(c.call("h", "ping", auth=token))
        d2.auth = token


@pytest.mark.parametrize("case,expect", [
    ("absent", "cannot open"),
    ("empty", "holds no token"),
    ("blank", "holds no token"),
    ("mode0644", "accessible by other users"),
    ("mode0601", "accessible by other users"),
    ("directory", "not a regular file"),
    ("too-long", "longer than 4096 bytes"),
    ("control", "control character"),
])
def test_bad_token_file_refused_at_start(tmp_path, db, case, expect):
    p = tmp_path / "token"
    if case == "empty":
        _token_file(p, "", text="")
    elif case == "blank":
        _token_file(p, "", text=" \n\t\r\n")
    elif case == "mode0644":
        _token_file(p, "secret", mode=0o644)
    elif case == "mode0601":
        _token_file(p, "secret", mode=0o601)
    elif case == "directory":
        p.mkdir(mode=0o700)
    elif case == "too-long":
        _token_file(p, "a" * 4097)
    elif case == "control":
        _token_file(p, "sec\tret")
    r = run_tenantqd("--auth-token-file", str(p), "--check-config", "--database", db.conninfo)
    assert r.returncode == 2, r
    assert KEY in r.stderr and expect in r.stderr, r.stderr
    r = run_tenantqd("--auth-token-file", str(p), "--database", db.conninfo, "--listen",
                     "ipc://%s/x.sock" % tmp_path, "--metrics-listen", "", timeout=30)
    assert r.returncode == 2, r
    assert KEY in r.stderr and expect in r.stderr, r.stderr


def test_good_token_file_passes_check_config(tmp_path, db):
    p = _token_file(tmp_path / "token", "  leading blanks stay, trailing go", mode=0o640,
                    text="  leading blanks stay, trailing go \t\r\n\n")
    r = run_tenantqd("--auth-token-file", p, "--check-config", "--database", db.conninfo)
    assert r.returncode == 0, r
    assert "configuration OK" in r.stdout


def test_leading_blanks_are_part_of_the_token(daemon_factory, tmp_path):
    tok = "  padded token"
    p = _token_file(tmp_path / "token", tok, text=tok + " \r\n")
    d = daemon_factory("--auth-token-file", p, auth=tok)
    with Client(d.endpoint) as c:
        ok(c.call("t", "ping", auth=tok))
        err(c.call("t", "ping", auth=tok.strip()), "UNAUTHENTICATED")


def _with_tcp(factory, tmp_path, name, *extra, auth=None):
    """A ready daemon on an ipc socket of its own and tcp://0.0.0.0:PORT;
    returns (daemon, port)."""
    port = free_tcp_port()
    ipc = "ipc://%s/%s.sock" % (tmp_path, name)
    d = Daemon(factory.conninfo, [*extra, "--listen", "%s,tcp://0.0.0.0:%d" % (ipc, port)],
               auth=auth)
    d.endpoint = ipc
    factory.daemons.append(d)
    d.wait_ready()
    return d, port


def test_tcp_warning_names_the_key(daemon_factory, tmp_path, token):
    path = _token_file(tmp_path / "token", token)
    open_d, _ = _with_tcp(daemon_factory, tmp_path, "a")
    assert "without [daemon] auth_token_file" in open_d.log(), open_d.log()
    d, port = _with_tcp(daemon_factory, tmp_path, "b", "--auth-token-file", path, auth=token)
    assert "in clear" in d.log() and "without [daemon]" not in d.log(), d.log()
    # and the tcp endpoint checks the token too
    with Client("tcp://127.0.0.1:%d" % port) as c:
        err(c.call("t", "ping"), "UNAUTHENTICATED")
        ok(c.call("t", "ping", auth=token))


def test_cli_env_and_file(authd, tmp_path, token):
    ep = authd.endpoint
    r = cli("-e", ep, "ping")
    assert r.returncode == 1 and r.stderr.startswith("UNAUTHENTICATED: "), r
    r = cli("-e", ep, "ping", env={"TENANTQ_AUTH_TOKEN": token})
    assert r.returncode == 0 and r.stdout == "pong\n", r
    r = cli("-e", ep, "call", "c", "section.upsert", '{"page":"p","section":{"type":"x"}}',
            env={"TENANTQ_AUTH_TOKEN": token})
    assert r.returncode == 0 and '"version":1' in r.stdout, r
    r = cli("-e", ep, "ping", env={"TENANTQ_AUTH_TOKEN": "wrong"})
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, r
    # the file (its trailing newline removed), which wins over the environment
    r = cli("-e", ep, "--auth-token-file", authd.token_path, "ping")
    assert r.returncode == 0 and r.stdout == "pong\n", r
    r = cli("-e", ep, "-a", authd.token_path, "ping", env={"TENANTQ_AUTH_TOKEN": "wrong"})
    assert r.returncode == 0 and r.stdout == "pong\n", r
    wrong = _token_file(tmp_path / "wrong", "wrong")
    r = cli("-e", ep, "-a", wrong, "ping", env={"TENANTQ_AUTH_TOKEN": token})
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, r
    # repair goes through the same client
    r = cli("-e", ep, "-a", authd.token_path, "repair", "--dry-run")
    assert r.returncode == 0 and '"tenants":0' in r.stdout, r
    # a missing or empty file is a usage error, nothing is sent
    r = cli("-e", ep, "-a", str(tmp_path / "absent"), "ping")
    assert r.returncode == 2 and "--auth-token-file" in r.stderr, r
    empty = _token_file(tmp_path / "empty", "", text="\n")
    r = cli("-e", ep, "-a", empty, "ping")
    assert r.returncode == 2 and "USAGE" in r.stderr, r
    for out in (r.stdout, r.stderr):
        assert token not in out
