"""Numbers the docs and man pages restate from the code are the code's:
each phrase below must appear in its document with the value of the named
#define, so changing a constant without its documentation (or the other way
round) fails here.  A phrase holds {} where the number goes ({:,} with
thousands separators)."""

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# (document, phrase with {} (or {:,}) for the value, source file, macro[, divisor: the
# document's unit, e.g. 1000 for a macro in ms stated in s])
CLAIMS = [
    ("docs/guarantees.md", "by shard 0, {} per", "daemon/sql.h", "SQL_CLEANUP_BATCH"),
    ("docs/guarantees.md", "while a pass finds a full {} the next", "daemon/sql.h", "SQL_CLEANUP_BATCH"),
    ("docs/guarantees.md", "the next follows {} ms later", "daemon/expiry.c", "EXPIRY_BEHIND_MS"),
    ("docs/guarantees.md", "a pass is due every {} s", "daemon/expiry.c", "EXPIRY_IDLE_S"),
    ("docs/guarantees.md", "but at most {} s", "daemon/expiry.c", "EXPIRY_MAX_WAIT_MS", 1000),
    ("docs/repair.md", "in pages of {} rows", "daemon/scan.h", "SCAN_PAGE_ROWS"),
    ("man/tenantqd.8.scd", "in pages of {} rows", "daemon/scan.h", "SCAN_PAGE_ROWS"),
    ("docs/sql-operations.md", "failing tenant's next {} batches", "daemon/lane.h", "LANE_ISOLATE_BATCHES"),
    ("docs/sql-operations.md", "restarts the {})", "daemon/lane.h", "LANE_ISOLATE_BATCHES"),
    ("docs/sql-operations.md", "at most {} requests in such a group", "daemon/txn.c", "STMT_GROUP_MAX"),
    ("docs/sql-operations.md", "| op file | {} KiB |", "daemon/opfile.h", "OPFILE_MAX_BYTES", 1024),
    ("docs/sql-operations.md", "(`:tenant` included) | {} |", "daemon/opfile.h", "OPFILE_MAX_PARAMS"),
    ("docs/sql-operations.md", "| parameter name | {} bytes |", "daemon/opfile.h", "OPFILE_NAME_MAX"),
    ("docs/sql-operations.md", "| `reject_if_empty` message | {} bytes |", "daemon/opfile.h",
     "OPFILE_MESSAGE_MAX"),
    ("docs/sql-operations.md", "| `lock_key` expression | {:,} bytes |", "daemon/opfile.h",
     "OPFILE_LOCK_KEY_MAX"),
    ("docs/sql-operations.md", "| op files per directory | {:,} |", "daemon/opset.h", "OPSET_MAX_OPS"),
    ("docs/sql-operations.md", "| op name | {} bytes |", "daemon/opset.h", "OPSET_NAME_MAX"),
    ("docs/sql-operations.md", "at most {} bytes. Built-in names", "daemon/opset.h", "OPSET_NAME_MAX"),
    ("docs/sql-operations.md", "**Text.** At most {} KiB", "daemon/opfile.h", "OPFILE_MAX_BYTES", 1024),
    ("docs/sql-operations.md", "starting with a letter or `_`, at most {} bytes", "daemon/opfile.h",
     "OPFILE_NAME_MAX"),
    ("docs/sql-operations.md", "A batch holds at most {} requests", "daemon/pg.h", "PG_MAX_REQUESTS"),
]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def macro(rel, name):
    m = re.search(r"^#define %s (\d+)\b" % re.escape(name), read(rel), re.M)
    assert m, "%s defines no %s" % (rel, name)
    return int(m.group(1))


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: "%s:%s" % (c[0], c[3]))
def test_documented_constant_is_the_code(claim):
    doc, phrase, src, name = claim[:4]
    value = macro(src, name) // (claim[4] if len(claim) > 4 else 1)
    text = " ".join(read(doc).split())  # (a phrase may be wrapped over lines)
    if phrase.format(value) in text:
        return
    # (what it says instead, for the message)
    found = re.findall(re.sub(r"\\\{[^}]*\\\}", r"([\\d,]+)", re.escape(phrase)), text)
    said = re.sub(r"\{[^}]*\}", "{}", phrase).format(found[0]) if found else "nothing like it"
    pytest.fail("%s: %r expected, it says %r (%s has %s = %d)" % (
        doc, phrase.format(value), said, src, name, value))
