"""Configuration: --check-config accepts a file of every key, rejects bad values
and unknown keys naming the key (file and flag), --init-db is idempotent."""

import os
import tempfile

import psycopg
import pytest

from tqlib import (create_database, drop_database, init_db, linked_jemalloc, run_tenantqd,
                   sanitized_build)

GOOD = """\
; every key, with its default
[daemon]
listen = ipc:///run/tenantq/tenantqd.sock
shards = 4
connections_per_shard = 2
max_batch = 64
max_queue_per_tenant = 1024
max_pending = 100000
max_message_bytes = 1048576
default_deadline_ms = 10000
shutdown_grace_ms = 10000
idempotency_ttl_s = 86400
auth_token_file =

[database]
conninfo = host=/nonexistent dbname=tenantq
lock_key_sql = hashtextextended('tenantq:' || $1, 0)
lock_timeout_ms = 5000
statement_timeout_ms = 10000

[storefront]
max_draft_bytes = 1048576

[metrics]
listen = 127.0.0.1:9464

[ops]
dir =
"""


@pytest.fixture
def confdir():
    d = tempfile.mkdtemp(prefix="tq-conf-")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


def _write(d, text, name="tenantqd.conf"):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def test_check_config_good(confdir):
    p = run_tenantqd("-c", _write(confdir, GOOD), "--check-config")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert (p.stdout + p.stderr).strip(), "--check-config printed nothing"
    # flags on top of the file
    p = run_tenantqd("-c", _write(confdir, GOOD), "--shards", "8", "--max-batch=16",
                     "--metrics-listen", "", "--check-config")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("section,line,key", [
    ("daemon", "shards = 0", "shards"),
    ("daemon", "shards = abc", "shards"),
    ("daemon", "shards = 4x", "shards"),
    ("daemon", "max_batch = -1", "max_batch"),
    ("daemon", "max_batch_tenants = 0", "max_batch_tenants"),
    ("daemon", "max_batch_tenants = 33", "max_batch_tenants"),
    ("daemon", "max_message_bytes = 99999999999999999999", "max_message_bytes"),
    ("database", "lock_timeout_ms = soon", "lock_timeout_ms"),
    ("daemon", "bogus_key = 1", "bogus_key"),
    ("nosuchsection", "x = 1", "nosuchsection"),
])
def test_check_config_bad_file(confdir, section, line, key):
    text = GOOD.replace("[%s]\n" % section, "[%s]\n%s\n" % (section, line))
    if "[%s]" % section not in GOOD:
        text = GOOD + "\n[%s]\n%s\n" % (section, line)
    p = run_tenantqd("-c", _write(confdir, text), "--check-config")
    assert p.returncode != 0, "accepted %r: %s%s" % (line, p.stdout, p.stderr)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert key in p.stderr, "stderr does not name %r: %s" % (key, p.stderr)


@pytest.mark.parametrize("flags,key", [
    (["--shards", "0"], "shards"),
    (["--shards=abc"], "shards"),
    (["--lock-timeout-ms", "x"], "lock"),
    (["--no-such-flag", "1"], "no-such-flag"),
    # values only a parser of their own can judge: refused here, not at
    # start (a bind failure, or a connection retried for ever)
    (["--metrics-listen", "nonsense"], "[metrics] listen"),
    (["--metrics-listen", "127.0.0.1:"], "[metrics] listen"),
    (["--database", "host=/tmp bogus_option=1"], "[database] conninfo"),
    (["--database", "postgresql://[broken"], "[database] conninfo"),
    (["--listen", "tcp://127.0.0.1:abc"], "listen"),
    (["--listen", "tcp://127.0.0.1:70000"], "listen"),
    (["--listen", "ipc:///tmp/" + "x" * 120], "listen"),
    # each of these passed the check and then failed at start, or ran on
    # nothing / on defaults
    (["--listen", " , "], "names no endpoint"),
    (["--listen", "tcp://localhost:7000"], "IPv4 address"),
    (["--listen", "tcp://[::1]:7000"], "IPv4 address"),
    (["--shards"], "needs a value"),
    (["--shards", "--max-batch", "8"], "needs a value"),
])
def test_check_config_bad_flag(confdir, flags, key):
    p = run_tenantqd("-c", _write(confdir, GOOD), *flags, "--check-config")
    assert p.returncode == 2, (flags, p.returncode, p.stdout, p.stderr)
    assert key in p.stderr, "stderr does not name %r: %s" % (key, p.stderr)


def test_config_file_that_is_a_directory_is_refused(confdir):
    p = run_tenantqd("-c", confdir, "--check-config")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "is a directory" in p.stderr and confdir in p.stderr, p.stderr


def test_key_set_twice_in_the_file_is_refused(confdir):
    text = GOOD.replace("shards = 4\n", "shards = 4\nmax_batch = 8\nshards = 2\n")
    p = run_tenantqd("-c", _write(confdir, text), "--check-config")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "[daemon] shards is set twice" in p.stderr and "first on line" in p.stderr, p.stderr


def test_missing_explicit_config_file(confdir):
    p = run_tenantqd("-c", os.path.join(confdir, "absent.conf"), "--check-config")
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "absent.conf" in p.stderr, p.stderr


def test_init_db_twice(db):
    name, conninfo = create_database("tq_initdb")
    try:
        init_db(conninfo)
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute("INSERT INTO tenantq_storefront (tenant, draft, version) "
                      "VALUES ('keep', '{\"pages\":{}}', 3)")
        with psycopg.connect(conninfo, autocommit=True) as c:
            # an older schema's pglz columns are switched to lz4 by the next --init-db
            c.execute("ALTER TABLE tenantq_storefront ALTER COLUMN draft SET COMPRESSION pglz")
        init_db(conninfo)
        with psycopg.connect(conninfo, autocommit=True) as c:
            compression = dict(c.execute(
                "SELECT attname::text, attcompression::text FROM pg_attribute WHERE attrelid = "
                "'tenantq_storefront'::regclass AND attname IN ('draft', 'published')").fetchall())
            cols = {r[0]: r[1] for r in c.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'tenantq_storefront'")}
            rows = c.execute("SELECT tenant, version FROM tenantq_storefront").fetchall()
        assert cols == {"tenant": "text", "draft": "jsonb", "published": "jsonb",
                        "version": "bigint", "updated_at": "timestamp with time zone"}
        assert rows == [("keep", 3)], "--init-db changed existing data"
        assert compression == {"draft": "l", "published": "l"}, compression
    finally:
        drop_database(name)


def test_allocator_named_and_used(daemon):
    """--version and the ready line name the allocator the build linked, and
    with jemalloc the whole process runs on it (its libraries' malloc too: the
    library is mapped); sanitizer builds keep the sanitizer's allocator."""
    jemalloc = linked_jemalloc()
    if sanitized_build():
        assert not jemalloc
    p = run_tenantqd("--version")
    assert p.returncode == 0, p.stderr
    want = "(allocator: jemalloc 5." if jemalloc else "(allocator: libc malloc)"
    assert want in p.stdout, p.stdout
    assert want in daemon.log(), daemon.tail()
    with open("/proc/%d/maps" % daemon.pid) as f:
        assert ("/libjemalloc.so" in f.read()) == jemalloc


def test_start_refuses_a_bad_connection_string(confdir):
    """The daemon itself refuses, with exit 2 naming the key, what
    --check-config refuses: no endless reconnects to an impossible server."""
    p = run_tenantqd("-c", _write(confdir, GOOD), "--database", "host=/tmp bogus_option=1",
                     timeout=10)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "[database] conninfo" in p.stderr and "bogus_option" in p.stderr, p.stderr
