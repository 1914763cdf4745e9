"""Fixtures of the integration suite: one database per session (schema by
tenantqd --init-db, emptied before every test) and real tenantqd processes
that are stopped with SIGTERM and checked for a clean exit at teardown.
The helpers they use (wire client, DB access) live in tqlib.py."""

import pytest

from tqlib import DB, DaemonFactory, PgCluster, create_database, drop_database, init_db


@pytest.fixture(scope="session")
def test_database():
    """One database for the session, schema created by tenantqd --init-db."""
    name, conninfo = create_database()
    try:
        init_db(conninfo)
        yield conninfo
    finally:
        drop_database(name)


@pytest.fixture
def db(test_database):
    """The session's database, emptied before the test."""
    d = DB(test_database)
    d.truncate_all()
    return d


@pytest.fixture
def daemon_factory(db):
    """daemon_factory(*flags) -> a ready tenantqd on the (emptied) session
    database.  Teardown: SIGTERM, exit status 0, no sanitizer report."""
    f = DaemonFactory(db.conninfo)
    yield f
    f.stop_all()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture
def cluster():
    """A private PostgreSQL cluster, for tests that stop and restart the server."""
    pg = PgCluster()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def write_log(db):
    """A trigger recording (tenant, version, txid) for every write of
    tenantq_storefront; yields a function returning the log in order."""
    with db.connect() as c:
        c.execute("CREATE TABLE tq_test_write_log (seq bigserial PRIMARY KEY, "
                  "tenant text NOT NULL, version bigint NOT NULL, xid bigint NOT NULL)")
        c.execute("CREATE FUNCTION tq_test_wlog() RETURNS trigger LANGUAGE plpgsql AS $$ "
                  "BEGIN INSERT INTO tq_test_write_log (tenant, version, xid) "
                  "VALUES (NEW.tenant, NEW.version, txid_current()); RETURN NULL; END $$")
        c.execute("CREATE TRIGGER tq_test_wlog AFTER INSERT OR UPDATE ON tenantq_storefront "
                  "FOR EACH ROW EXECUTE FUNCTION tq_test_wlog()")

    def read():
        with db.connect() as c:
            return c.execute("SELECT tenant, version, xid FROM tq_test_write_log "
                             "ORDER BY seq").fetchall()
    try:
        yield read
    finally:
        with db.connect() as c:
            c.execute("DROP TRIGGER IF EXISTS tq_test_wlog ON tenantq_storefront")
            c.execute("DROP FUNCTION IF EXISTS tq_test_wlog()")
            c.execute("DROP TABLE IF EXISTS tq_test_write_log")
