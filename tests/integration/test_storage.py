"""[storage]: tenantq on the service's own table.

The Prisma-shaped table is what a Prisma schema with a Json draft column
makes: a quoted camelCase table and columns, NOT NULL columns Prisma fills in
(no database defaults), timestamp(3) without time zone, and the version
column added by a migration as docs/migration.md says.  Every test builds
its own table, drives real daemons through the wire, and looks at the rows
with SQL."""

import json
import subprocess
import threading

import pytest

from tqlib import Client, call, daemon_bin, err, ok, run_threads

PRISMA_TABLE = '''
CREATE TABLE "Tenant" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "plan" TEXT NOT NULL DEFAULT 'free',
    "landingPageConfigDraft" JSONB,
    "landingPageConfig" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "Tenant_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "Tenant" ADD COLUMN "version" INTEGER NOT NULL DEFAULT 0;
'''

PRISMA_FLAGS = ["--storage-table", 'public."Tenant"',
                "--storage-tenant-column", "id",
                "--storage-draft-column", '"landingPageConfigDraft"',
                "--storage-published-column", '"landingPageConfig"',
                "--storage-version-column", "version",
                "--storage-updated-at-column", '"updatedAt"',
                "--storage-create-missing", "false"]


def sql(db, text, params=None):
    with db.connect() as c:
        cur = c.execute(text, params)
        return cur.fetchall() if cur.description else None


@pytest.fixture
def prisma(db):
    """The Prisma-shaped table, two tenants' rows created by "the app"."""
    sql(db, 'DROP TABLE IF EXISTS "Tenant" CASCADE')
    sql(db, PRISMA_TABLE)
    sql(db, '''INSERT INTO "Tenant" ("id", "name", "updatedAt", "landingPageConfigDraft")
               VALUES ('acme', 'Acme Inc.', '2024-01-01 00:00:00', NULL),
                      ('globex', 'Globex', '2024-01-01 00:00:00', '{"pages":{}}')''')
    yield db
    sql(db, 'DROP TABLE IF EXISTS "Tenant" CASCADE')


def tenant_row(db, tenant):
    r = sql(db, 'SELECT "landingPageConfigDraft", "landingPageConfig", "version", "name", '
                '"plan", "createdAt", "updatedAt" FROM "Tenant" WHERE "id" = %s', (tenant,))
    return r[0] if r else None


def other_columns(db):
    """Every column tenantq must not touch, of every row, as text."""
    return sql(db, 'SELECT "id", "name", "plan", "createdAt"::text FROM "Tenant" ORDER BY "id"')


def run_daemon(*args, timeout=60):
    return subprocess.run([daemon_bin(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------
# the seed's race and concurrency on the Prisma-shaped table

def test_seed_race_on_prisma_table_two_daemons(daemon_factory, prisma):
    before = other_columns(prisma)
    d1, d2 = daemon_factory(*PRISMA_FLAGS), daemon_factory(*PRISMA_FLAGS)
    n = 40
    barrier = threading.Barrier(n)
    responses = [None] * n

    def worker(i):
        with Client((d1, d2)[i % 2].endpoint) as c:
            ok(c.call("warmup-%d" % i, "ping"))
            barrier.wait(30)
            responses[i] = c.call("acme", "section.upsert", {
                "page": "home", "section": {"id": "home-hero-main", "type": "hero", "w": i}})

    run_threads(n, worker)
    oks = [r for r in responses if r["ok"]]
    assert len(oks) == 1, responses
    dups = [r for r in responses if not r["ok"]]
    for r in dups:
        err(r, "DUPLICATE_SECTION_ID", retryable=False)
    assert len(dups) == 39
    draft, published, version, *_ = tenant_row(prisma, "acme")
    assert version == 1 and published is None
    assert [s["id"] for s in draft["pages"]["home"]["sections"]] == ["home-hero-main"]
    assert other_columns(prisma) == before


def test_200_concurrent_appends_prisma_table(daemon_factory, prisma):
    d1, d2 = daemon_factory(*PRISMA_FLAGS), daemon_factory(*PRISMA_FLAGS)
    threads, per = 20, 10
    got = [[] for _ in range(threads)]

    def worker(i):
        with Client((d1, d2)[i % 2].endpoint) as c:
            for k in range(per):
                got[i].append(ok(c.call("globex", "section.upsert", {
                    "page": "home", "section": {"type": "text", "n": "%d-%d" % (i, k)}})))

    run_threads(threads, worker)
    versions = sorted(r["version"] for g in got for r in g)
    assert versions == list(range(1, threads * per + 1))
    draft, _, version, *_ = tenant_row(prisma, "globex")
    secs = draft["pages"]["home"]["sections"]
    assert version == threads * per and len(secs) == threads * per
    assert len({s["id"] for s in secs}) == threads * per
    assert sorted(s["n"] for s in secs) == sorted("%d-%d" % (i, k) for i in range(threads)
                                                  for k in range(per))


LEGACY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || %s, 0))"


def legacy_append(conn, tenant, n):
    """The seed's executor after step 1 of the migration guide: the same lock
    key as tenantq, read, validate, write, and the version incremented."""
    with conn.transaction():
        conn.execute(LEGACY_LOCK, (tenant,))
        draft, = conn.execute('SELECT "landingPageConfigDraft" FROM "Tenant" WHERE "id" = %s',
                              (tenant,)).fetchone()
        draft = draft or {"pages": {}}
        secs = draft["pages"].setdefault("home", {"sections": []})["sections"]
        sid = "legacy-%d" % n
        assert sid not in {s["id"] for p in draft["pages"].values() for s in p["sections"]}
        secs.append({"id": sid, "type": "text"})
        return conn.execute('UPDATE "Tenant" SET "landingPageConfigDraft" = %s::jsonb, '
                            '"version" = "version" + 1, '
                            '"updatedAt" = now() AT TIME ZONE \'UTC\' '
                            'WHERE "id" = %s RETURNING "version"',
                            (json.dumps(draft), tenant)).fetchone()[0]


def test_two_daemons_and_legacy_writers_lose_nothing(daemon_factory, prisma):
    before = other_columns(prisma)
    d1, d2 = daemon_factory(*PRISMA_FLAGS), daemon_factory(*PRISMA_FLAGS)
    daemon_threads, per, legacy_n = 6, 15, 40
    versions = []  # every committed change's version, daemon and legacy alike

    def worker(i):
        if i == daemon_threads:
            with prisma.connect(autocommit=True) as conn:
                for n in range(legacy_n):
                    versions.append(legacy_append(conn, "acme", n))
            return
        with Client((d1, d2)[i % 2].endpoint) as c:
            for k in range(per):
                versions.append(ok(c.call("acme", "section.upsert", {
                    "page": "home", "section": {"type": "hero", "k": "%d-%d" % (i, k)}}))[
                        "version"])

    run_threads(daemon_threads + 1, worker)
    draft, _, version, *_ = tenant_row(prisma, "acme")
    secs = draft["pages"]["home"]["sections"]
    total = daemon_threads * per + legacy_n
    assert version == total and len(secs) == total
    assert len({s["id"] for s in secs}) == total, "duplicate ids"
    assert {"legacy-%d" % n for n in range(legacy_n)} <= {s["id"] for s in secs}
    assert sorted(versions) == list(range(1, total + 1)), "versions not consecutive"
    assert other_columns(prisma) == before


# --------------------------------------------------------------------------
# mapping details

def test_mapped_columns_only_and_published_written_when_changed(daemon_factory, prisma):
    sql(prisma, '''CREATE TABLE tq_test_pub (n int);
                   CREATE FUNCTION tq_test_pub() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO tq_test_pub VALUES (1); RETURN NULL; END $$;
                   CREATE TRIGGER tq_test_pub AFTER UPDATE OF "landingPageConfig" ON "Tenant"
                   FOR EACH ROW EXECUTE FUNCTION tq_test_pub()''')
    try:
        d = daemon_factory(*PRISMA_FLAGS)
        # fields the storefront does not know survive, anywhere in the JSON
        sql(prisma, '''UPDATE "Tenant" SET "landingPageConfigDraft" =
                       '{"theme":"dark","pages":{"home":{"seo":{"t":1},"sections":[]}}}'
                       WHERE "id" = 'acme' ''')
        ok(call(d.endpoint, "acme", "section.upsert",
                {"page": "home", "section": {"type": "hero"}}))
        ok(call(d.endpoint, "acme", "section.upsert",
                {"page": "home", "section": {"type": "text"}}))
        n_pub = lambda: sql(prisma, "SELECT count(*) FROM tq_test_pub")[0][0]  # noqa: E731
        assert n_pub() == 0, "an edit rewrote the published copy"
        assert ok(call(d.endpoint, "acme", "draft.publish")) == {"version": 3}
        assert n_pub() == 1
        ok(call(d.endpoint, "acme", "section.remove", {"id": "home-text-main"}))
        assert n_pub() == 1
        draft, published, version, name, plan, _, updated = tenant_row(prisma, "acme")
        assert draft["theme"] == "dark" and draft["pages"]["home"]["seo"] == {"t": 1}
        assert [s["id"] for s in published["pages"]["home"]["sections"]] == [
            "home-hero-main", "home-text-main"]
        assert version == 4 and name == "Acme Inc." and plan == "free"
        # timestamp(3) without time zone holds UTC
        now_utc = sql(prisma, "SELECT now() AT TIME ZONE 'UTC'")[0][0]
        assert abs((now_utc - updated).total_seconds()) < 60
        assert ok(call(d.endpoint, "acme", "draft.discard"))["version"] == 5
        assert n_pub() == 1
    finally:
        sql(prisma, '''DROP TRIGGER IF EXISTS tq_test_pub ON "Tenant";
                       DROP FUNCTION IF EXISTS tq_test_pub(); DROP TABLE IF EXISTS tq_test_pub''')


def test_null_and_json_null_drafts_read_as_empty(daemon_factory, prisma):
    sql(prisma, '''UPDATE "Tenant" SET "landingPageConfigDraft" = 'null'::jsonb, "version" = 4
                   WHERE "id" = 'globex' ''')
    d = daemon_factory(*PRISMA_FLAGS)
    empty = {"pages": {}}
    assert ok(call(d.endpoint, "acme", "draft.get")) == {"draft": empty, "version": 0}
    assert ok(call(d.endpoint, "globex", "draft.get")) == {"draft": empty, "version": 4}
    assert ok(call(d.endpoint, "globex", "draft.check")) == {"problems": [], "version": 4}
    r = ok(call(d.endpoint, "acme", "section.upsert",
                {"page": "home", "section": {"type": "hero"}}))
    assert r["version"] == 1
    assert tenant_row(prisma, "acme")[0] == {"pages": {"home": {"sections": [
        {"id": "home-hero-main", "type": "hero"}]}}}


def test_create_missing_false_is_not_found(daemon_factory, prisma):
    d = daemon_factory(*PRISMA_FLAGS)
    for op, args in [("draft.get", None), ("draft.check", None),
                     ("section.upsert", {"page": "home", "section": {"type": "hero"}})]:
        e = err(call(d.endpoint, "initech", op, args), "NOT_FOUND", retryable=False)
        assert 'tenant "initech"' in e["message"] and 'public.Tenant' in e["message"], e
    assert sql(prisma, 'SELECT count(*) FROM "Tenant" WHERE "id" = %s', ("initech",))[0][0] == 0
    ok(call(d.endpoint, "initech", "ping"))  # no database: no row needed


def test_create_missing_true_creates_rows_with_defaults(daemon_factory, db):
    sql(db, '''DROP TABLE IF EXISTS app_pages;
               CREATE TABLE app_pages (shop bigint PRIMARY KEY, created timestamptz NOT NULL
               DEFAULT now(), note text NOT NULL DEFAULT 'x', doc json, v bigint)''')
    try:
        d = daemon_factory("--storage-table", "app_pages", "--storage-tenant-column", "shop",
                           "--storage-draft-column", "doc", "--storage-published-column", "",
                           "--storage-version-column", "v", "--storage-updated-at-column", "")
        r = ok(call(d.endpoint, "42", "section.upsert",
                    {"page": "home", "section": {"type": "hero"}}))
        assert r["version"] == 1
        rows = sql(db, "SELECT shop, doc::text, v, note FROM app_pages")
        assert len(rows) == 1 and rows[0][0] == 42 and rows[0][2] == 1 and rows[0][3] == "x"
        assert json.loads(rows[0][1])["pages"]["home"]["sections"][0]["id"] == "home-hero-main"
        # no published column: publish and discard do not exist
        for op in ("draft.publish", "draft.discard"):
            e = err(call(d.endpoint, "42", op), "UNKNOWN_OP", retryable=False)
            assert "published_column" in e["message"], e
        # an integer tenant column takes canonical decimal integers only
        for bad in ("042", "+42", "4x", "-0", "99999999999999999999", " 42"):
            e = err(call(d.endpoint, bad, "draft.get"), "INVALID_ARGUMENT", retryable=False)
            assert "canonical" in e["message"], e
        assert ok(call(d.endpoint, "-7", "draft.get"))["version"] == 0
    finally:
        sql(db, "DROP TABLE IF EXISTS app_pages")


@pytest.mark.parametrize("doc", ["jsonb", "json", "text"])
@pytest.mark.parametrize("ver", ["bigint", "integer"])
@pytest.mark.parametrize("ts", ["timestamptz", "timestamp(3)", None])
def test_column_types(daemon_factory, db, doc, ver, ts):
    cols = "t text PRIMARY KEY, d %s, p %s, v %s NOT NULL DEFAULT 0" % (doc, doc, ver)
    if ts:
        cols += ", u %s" % ts
    sql(db, "DROP TABLE IF EXISTS tq_types; CREATE TABLE tq_types (%s)" % cols)
    try:
        d = daemon_factory("--storage-table", "tq_types", "--storage-tenant-column", "t",
                           "--storage-draft-column", "d", "--storage-published-column", "p",
                           "--storage-version-column", "v",
                           "--storage-updated-at-column", "u" if ts else "")
        ok(call(d.endpoint, "a", "section.upsert", {"page": "home", "section": {"type": "hero"}}))
        assert ok(call(d.endpoint, "a", "draft.publish")) == {"version": 2}
        r = ok(call(d.endpoint, "a", "draft.get"))
        assert r["version"] == 2 and r["draft"]["pages"]["home"]["sections"][0]["type"] == "hero"
        row = sql(db, "SELECT d::text, p::text, v%s FROM tq_types" % (", u" if ts else ""))[0]
        assert json.loads(row[0]) == json.loads(row[1]) == r["draft"] and row[2] == 2
        if ts == "timestamp(3)":
            now_utc = sql(db, "SELECT now() AT TIME ZONE 'UTC'")[0][0]
            assert abs((now_utc - row[3]).total_seconds()) < 60
    finally:
        sql(db, "DROP TABLE IF EXISTS tq_types")


def test_uuid_tenant_column(daemon_factory, db):
    sql(db, '''DROP TABLE IF EXISTS tq_uuid; CREATE TABLE tq_uuid (id uuid PRIMARY KEY,
               draft jsonb, version bigint NOT NULL DEFAULT 0)''')
    try:
        d = daemon_factory("--storage-table", "tq_uuid", "--storage-tenant-column", "id",
                           "--storage-published-column", "", "--storage-updated-at-column", "")
        good = "0b6f3c1e-7d4a-4c5e-9f00-123456789abc"
        bad = ["not-a-uuid", good.upper(), "{%s}" % good, good.replace("-", "")]
        # bad and good tenants at once: the bad ones never reach a transaction
        responses = {}

        def worker(i):
            t = bad[i] if i < len(bad) else good
            responses[i] = call(d.endpoint, t, "section.upsert",
                                {"page": "home", "section": {"type": "text", "i": i}})

        run_threads(len(bad) + 4, worker)
        for i in range(len(bad)):
            e = err(responses[i], "INVALID_ARGUMENT", retryable=False)
            assert "uuid" in e["message"] and "canonical" in e["message"], e
        assert sorted(ok(responses[i])["version"] for i in range(len(bad), len(bad) + 4)) == [
            1, 2, 3, 4]
        assert sql(db, "SELECT version FROM tq_uuid WHERE id = %s", (good,)) == [(4,)]
    finally:
        sql(db, "DROP TABLE IF EXISTS tq_uuid")


def test_row_lock_timeout_says_row(daemon_factory, prisma):
    d = daemon_factory(*PRISMA_FLAGS, "--lock-timeout-ms", "300")
    ok(call(d.endpoint, "acme", "section.upsert", {"page": "home", "section": {"type": "hero"}}))
    with prisma.connect(autocommit=False) as app:
        app.execute('SELECT 1 FROM "Tenant" WHERE "id" = %s FOR UPDATE', ("acme",))
        e = err(call(d.endpoint, "acme", "section.upsert",
                     {"page": "home", "section": {"type": "text"}}), "LOCK_TIMEOUT",
                retryable=True)
        assert "row" in e["message"] and "not the advisory lock" in e["message"], e
        app.rollback()
    r = ok(call(d.endpoint, "acme", "section.upsert",
                {"page": "home", "section": {"type": "text"}}))
    assert r["version"] == 2
    # the advisory lock still says advisory lock
    with prisma.connect(autocommit=False) as app:
        app.execute(LEGACY_LOCK, ("acme",))
        e = err(call(d.endpoint, "acme", "draft.publish"), "LOCK_TIMEOUT", retryable=True)
        assert "advisory lock" in e["message"], e
        app.rollback()


def test_other_column_writes_keep_the_cache_correct(daemon_factory, prisma):
    """Any write to the row (another column, by the app) changes xmin: the
    cached draft is then re-read, never written back over the app's change."""
    d = daemon_factory(*PRISMA_FLAGS)
    ok(call(d.endpoint, "acme", "section.upsert", {"page": "home", "section": {"type": "hero"}}))
    for i in range(5):
        sql(prisma, '''UPDATE "Tenant" SET "name" = %s WHERE "id" = 'acme' ''', ("n%d" % i,))
        ok(call(d.endpoint, "acme", "section.upsert",
                {"page": "p%d" % i, "section": {"type": "text"}}))
    draft, _, version, name, *_ = tenant_row(prisma, "acme")
    assert name == "n4" and version == 6 and len(draft["pages"]) == 6


def test_view_storage_has_no_draft_cache(daemon_factory, prisma):
    sql(prisma, '''CREATE VIEW tenant_pages AS SELECT "id", "landingPageConfigDraft" AS draft,
                   "version" FROM "Tenant"''')
    try:
        d = daemon_factory("--storage-table", "tenant_pages", "--storage-tenant-column", "id",
                           "--storage-published-column", "", "--storage-updated-at-column", "",
                           "--storage-create-missing", "false")
        assert "a view: no draft cache" in d.log()
        for i in range(3):
            r = ok(call(d.endpoint, "acme", "section.upsert",
                        {"page": "home", "section": {"type": "t%d" % i}}))
            assert r["version"] == i + 1
        assert len(tenant_row(prisma, "acme")[0]["pages"]["home"]["sections"]) == 3
    finally:
        sql(prisma, "DROP VIEW IF EXISTS tenant_pages")


def test_own_schema(daemon_factory, db):
    p = run_daemon("--database", db.conninfo, "--schema", "tq_own", "--init-db")
    assert p.returncode == 0, p.stderr
    try:
        tables = sql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'tq_own' ORDER BY 1")
        assert tables == [("tenantq_idempotency",), ("tenantq_storefront",)]
        d = daemon_factory("--schema", "tq_own")
        r = ok(call(d.endpoint, "a", "section.upsert",
                    {"page": "home", "section": {"type": "hero"}}, key="k1"))
        again = call(d.endpoint, "a", "section.upsert",
                     {"page": "home", "section": {"type": "hero"}}, key="k1")
        assert again["ok"] and again.get("replayed") and again["result"] == r
        assert sql(db, "SELECT count(*) FROM tq_own.tenantq_idempotency") == [(1,)]
        assert sql(db, "SELECT version FROM tq_own.tenantq_storefront") == [(1,)]
        assert sql(db, "SELECT count(*) FROM public.tenantq_storefront") == [(0,)]
    finally:
        sql(db, "DROP SCHEMA IF EXISTS tq_own CASCADE")


# --------------------------------------------------------------------------
# refusals at start, and --init-db printing the fix

def catalog(db):
    return sql(db, '''SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef
                      FROM pg_attribute WHERE attrelid = '"Tenant"'::regclass AND attnum > 0
                      AND NOT attisdropped ORDER BY attnum''')


def test_init_db_prints_the_fix_and_changes_nothing(db):
    sql(db, 'DROP TABLE IF EXISTS "Tenant"; ' + PRISMA_TABLE.split("ALTER TABLE")[0])
    try:
        before = catalog(db)
        args = ["--database", db.conninfo, *PRISMA_FLAGS]
        p = run_daemon(*args, "--init-db")
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "[storage] version_column" in p.stderr and "has no column" in p.stderr, p.stderr
        fix = [line for line in p.stdout.splitlines() if line.startswith("ALTER TABLE")]
        assert fix == ['ALTER TABLE "public"."Tenant" ADD COLUMN "version" bigint NOT NULL '
                       'DEFAULT 0;'], p.stdout
        assert catalog(db) == before, "--init-db altered the user's table"
        # the daemon refuses to start the same way
        p = run_daemon(*args, "--listen", "ipc:///tmp/tq-storage-refused.sock",
                       "--metrics-listen", "")
        assert p.returncode == 2 and "[storage] version_column" in p.stderr, p.stderr
        # the printed SQL makes it usable
        sql(db, fix[0])
        p = run_daemon(*args, "--init-db")
        assert p.returncode == 0 and 'storage public.Tenant' in p.stdout, (p.stdout, p.stderr)
    finally:
        sql(db, 'DROP TABLE IF EXISTS "Tenant"')


@pytest.mark.parametrize("case", ["missing_draft", "wrong_type", "no_unique_index",
                                  "not_null_without_default", "no_table", "bad_name"])
def test_startup_refusals(db, case):
    sql(db, '''DROP TABLE IF EXISTS tq_bad; CREATE TABLE tq_bad (t text, d jsonb, n int,
               v bigint NOT NULL DEFAULT 0, must text NOT NULL)''')
    flags = {"--storage-table": "tq_bad", "--storage-tenant-column": "t",
             "--storage-draft-column": "d", "--storage-published-column": "",
             "--storage-version-column": "v", "--storage-updated-at-column": "",
             "--storage-create-missing": "false"}
    want = {"missing_draft": ("--storage-draft-column", "nope", "[storage] draft_column"),
            "wrong_type": ("--storage-draft-column", "n", "[storage] draft_column"),
            "no_unique_index": ("--storage-create-missing", "true", "[storage] create_missing"),
            "not_null_without_default": ("--storage-create-missing", "true",
                                         '"must" of "public"."tq_bad" is NOT NULL'),
            "no_table": ("--storage-table", "public.nope", "[storage] table"),
            "bad_name": ("--storage-tenant-column", "a b", "[storage] tenant_column")}[case]
    flags[want[0]] = want[1]
    if case == "not_null_without_default":
        sql(db, "CREATE UNIQUE INDEX ON tq_bad (t)")
    args = [a for kv in flags.items() for a in kv]
    try:
        outs = []
        for mode in (["--init-db"], ["--listen", "ipc:///tmp/tq-refused.sock",
                                     "--metrics-listen", ""]):
            p = run_daemon("--database", db.conninfo, *args, *mode)
            assert p.returncode == 2, (case, mode, p.stdout, p.stderr)
            assert want[2] in p.stderr, (case, p.stderr)
            outs.append(p.stdout)
        if case == "no_unique_index":
            assert 'CREATE UNIQUE INDEX ON "public"."tq_bad" ("t");' in outs[0], outs[0]
    finally:
        sql(db, "DROP TABLE IF EXISTS tq_bad")


def test_scan_and_repair_on_prisma_table(daemon_factory, prisma):
    raced = {"pages": {"home": {"sections": [{"id": "home-hero-main", "type": "hero"},
                                             {"id": "home-hero-main", "type": "hero"}]}}}
    sql(prisma, '''UPDATE "Tenant" SET "landingPageConfigDraft" = %s::jsonb, "version" = 7
                   WHERE "id" = 'acme' ''', (json.dumps(raced),))
    p = run_daemon("--database", prisma.conninfo, *PRISMA_FLAGS, "--scan")
    assert p.returncode == 1, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["tenant"] for x in lines[:-1]] == ["acme"]
    assert lines[-1]["scanned"] == 2
    d = daemon_factory(*PRISMA_FLAGS)
    r = ok(call(d.endpoint, "acme", "draft.repair"))
    assert r["version"] == 8 and r["renamed"] == [
        {"page": "home", "index": 1, "from": "home-hero-main", "to": "home-hero-2"}]
    assert run_daemon("--database", prisma.conninfo, *PRISMA_FLAGS, "--scan").returncode == 0
