"""Log lines: outside the journal (no JOURNAL_STREAM, or one naming another
file than stderr) each line starts with an ISO-8601 UTC timestamp and a level
word; when stderr is the stream JOURNAL_STREAM names (as systemd sets it),
the syslog priority prefix ("<5>") that journald turns into a priority."""

import os
import re
import subprocess
import tempfile
import time

from tqlib import daemon_bin

TEXT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                  r"(emerg|alert|crit|err|warning|notice|info|debug): \S")
JOURNAL = re.compile(r"^<[0-7]>\S")


def _run(conninfo, journal_stream):
    """Start tenantqd with stderr on a fresh file, wait for "ready", stop it
    (exit 0), return its lines.  journal_stream(stat of that file) gives the
    JOURNAL_STREAM value, or None to leave it unset."""
    d = tempfile.mkdtemp(prefix="tq-logs-")
    errf, conf = os.path.join(d, "stderr.log"), os.path.join(d, "tenantqd.conf")
    with open(conf, "w") as f:
        f.write("; log format test\n")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(errf, "wb") as ef:
        js = journal_stream(os.fstat(ef.fileno()))
        if js is not None:
            env["JOURNAL_STREAM"] = js
        p = subprocess.Popen([daemon_bin(), "-c", conf, "--listen", "ipc://%s/tq.sock" % d,
                              "--database", conninfo, "--metrics-listen", ""],
                             stdin=subprocess.DEVNULL, stdout=ef, stderr=subprocess.STDOUT,
                             env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            with open(errf, errors="replace") as f:
                if "ready" in f.read():
                    break
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.terminate()
        rc = p.wait(30)
    with open(errf, errors="replace") as f:
        lines = [l for l in f.read().splitlines() if l]
    assert rc == 0, (rc, lines)
    assert any("ready" in l for l in lines), lines
    return lines


def test_timestamp_and_level_outside_the_journal(db):
    lines = _run(db.conninfo, lambda st: None)
    assert all(TEXT.match(l) for l in lines), lines
    assert any(re.search(r"Z notice: ready: ", l) for l in lines), lines


def test_journal_stream_naming_another_file_is_not_the_journal(db):
    other = os.stat("/dev/null")
    lines = _run(db.conninfo, lambda st: "%d:%d" % (other.st_dev, other.st_ino))
    assert all(TEXT.match(l) for l in lines), lines


def test_priority_prefix_when_stderr_is_the_journal_stream(db):
    lines = _run(db.conninfo, lambda st: "%d:%d" % (st.st_dev, st.st_ino))
    assert all(JOURNAL.match(l) for l in lines), lines
    assert any(l.startswith("<5>ready: ") for l in lines), lines
