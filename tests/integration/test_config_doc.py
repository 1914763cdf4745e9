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


CATALOG = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(co.collname, ''), coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
       a.attcompression
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1, a.attnum"""
INDEXES = """
SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' ON \\S+\\.', ' ON ')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 1"""


def test_documented_schema_is_what_init_db_creates(db):
    with open(DOC) as f:
        doc = f.read()
    block = re.search(r"The default schema.*?```sql\n(.*?)```", doc, re.S).group(1)
    p = subprocess.run([daemon_bin(), "--database", db.conninfo, "--schema", "tq_doc_made",
                        "--init-db"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    try:
        with db.connect() as c:
            c.execute("CREATE SCHEMA tq_doc_written")
            c.execute("SET search_path = tq_doc_written")
            c.execute(block)
            got = [c.execute(CATALOG, (s,)).fetchall() for s in ("tq_doc_made", "tq_doc_written")]
            idx = [c.execute(INDEXES, (s,)).fetchall() for s in ("tq_doc_made", "tq_doc_written")]
        assert len(got[0]) == 10, got[0]
        assert got[0] == got[1], "the documented schema differs from --init-db's"
        assert idx[0] == idx[1] and len(idx[0]) == 3, idx
    finally:
        with db.connect() as c:
            c.execute("DROP SCHEMA IF EXISTS tq_doc_made CASCADE")
            c.execute("DROP SCHEMA IF EXISTS tq_doc_written CASCADE")
