"""Descriptor and memory exhaustion by local clients that log in to nothing.

Once, flooding the metrics port (loopback, no login) or holding more idle SP
connections than the daemon has descriptors left nanomsg's listener getting
EMFILE from accept() and retrying without pause: a core spun (11 s of CPU
in 16 s) and every new client timed out.  Now the metrics endpoint holds a
few connections at most and refuses the rest, the SP listeners stop
accepting at [daemon] max_clients (and start again below it), and the
memory that partial frames can pin is bounded by max_clients x
max_message_bytes plus the slack docs/security.md states.  Each daemon runs
with a low RLIMIT_NOFILE so that exhaustion is cheap."""

import errno
import os
import re
import resource
import socket
import struct
import time
import urllib.request

import pytest

from tqlib import Client, Daemon, NNTimeout, cpu_seconds, free_tcp_port, ok

LIMIT = 512
SP_REQ_HEADER = b"\x00SP\x00\x00\x30\x00\x00"  # SP protocol header of a REQ peer


def _limited(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _own_fd_room(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n:
        pytest.skip("the test needs %d descriptors of its own" % n)


def _ipc_path(d):
    return d.endpoint[len("ipc://"):]


def _hold_sp(path, n, seconds=5.0):
    """Up to n raw ipc connections that send the SP header of a REQ socket
    and then nothing.  Returns (held sockets, refused connects)."""
    held, refused = [], 0
    deadline = time.monotonic() + seconds
    while len(held) + refused < n and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex(path)
        if rc == 0:
            try:
                s.send(SP_REQ_HEADER)
            except OSError:
                pass
            held.append(s)
            continue
        s.close()
        if rc == errno.EAGAIN:       # the backlog is full: let the daemon accept
            time.sleep(0.001)
            continue
        refused += 1                 # ENOENT, ECONNREFUSED: not accepting
    return held, refused


def _cpu_over(pid, seconds):
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - c0


def _served_within(d, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with Client(d.endpoint, timeout_ms=1000) as c:
                ok(c.call("after-flood", "ping"))
                return
        except NNTimeout:
            assert time.monotonic() < deadline, "no client served again\n" + d.tail()


def test_metrics_flood_leaves_descriptors_for_clients(db):
    """More idle connections to the metrics port than the daemon has
    descriptors: it keeps a few and refuses the rest, so nanomsg's listener
    never meets EMFILE; a new SP client is served while the flood is held,
    the daemon stays idle, and /healthz answers once the flood is gone."""
    _own_fd_room(LIMIT + 400)
    port = free_tcp_port()
    d = Daemon(db.conninfo, ["--metrics-listen", "127.0.0.1:%d" % port, "--shards", "1"],
               preexec_fn=_limited(LIMIT))
    flood = []
    try:
        d.wait_ready()
        for _ in range(LIMIT + 200):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            flood.append(s)
        time.sleep(0.5)
        c0 = cpu_seconds(d.pid)
        with Client(d.endpoint, timeout_ms=2000) as c:
            try:
                ok(c.call("during-flood", "ping"))
            except NNTimeout:
                raise AssertionError("a new client was not served while the metrics port was "
                                     "flooded\n" + d.tail())
        used = cpu_seconds(d.pid) - c0 + _cpu_over(d.pid, 2)
        assert used < 0.5, "the daemon used %.2f s of CPU while flooded" % used
        fds = len(os.listdir("/proc/%d/fd" % d.pid))
        assert fds < 100, "the daemon holds %d descriptors for a flood of idle connections" % fds
        for s in flood:
            s.close()
        flood = []
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port,
                                            timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, d.tail()
                time.sleep(0.2)
        log = d.log()
        assert "cannot accept a connection" not in log, d.tail()
        assert 1 <= log.count("metrics: refusing connections") <= 12, d.tail()
        assert len(log) < 100000
        # every line is one of the daemon's (journal prefix or timestamp), none
        # a bare message from a library
        ours = re.compile(r"^(<[0-7]>|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [a-z]+: )")
        bare = [line for line in log.splitlines() if line and not ours.match(line)]
        assert bare == [], bare[:5]
    finally:
        for s in flood:
            s.close()
        d.stop()


def test_idle_clients_beyond_max_clients_are_refused(db):
    """Far more idle SP connections than descriptors: the listener stops
    accepting at max_clients (logged once), the daemon stays idle instead of
    spinning on EMFILE, and once the idle connections close new clients are
    served again."""
    _own_fd_room(LIMIT + 600)
    d = Daemon(db.conninfo, ["--shards", "1", "--max-clients", "40"],
               preexec_fn=_limited(LIMIT))
    held = []
    try:
        d.wait_ready()
        held, refused = _hold_sp(_ipc_path(d), LIMIT + 300)
        assert refused > 0, "every one of %d connections was accepted" % len(held)
        used = _cpu_over(d.pid, 2)
        assert used < 0.5, "the daemon used %.2f s of CPU while full" % used
        fds = len(os.listdir("/proc/%d/fd" % d.pid))
        assert fds < LIMIT - 64, "the daemon holds %d of its %d descriptors" % (fds, LIMIT)
        with Client(d.endpoint, timeout_ms=500) as c:
            with pytest.raises(NNTimeout):
                c.call("while-full", "ping")
        for s in held:
            s.close()
        held = []
        _served_within(d, 10)
        log = d.log()
        assert log.count("stopped accepting") == 1, d.tail()
        assert "accepting clients again" in log, d.tail()
    finally:
        for s in held:
            s.close()
        d.stop()


def test_idle_tcp_clients_beyond_max_clients_are_refused(db):
    """The same over tcp: at max_clients the listener's SYNs go unanswered
    (a socket filter), the connections it holds stay, and once they close
    new clients connect and are served."""
    _own_fd_room(LIMIT + 600)
    port = free_tcp_port()
    d = Daemon(db.conninfo, ["--shards", "1", "--max-clients", "40",
                             "--listen", "tcp://127.0.0.1:%d" % port],
               preexec_fn=_limited(LIMIT))
    d.endpoint = "tcp://127.0.0.1:%d" % port
    held, refused = [], 0
    try:
        d.wait_ready()
        deadline = time.monotonic() + 10
        while len(held) < LIMIT + 300 and refused < 5 and time.monotonic() < deadline:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=0.3)
            except OSError:
                refused += 1
                continue
            s.send(SP_REQ_HEADER)
            held.append(s)
        assert refused == 5, "%d connections held and none refused" % len(held)
        used = _cpu_over(d.pid, 2)
        assert used < 0.5, "the daemon used %.2f s of CPU while full" % used
        fds = len(os.listdir("/proc/%d/fd" % d.pid))
        assert fds < LIMIT - 64, "the daemon holds %d of its %d descriptors" % (fds, LIMIT)
        for s in held:
            s.close()
        held = []
        _served_within(d, 15)
        assert d.log().count("stopped accepting") == 1, d.tail()
    finally:
        for s in held:
            s.close()
        d.stop()


def test_partial_frames_memory_is_bounded_by_max_clients(db):
    """100 connections each sending all but the last byte of a frame that
    declares max_message_bytes - 1: nanomsg holds a buffer of the declared
    size for each connection it accepted, so the daemon's growth stays under
    (max_clients + slack) x max_message_bytes (docs/security.md), not
    100 x max_message_bytes."""
    _own_fd_room(LIMIT + 300)
    max_clients, mib = 20, 1 << 20
    d = Daemon(db.conninfo, ["--shards", "1", "--max-clients", str(max_clients),
                             "--max-message-bytes", str(mib)],
               preexec_fn=_limited(LIMIT))
    held = []
    try:
        d.wait_ready()
        base = d.rss_kb()
        body = b"x" * (mib - 2)
        frame = b"\x01" + struct.pack(">Q", mib - 1) + body
        path = _ipc_path(d)
        refused = 0
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                refused += 1
                time.sleep(0.01)
                continue
            s.settimeout(2)
            try:
                s.sendall(SP_REQ_HEADER + frame)
            except OSError:
                pass  # not accepted (the backlog): the kernel holds it, not the daemon
            held.append(s)
        time.sleep(1)
        grown_mib = (d.rss_kb() - base) / 1024
        slack = 10 + 10  # the ipc backlog and what one check can let in
        assert refused > 0
        assert grown_mib < max_clients + slack, "RSS grew by %.0f MiB" % grown_mib
        print("RSS grew by %.1f MiB with %d connections held, %d refused" % (
            grown_mib, len(held), refused))
        for s in held:
            s.close()
        held = []
        _served_within(d, 10)
    finally:
        for s in held:
            s.close()
        d.stop()


def test_max_clients_that_the_descriptor_limit_cannot_fit_is_refused(db):
    d = Daemon(db.conninfo, ["--shards", "1", "--max-clients", "100000"],
               preexec_fn=_limited(LIMIT))
    try:
        assert d.proc.wait(timeout=10) == 2, d.tail()
        log = d.log()
        assert "[daemon] max_clients" in log and "descriptor" in log, log
    finally:
        if d.proc.poll() is None:
            d.stop()
        d._log.close()
