"""systemd notifications (NOTIFY_SOCKET): READY=1 once every shard has a
database connection, RELOADING=1/READY=1 around a SIGHUP only while
serving, STOPPING=1 at SIGTERM.  A daemon that cannot reach its database is
never announced as ready, a SIGHUP included."""

import os
import signal
import socket
import tempfile
import time

from tqlib import Daemon


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tq-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.got = []

    def read(self, seconds):
        """Collect every message that arrives within seconds."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.got.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return self.got

    def lines(self):
        return [line for m in self.got for line in m.splitlines()]

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def test_ready_reload_stopping(daemon_factory, monkeypatch):
    n = NotifySocket()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", n.path)
        d = daemon_factory()
        n.read(0.5)
        assert "READY=1" in n.lines(), n.got
        n.got.clear()
        d.proc.send_signal(signal.SIGHUP)
        n.read(0.5)
        assert n.lines()[:1] == ["RELOADING=1"] and "READY=1" in n.lines(), n.got
        n.got.clear()
        d.stop()
        n.read(0.2)
        assert "STOPPING=1" in n.lines(), n.got
    finally:
        n.close()


def test_never_ready_without_a_database(monkeypatch):
    n = NotifySocket()
    d = None
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", n.path)
        d = Daemon("host=/nonexistent-tenantq-dir dbname=x connect_timeout=1", [])
        n.read(1.0)
        assert d.proc.poll() is None, d.tail()
        d.proc.send_signal(signal.SIGHUP)  # a reload must not announce it either
        n.read(1.0)
        assert "READY=1" not in n.lines(), n.got
        assert "cannot connect to the database" in d.log(), d.tail()
    finally:
        if d is not None:
            d.stop()
        n.close()
