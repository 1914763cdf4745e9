"""docs/configuration.md's reference table is the daemon's settings table:
every key with its flag, default, range and whether SIGHUP applies it, as
`tenantqd --help` prints them (config.c), so the document cannot drift.  On
a mismatch the test prints the table to paste."""

import os
import re
import subprocess

from tqlib import daemon_bin

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "configuration.md")
LINE = re.compile(r'^  --(\S+)\s+\[(\w+)\] (\w+) \(default "(.*?)"((?:; [^;):]+)*)\): (.*)$')


def expected_table():
    out = subprocess.run([daemon_bin(), "--help"], capture_output=True, text=True,
                         check=True).stdout
    rows = ["| key | flag | default | range | SIGHUP | meaning |", "|---|---|---|---|---|---|"]
    n = 0
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        flag, section, key, default, extra, help_ = m.groups()
        extras = [x.strip() for x in extra.split(";") if x.strip()]
        reload_ = "SIGHUP" in extras
        rng = ", ".join(x for x in extras if x != "SIGHUP")
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        rows.append("| `[%s] %s` | `--%s` | %s | %s | %s | %s |" % (
            section, key, flag, "`%s`" % cell(default) if default else "(empty)", rng,
            "yes" if reload_ else "no", cell(help_)))
        n += 1
    assert n >= 25, out
    return "\n".join(rows)


def test_reference_table_matches_the_daemon():
    with open(DOC) as f:
        doc = f.read()
    m = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", doc, re.S)
    assert m, "docs/configuration.md has no settings:begin/end markers"
    want = expected_table()
    assert m.group(1) == want, "docs/configuration.md is out of date; the table is:\n" + want
