"""Who can reach the ipc socket, on every path that starts the daemon.

Any local peer that can connect can abort the daemon inside nanomsg 1.1.5
with a malformed ipc frame (a frame type byte other than 1), before a
request or its token exists.  So connecting must stay with the service's
group: the socket file is 0770 whatever umask the daemon was started with,
the directories the unit and scripts/run make are 0750, the unit restarts
the daemon on failure, and the startup warning about a directory others
can enter says what really guards the socket (once it said "anyone can
connect" where the socket itself was 0770)."""

import os
import re
import stat
import tempfile

from tqlib import Daemon

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def _unit_settings():
    settings = {}
    for line in _read("systemd/tenantqd.service.in").splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            settings.setdefault(m.group(1), []).append(m.group(2))
    return settings


def test_unit_restarts_on_failure_and_keeps_the_socket_to_its_group():
    u = _unit_settings()
    assert u["Restart"] == ["on-failure"], u.get("Restart")
    assert u["RuntimeDirectory"] == ["tenantq"]
    assert u["RuntimeDirectoryMode"] == ["0750"]
    assert u["UMask"] == ["0007"]
    assert u["Group"] == ["tenantq"] and u["User"] == ["tenantq"]
    conf = _read("systemd/tenantqd.conf")
    assert re.search(r"^listen = ipc:///run/tenantq/", conf, re.M), "the default socket is not " \
        "in the unit's RuntimeDirectory"


def test_scripts_run_makes_its_socket_directory_group_only():
    run = _read("scripts/run")
    made = run.index('mkdir -p "$state/run"')
    chmod = run.index('chmod 0750 "$state/run"')
    assert made < chmod < run.index('"$build/daemon/tenantqd"'), \
        "scripts/run must make the directory 0750 before it starts the daemon"
    assert re.search(r'^endpoint=ipc://\$state/run/', run, re.M), "scripts/run's socket is elsewhere"


def test_socket_file_is_group_only_whatever_the_umask(db):
    d = Daemon(db.conninfo, ["--shards", "1"], preexec_fn=lambda: os.umask(0))
    try:
        d.wait_ready()
        st = os.stat(d.endpoint[len("ipc://"):])
        assert stat.S_ISSOCK(st.st_mode)
        assert st.st_mode & 0o777 == 0o770, oct(st.st_mode)
    finally:
        d.stop()


def test_directory_warning_says_what_guards_the_socket(db):
    with tempfile.TemporaryDirectory(prefix="tq-open-") as open_dir:
        os.chmod(open_dir, 0o755)
        endpoint = "ipc://%s/tq.sock" % open_dir
        d = Daemon(db.conninfo, ["--shards", "1", "--listen", endpoint])
        d.endpoint = endpoint
        try:
            d.wait_ready()
            log = d.log()
            assert "can be entered by every local user (mode 755)" in log, d.tail()
            assert "only the socket's own mode 770 keeps them from connecting" in log, d.tail()
            assert "anyone can connect" not in log, d.tail()
        finally:
            d.stop()
