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
