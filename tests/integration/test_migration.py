"""docs/migration.md, executed.

The guide is parsed: every ```sql block is run (in guide order, as the role
its first line names: the Prisma migration role by default, a superuser for
`-- as a superuser`; `-->` lines are the rows the last statement must
return), the ```ini block is the tenantqd.conf of every tenantqd started here
(test-only flags such as --listen, --database and --metrics-listen win over
it), the `$ tenantqd` lines of ```console blocks are run and their stdout
compared, and the ```sh block of step 5 runs as written (tenantqd and
tenantq are wrapped to take this test's file, database and endpoint).  The
legacy writer is the guide's TypeScript in Python: the lock statement is
taken from the guide's ```ts blocks, the update increments "version" as
Prisma's `version: { increment: 1 }` does.

Everything runs on a private PostgreSQL cluster (roles are per cluster: the
guide creates the role tenantq) in a database "storefront" owned by the
role "app", shaped as Prisma makes it before the migration (test_storage's
PRISMA_TABLE without its version column, and _prisma_migrations).

Not run: Prisma itself (`migrate dev`, `db pull`, `migrate diff`); the test
checks the catalog premise instead (tenantq's objects are in the schema
tenantq, none in public) and the guide's claims about the daemon."""

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import zlib

import psycopg
import psycopg.conninfo
import pytest

from test_storage import PRISMA_TABLE
from tqlib import (Client, DaemonFactory, PgCluster, call, cli_bin, daemon_bin, err, ok,
                   run_threads)

GUIDE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                          "migration.md")
DBNAME = "storefront"
GUIDE_CONF = "/etc/tenantq/tenantqd.conf"
GUIDE_ENDPOINT = "ipc:///run/tenantq/tenantqd.sock"

PRISMA_MIGRATIONS = '''
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
);
'''
# the table before the guide's migration adds "version"
PRISMA_BEFORE = PRISMA_TABLE.split("ALTER TABLE")[0]

# drafts the race damaged before step 1: a duplicate id and a missing one
RACED = {"pages": {"home": {"sections": [{"id": "home-hero-main", "type": "hero"},
                                         {"id": "home-hero-main", "type": "hero"},
                                         {"type": "text"}]}}}


# --------------------------------------------------------------------------
# the guide

class Block:
    def __init__(self, lang, body, heading, line):
        self.lang, self.body, self.heading, self.line = lang, body, heading, line
        first = body.splitlines()[0] if body.strip() else ""
        self.superuser = first.strip() == "-- as a superuser"
        self.alternative = first.startswith("-- alternative:")
        self.rollback = heading.startswith("## Rollback")
        self.step = int(heading[3]) if re.match(r"## \d\.", heading) else None

    def expected_rows(self):
        return [ln[3:].strip() for ln in self.body.splitlines() if ln.startswith("-->")]

    def __repr__(self):
        return "%s block at docs/migration.md:%d" % (self.lang, self.line)


def parse_guide(text):
    blocks, heading, lang, body, start = [], "", None, [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if lang is None:
            if line.startswith("## "):
                heading = line
            m = re.match(r"^```(\w*)\s*$", line)
            if m:
                lang, body, start = m.group(1), [], n
        elif line.startswith("```"):
            blocks.append(Block(lang, "\n".join(body) + "\n", heading, start))
            lang = None
        else:
            body.append(line)
    assert lang is None, "unterminated fence in docs/migration.md"
    return blocks


@pytest.fixture(scope="module")
def guide_text():
    with open(GUIDE_PATH) as f:
        return f.read()


@pytest.fixture
def guide(guide_text):
    return Guide(guide_text)


class Guide:
    def __init__(self, text):
        self.text = text
        self.blocks = parse_guide(text)

    def of(self, lang):
        return [b for b in self.blocks if b.lang == lang]

    def steps_sql(self):
        """The SQL of the steps, in order (not the alternative, not rollback)."""
        return [b for b in self.of("sql") if not b.alternative and not b.rollback]

    def ini(self):
        blocks = self.of("ini")
        assert len(blocks) == 1, blocks
        return blocks[0].body

    def lock_sql(self):
        """The old path's lock statement (the guide's ts blocks), for psycopg."""
        locks = set(re.findall(r"\$executeRaw`(SELECT pg_advisory_xact_lock\(hashtextextended"
                               r"[^`]*)`", "".join(b.body for b in self.of("ts"))))
        assert len(locks) == 1, "the ts blocks lock differently: %r" % locks
        lock = locks.pop()
        assert lock.count("${tenantId}") == 1, lock
        return lock.replace("${tenantId}", "%s")

    def lock_key_sql(self):
        m = re.search(r"^lock_key_sql = (.*)$", self.ini(), re.M)
        assert m, "the ini block sets no lock_key_sql"
        return m.group(1).strip()

    def console(self):
        """[(argv after 'tenantqd', expected stdout lines)] of ```console blocks."""
        out = []
        for b in self.of("console"):
            for line in b.body.splitlines():
                if line.startswith("$ "):
                    argv = line[2:].split()
                    assert argv[0] == "tenantqd", line
                    out.append((argv[1:], []))
                else:
                    out[-1][1].append(line)
        return out


# --------------------------------------------------------------------------
# the database: a private cluster, "storefront" owned by "app", as Prisma
# left it

@pytest.fixture(scope="module")
def cluster():
    pg = PgCluster()
    pg.start()
    yield pg
    pg.destroy()


class Env:
    def __init__(self, pg, tmp):
        self.pg = pg
        self.tmp = tmp
        self.conf = os.path.join(tmp, "tenantqd.conf")
        self.daemons = DaemonFactory(self.conninfo("tenantq"))
        self.flags = []  # flags added to every tenantqd command (none: the file says it all)

    def conninfo(self, role):
        return psycopg.conninfo.make_conninfo(self.pg.conninfo, user=role, dbname=DBNAME)

    def connect(self, role="app", autocommit=True):
        return psycopg.connect(self.conninfo(role), autocommit=autocommit)

    def sql(self, text, params=None, role="app"):
        with self.connect(role) as c:
            cur = c.execute(text, params)
            return cur.fetchall() if cur.description else None

    def run_block(self, block):
        """Run one of the guide's SQL blocks; check its --> rows."""
        rows = self.sql(block.body, role="postgres" if block.superuser else "app")
        want = block.expected_rows()
        if want:
            got = [" | ".join(str(v) for v in r) for r in rows or []]
            assert got == want, "%r returned %r" % (block, got)
        return rows

    def write_conf(self, guide):
        with open(self.conf, "w") as f:
            f.write(guide.ini())

    def tenantqd(self, *args, role="tenantq"):
        """tenantqd with the guide's file; the test's database wins."""
        argv = [self.conf if a == GUIDE_CONF else a for a in args]
        return subprocess.run([daemon_bin(), *argv, *self.flags,
                               "--database", self.conninfo(role)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=60)

    def daemon(self, *extra):
        """A running tenantqd on the guide's file, as role tenantq."""
        return self.daemons(*extra, *self.flags, "-c", self.conf)

    def draft(self, tenant):
        return self.sql('SELECT "landingPageConfigDraft", "version" FROM "Tenant" '
                        'WHERE "id" = %s', (tenant,))[0]


@pytest.fixture
def env(cluster):
    with psycopg.connect(cluster.conninfo, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % DBNAME)
        for role in ("tenantq", "app"):
            c.execute("DROP ROLE IF EXISTS %s" % role)
        c.execute("CREATE ROLE app LOGIN")
        c.execute("CREATE DATABASE %s OWNER app" % DBNAME)
    tmp = tempfile.mkdtemp(prefix="tq-mig-")
    e = Env(cluster, tmp)
    e.sql(PRISMA_MIGRATIONS + PRISMA_BEFORE)
    e.sql('''INSERT INTO "_prisma_migrations" ("id", "checksum", "migration_name", "finished_at",
                                               "applied_steps_count")
             VALUES ('00000000-0000-0000-0000-000000000001', 'x', '20240101000000_init', now(), 1)
          ''')
    e.sql('''INSERT INTO "Tenant" ("id", "name", "updatedAt", "landingPageConfigDraft")
             VALUES ('acme', 'Acme Inc.', '2024-01-01 00:00:00', %s::jsonb),
                    ('globex', 'Globex', '2024-01-01 00:00:00', NULL),
                    ('initech', 'Initech', '2024-01-01 00:00:00', '{"pages":{}}')''',
          (json.dumps(RACED),))
    try:
        yield e
    finally:
        e.daemons.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def catalog(env):
    """What the guide must not leave behind: columns of "Tenant", the
    relations of public, the schemas, the roles."""
    return (env.sql('''SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef
                       FROM pg_attribute WHERE attrelid = '"Tenant"'::regclass AND attnum > 0
                       AND NOT attisdropped ORDER BY attnum'''),
            env.sql("SELECT relname, relkind FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace ORDER BY 1"),
            env.sql("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1"),
            env.sql("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1"))


def apply_steps(env, guide, upto=4, skip=lambda b: False):
    """The steps' SQL blocks in guide order up to step upto, with
    --check-config and --init-db where step 4 shows them."""
    env.write_conf(guide)
    for b in guide.steps_sql():
        if b.step > upto or skip(b):
            continue
        if b.step == 4 and "pg_tables" in b.body:
            run_console(env, guide)
        env.run_block(b)


def run_console(env, guide):
    cmds = guide.console()
    assert [a[-1] for a, _ in cmds] == ["--check-config", "--init-db"], cmds
    for args, want in cmds:
        p = env.tenantqd(*args)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        assert p.stdout.splitlines() == want, (args, p.stdout, p.stderr)


# --------------------------------------------------------------------------
# the old path, as the guide's TypeScript

class Legacy:
    """One transaction of the old path on its own connection, in two halves
    so that a test can interleave it: begin() locks and reads, commit()
    validates, writes (version + 1, "updatedAt" from the client as Prisma
    does) and commits."""

    def __init__(self, env, lock_sql):
        self.conn = env.connect(autocommit=False)
        self.lock_sql = lock_sql

    def begin(self, tenant, lock_arg=None):
        self.tenant = tenant
        self.conn.execute(self.lock_sql, (tenant if lock_arg is None else lock_arg,))
        draft, = self.conn.execute('SELECT "landingPageConfigDraft" FROM "Tenant" '
                                   'WHERE "id" = %s', (tenant,)).fetchone()
        self.draft = draft or {"pages": {}}
        return self

    def commit(self, section_id, page="home"):
        ids = {s.get("id") for p in self.draft["pages"].values() for s in p["sections"]}
        assert section_id not in ids, "the old path's validation refuses %s" % section_id
        self.draft["pages"].setdefault(page, {"sections": []})["sections"].append(
            {"id": section_id, "type": "text"})
        v, = self.conn.execute('UPDATE "Tenant" SET "landingPageConfigDraft" = %s::jsonb, '
                               '"version" = "version" + 1, "updatedAt" = %s '
                               'WHERE "id" = %s RETURNING "version"',
                               (json.dumps(self.draft),
                                datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
                                self.tenant)).fetchone()
        self.conn.commit()
        return v

    def close(self):
        self.conn.close()


def legacy_edit(env, lock_sql, tenant, section_id):
    lg = Legacy(env, lock_sql)
    try:
        return lg.begin(tenant).commit(section_id)
    finally:
        lg.close()


def old_key(tenant):
    """A key computed in TypeScript, as the seed's executor did (any hash)."""
    return zlib.crc32(tenant.encode())


OLD_LOCK = "SELECT pg_advisory_xact_lock(%s)"


def advisory_locks(env, guide):
    """The rows of the guide's pg_locks query (as the guide's default role,
    which sees the daemon's application_name)."""
    b, = [b for b in guide.steps_sql() if "pg_locks" in b.body]
    return env.run_block(b)


def tenantq_key(env, guide):
    b, = [b for b in guide.steps_sql() if "tenantq_key" in b.body]
    return env.run_block(b)[0][0]


def wait_for(what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def in_thread(fn):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised by the caller
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, box


def check_old_path_excludes_daemon(env, guide, lock_sql, d):
    """Deterministic: the old path holds its lock and has read the draft of
    'acme'; a daemon edit of 'acme' must wait for that very key (pg_locks:
    tenantqd, not granted, the guide's tenantq_key), and after the old path
    commits both edits are there."""
    key = tenantq_key(env, guide)
    lg = Legacy(env, lock_sql).begin("acme")
    t = None
    try:
        t, box = in_thread(lambda: call(d.endpoint, "acme", "section.upsert",
                                        {"page": "home", "section": {"type": "gallery"}}))
        waiting = wait_for(lambda: [r for r in advisory_locks(env, guide)
                                    if r[1] == "tenantqd" and not r[2]], timeout=4)
        assert [r[3] for r in waiting] == [key], (waiting, key)
        mine = [r for r in advisory_locks(env, guide) if r[2] and r[1] != "tenantqd"]
        assert [r[3] for r in mine] == [key], mine
        v = lg.commit("legacy-before-daemon")
    finally:
        lg.close()
        if t:
            t.join(15)
    assert "error" not in box, box
    r = ok(box["result"])
    assert r["version"] == v + 1, (r, v)
    draft, version = env.draft("acme")
    ids = [s["id"] for s in draft["pages"]["home"]["sections"]]
    assert "legacy-before-daemon" in ids and r["id"] in ids and version == v + 1


# --------------------------------------------------------------------------
# the walk through the guide

def test_guide_blocks_are_all_run(guide):
    """Every SQL block is run by one of these tests: the steps' by the walk,
    the alternative by its own test, rollback's by the rollback test."""
    sql = guide.of("sql")
    assert len(sql) >= 8
    assert [b.step for b in guide.steps_sql()] == sorted(b.step for b in guide.steps_sql())
    assert len([b for b in sql if b.alternative]) == 1
    assert len([b for b in sql if b.rollback]) == 4
    for b in sql:
        assert b.rollback or b.step is not None, b
        assert "-- not run" not in b.body, b
    # the old path's lock is tenantq's lock_key_sql over the tenant id
    assert guide.lock_sql() == "SELECT pg_advisory_xact_lock(%s)" % (
        guide.lock_key_sql().replace("$1", "%s"))
    assert guide.lock_key_sql() == "hashtextextended('tenantq:' || $1, 0)"
    ts = "".join(b.body for b in guide.of("ts"))
    assert "version: { increment: 1 }" in ts
    # the Node client's call in step 6 exists with a key option
    assert "tq.storefront.upsertSection(tenantId, { page, section }," in ts
    with open(os.path.join(os.path.dirname(GUIDE_PATH), "..", "client", "node", "src",
                           "storefront.ts")) as f:
        assert "upsertSection(tenant: string, args: UpsertArgs, opts?: CallOptions)" in f.read()
    with open(os.path.join(os.path.dirname(GUIDE_PATH), "..", "client", "node", "src",
                           "client.ts")) as f:
        assert re.search(r"key\?: string", f.read())


def test_walk_through_the_guide(env, guide):
    lock_sql = guide.lock_sql()
    before_public = env.sql("SELECT relname FROM pg_class "
                            "WHERE relnamespace = 'public'::regnamespace ORDER BY 1")
    apply_steps(env, guide)

    # step 2: the column as Prisma's Int @default(0) makes it
    assert env.sql('''SELECT format_type(atttypid, atttypmod), attnotnull, atthasdef
                      FROM pg_attribute WHERE attrelid = '"Tenant"'::regclass
                      AND attname = 'version' ''') == [("integer", True, True)]
    # step 3: tenantq's objects are in the schema tenantq, owned by tenantq;
    # public gained nothing but the column
    assert env.sql("SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                   "WHERE c.relnamespace = 'tenantq'::regnamespace ORDER BY 1") == [
        ("tenantq_idempotency", "tenantq"), ("tenantq_idempotency_created", "tenantq"),
        ("tenantq_idempotency_pkey", "tenantq")]
    assert env.sql("SELECT relname FROM pg_class "
                   "WHERE relnamespace = 'public'::regnamespace ORDER BY 1") == before_public
    assert env.sql("SELECT pg_get_userbyid(nspowner) FROM pg_namespace "
                   "WHERE nspname = 'tenantq'") == [("tenantq",)]
    # step 4: both commands are safe to repeat
    run_console(env, guide)

    d = env.daemon()
    d2 = env.daemon()
    # step 5 says why it comes before step 6: no edit of a draft with a
    # section without an id
    e = err(call(d.endpoint, "acme", "section.upsert",
                 {"page": "home", "section": {"type": "text"}}), "INTERNAL", retryable=False)
    assert "sections[2] has no string id (draft.repair gives it one)" in e["message"], e

    # step 5: the sh block, with an old-path writer editing the damaged
    # tenant meanwhile
    stop = threading.Event()
    legacy_ids = []

    def legacy_loop():
        while not stop.is_set() and len(legacy_ids) < 30:
            sid = "legacy-r%d" % len(legacy_ids)
            legacy_edit(env, lock_sql, "acme", sid)
            legacy_ids.append(sid)
    t, box = in_thread(legacy_loop)
    try:
        results = run_step5(env, guide, d)
    finally:
        stop.set()
        t.join(30)
    assert "error" not in box, box
    (scan1, dry, repair, scan2) = results
    assert scan1[0] == 1, scan1
    with open(os.path.join(env.tmp, "damaged.jsonl")) as f:
        found = [json.loads(x) for x in f.read().splitlines()]
    assert [x["tenant"] for x in found[:-1]] == ["acme"], found
    assert sorted(p["problem"] for p in found[0]["problems"]) == ["duplicate_id", "missing_id"]
    assert dry[0] == 0 and json.loads(dry[1].splitlines()[0])["renamed"] == 2, dry
    assert repair[0] == 0, repair
    rep = json.loads(repair[1].splitlines()[0])
    assert rep["ok"] and rep["renamed"] == 2 and rep["unrepaired"] == 0, rep
    assert scan2[0] == 0 and json.loads(scan2[1])["tenants_with_problems"] == 0, scan2
    draft, version = env.draft("acme")
    ids = [s["id"] for p in draft["pages"].values() for s in p["sections"]]
    assert len(ids) == len(set(ids)) and set(legacy_ids) <= set(ids)
    # every committed change counted once: the old path's and one repair
    # (the dry run wrote nothing)
    assert version == len(legacy_ids) + 1, (version, len(legacy_ids))

    # step 1: the old path and the daemon lock the same key
    check_old_path_excludes_daemon(env, guide, lock_sql, d)

    # step 6: both paths at once, on two daemons, keyed calls sent twice
    check_both_paths(env, lock_sql, [d, d2], "globex")
    # step 7: the daemons alone
    for i in range(3):
        ok(call(d.endpoint, "globex", "section.upsert",
                {"page": "after", "section": {"type": "text", "i": i}}, key="after-%d" % i))
    assert env.sql("SELECT count(*) FROM tenantq.tenantq_idempotency",
                   role="tenantq")[0][0] >= 3 + 4 * 10


def run_step5(env, guide, d):
    """The sh block of step 5, line by line, in env.tmp: [(rc, stdout, stderr)]."""
    b, = [b for b in guide.of("sh") if b.step == 5]
    wrap = ('tenantqd() { local a=() x; for x in "$@"; do [ "$x" = %(conf)s ] && x=%(file)s; '
            'a+=("$x"); done; %(tqd)s "${a[@]}" %(flags)s --database "$TQ_DB"; }\n'
            'tenantq() { local a=() x; for x in "$@"; do [ "$x" = %(ep)s ] && x=%(myep)s; '
            'a+=("$x"); done; %(tq)s "${a[@]}"; }\n') % {
                "conf": GUIDE_CONF, "file": env.conf, "tqd": daemon_bin(), "ep": GUIDE_ENDPOINT,
                "myep": d.endpoint, "tq": cli_bin(),
                "flags": " ".join(shlex.quote(f) for f in env.flags)}
    out = []
    for line in b.body.splitlines():
        p = subprocess.run(["bash", "-c", wrap + line], cwd=env.tmp, text=True, timeout=60,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=dict(os.environ, TQ_DB=env.conninfo("tenantq")))
        out.append((p.returncode, p.stdout, p.stderr))
    assert len(out) == 4, b
    return out


def check_both_paths(env, lock_sql, daemons, tenant):
    """Old path threads and keyed daemon calls (each sent twice: a retry)
    on one tenant: nothing lost, no duplicate id, versions consecutive, the
    retry replayed."""
    v0 = env.draft(tenant)[1]
    threads, per, legacy_threads, legacy_n = 4, 10, 2, 12
    versions, results = [], {}

    def worker(i):
        if i >= threads:
            for n in range(legacy_n):
                versions.append(legacy_edit(env, lock_sql, tenant, "legacy-%d-%d" % (i, n)))
            return
        with Client(daemons[i % len(daemons)].endpoint) as c:
            for k in range(per):
                key = "upsert-section:%d-%d" % (i, k)
                args = {"page": "home", "section": {"type": "text", "req": key}}
                first = c.call(tenant, "section.upsert", args, key=key)
                again = c.call(tenant, "section.upsert", args, key=key)
                assert again.get("replayed") and again["result"] == ok(first), (first, again)
                versions.append(ok(first)["version"])
                results[key] = ok(first)["id"]

    run_threads(threads + legacy_threads, worker)
    draft, version = env.draft(tenant)
    secs = draft["pages"]["home"]["sections"]
    total = threads * per + legacy_threads * legacy_n
    assert version == v0 + total and len(secs) == total, (version, len(secs))
    assert len({s["id"] for s in secs}) == total, "duplicate ids"
    assert sorted(versions) == list(range(v0 + 1, v0 + total + 1)), "versions not consecutive"
    assert sorted(s["req"] for s in secs if "req" in s) == sorted(results)


def test_before_step_1_the_keys_do_not_exclude(env, guide):
    """The state before step 1: the old key and tenantq's differ, pg_locks
    shows both granted at once, and the old path's write loses the daemon's
    acknowledged edit.  With the guide's lock the same interleaving waits."""
    apply_steps(env, guide)
    d = env.daemon()
    lg = Legacy(env, OLD_LOCK).begin("initech", lock_arg=old_key("initech"))
    try:
        # the daemon is not held up: its edit commits while the old path
        # holds its lock and has read the draft
        r = ok(call(d.endpoint, "initech", "section.upsert",
                    {"page": "home", "section": {"type": "hero"}}, timeout_ms=3000))
        # tenantq's key is another number, free while the old key is held:
        # the guide's pg_locks query shows both granted at once
        key = env.sql("SELECT hashtextextended('tenantq:' || 'initech', 0)")[0][0]
        assert key != old_key("initech")
        with env.connect("postgres", autocommit=False) as c:
            c.execute("SET lock_timeout = '200ms'")
            c.execute("SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || 'initech', 0))")
            rows = [row for row in advisory_locks(env, guide) if row[2]]
            assert sorted(row[3] for row in rows) == sorted([old_key("initech"), key]), rows
        lg.commit("legacy-stale")
    finally:
        lg.close()
    draft, version = env.draft("initech")
    ids = [s["id"] for s in draft["pages"]["home"]["sections"]]
    assert ids == ["legacy-stale"] and r["id"] not in ids, "expected the lost update"
    assert version == 2
    # the first deploy round of step 1: an instance taking both keys waits
    # for an old one holding the old key
    lg = Legacy(env, OLD_LOCK).begin("initech", lock_arg=old_key("initech"))
    try:
        with env.connect(autocommit=False) as c:
            c.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                c.execute(OLD_LOCK, (old_key("initech"),))
    finally:
        lg.close()


def test_a_wrong_lock_in_the_guide_fails(env, guide, guide_text):
    """The checks can fail: the guide with another lock expression (the
    colon dropped) does not pass the exclusion check, and its SQL block
    returns another key than the daemon's."""
    apply_steps(env, guide)
    d = env.daemon()
    wrong = Guide(guide_text.replace("'tenantq:' ||", "'tenantq' ||"))
    assert wrong.lock_sql() != guide.lock_sql()
    with pytest.raises(AssertionError):
        check_old_path_excludes_daemon(env, wrong, wrong.lock_sql(), d)
    with pytest.raises(AssertionError):
        test_guide_blocks_are_all_run(wrong)


def test_without_step_2_init_db_prints_what_the_guide_shows(env, guide):
    apply_steps(env, guide, upto=3, skip=lambda b: b.step == 2)
    before = catalog(env)
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "[storage] version_column" in p.stderr, p.stderr
    shown = [b.body.strip() for b in guide.of("text") if b.step == 4]
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("ALTER")] == shown, p.stdout
    assert catalog(env)[0] == before[0], "--init-db altered \"Tenant\""


def test_create_missing_true_is_refused_on_the_prisma_table(env, guide):
    apply_steps(env, guide)
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db", "--storage-create-missing", "true")
    assert p.returncode == 2, (p.stdout, p.stderr)
    # "updatedAt" is mapped (tenantq sets it); "name" it cannot fill
    assert 'column "name" of "public"."Tenant" is NOT NULL without a default' in p.stderr, \
        p.stderr
    assert '"updatedAt"' not in p.stderr and "lacks INSERT" in p.stderr, p.stderr


def test_create_missing_false_leaves_new_tenants_to_prisma(env, guide):
    apply_steps(env, guide)
    d = env.daemon()
    err(call(d.endpoint, "hooli", "section.upsert",
             {"page": "home", "section": {"type": "hero"}}), "NOT_FOUND", retryable=False)
    assert env.sql('SELECT count(*) FROM "Tenant" WHERE "id" = \'hooli\'') == [(0,)]


def test_column_privileges_are_refused(env, guide):
    """What step 3 says: table privileges, not column privileges."""
    apply_steps(env, guide, upto=3)
    env.write_conf(guide)
    env.sql('REVOKE SELECT, UPDATE ON "Tenant" FROM tenantq; '
            'GRANT SELECT ("id", "landingPageConfigDraft", "landingPageConfig", "version"), '
            'UPDATE ("landingPageConfigDraft", "landingPageConfig", "version", "updatedAt") '
            'ON "Tenant" TO tenantq')
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db")
    assert p.returncode == 2 and "lacks SELECT" in p.stderr, (p.stdout, p.stderr)


def test_alternative_owner_runs_init_db(env, guide):
    """Step 3's alternative: no CREATE for tenantq; the database owner runs
    --init-db, then the alternative block; the daemon runs as tenantq."""
    apply_steps(env, guide, upto=3, skip=lambda b: "GRANT CREATE ON DATABASE" in b.body)
    env.write_conf(guide)
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db", role="tenantq")
    assert p.returncode != 0 and "permission denied for database" in p.stderr, p.stderr
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db", role="app")
    assert p.returncode == 0 and p.stdout == "tenantqd: schema ready (storage public.Tenant)\n", \
        (p.stdout, p.stderr)
    alt, = [b for b in guide.of("sql") if b.alternative]
    env.run_block(alt)
    assert env.sql("SELECT has_database_privilege('tenantq', %s, 'CREATE')", (DBNAME,)) == [
        (False,)]
    d = env.daemon()
    args = {"page": "home", "section": {"type": "hero"}}
    r = ok(call(d.endpoint, "globex", "section.upsert", args, key="k1"))
    again = call(d.endpoint, "globex", "section.upsert", args, key="k1")
    assert again.get("replayed") and again["result"] == r
    assert env.sql("SELECT count(*) FROM tenantq.tenantq_idempotency", role="tenantq") == [(1,)]


def test_rollback(env, guide):
    """The rollback blocks, after the steps and a daemon's keyed edit,
    restore the catalog as it was before the guide."""
    before = catalog(env)
    apply_steps(env, guide)
    d = env.daemon()
    ok(call(d.endpoint, "globex", "section.upsert",
            {"page": "home", "section": {"type": "hero"}}, key="k1"))
    env.daemons.stop_all()
    for b in [b for b in guide.of("sql") if b.rollback]:
        env.run_block(b)
    assert catalog(env) == before
    draft, = env.sql('SELECT "landingPageConfigDraft" FROM "Tenant" WHERE "id" = \'globex\'')[0]
    assert draft["pages"]["home"]["sections"][0]["id"] == "home-hero-main"


def test_ini_block_alone_is_read_as_the_guide_means(env, guide):
    """The file's quoted names are SQL's: the ini block alone is enough."""
    apply_steps(env, guide, upto=3)
    env.write_conf(guide)
    env.flags = []
    p = env.tenantqd("-c", GUIDE_CONF, "--init-db")
    assert p.returncode == 0, (p.stdout, p.stderr)
