"""Repair of drafts damaged before tenantq: draft.check, draft.repair (with
dry_run), `tenantqd --scan` and the `tenantqd --scan | tenantq repair` pipe,
against damaged drafts written straight into the table."""

import json
import subprocess
import threading

from tqlib import call, cli_bin, daemon_bin, err, ok

DAMAGED = {"pages": {
    "home": {"sections": [
        {"id": "a", "type": "hero"},
        {"id": "a", "type": "hero", "x": 1},      # duplicate within the page
        {"type": "text"},                          # missing id
        {"id": "Bad", "type": "hero"},             # bad id
        {"id": "b", "type": "Bad!"},               # bad type
        3,                                         # bad shape
        {"id": "home-hero-main", "type": "hero"},  # a taken generated id
    ]},
    "about": {"sections": [{"id": "a", "type": "hero"}]},  # duplicate across pages
}, "other": [1, 2]}

# the seed's race damage only: duplicate ids (edits with explicit ids still work)
RACED = {"pages": {
    "home": {"sections": [{"id": "home-hero-main", "type": "hero"},
                          {"id": "home-hero-main", "type": "hero"}]},
    "about": {"sections": [{"id": "home-hero-main", "type": "hero"}]},
}}

KINDS = ["duplicate_id@home/1", "missing_id@home/2", "bad_id@home/3", "bad_type@home/4",
         "bad_shape@home/5", "duplicate_id@about/0"]


def put(db, tenant, draft, version=3, raw=False):
    """Write a draft directly (raw: draft is already JSON text)."""
    with db.connect() as c:
        c.execute("INSERT INTO tenantq_storefront (tenant, draft, version) "
                  "VALUES (%s, %s::jsonb, %s)",
                  (tenant, draft if raw else json.dumps(draft), version))


def kinds(problems):
    return ["%s@%s/%s" % (p["problem"], p["page"], p["index"]) for p in problems]


def scan(db):
    p = subprocess.run([daemon_bin(), "--database", db.conninfo, "--scan"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines, "no summary line: %s" % p.stderr
    return p.returncode, lines[:-1], lines[-1], p.stderr


def test_check_lists_every_kind_read_only(daemon, db):
    put(db, "acme", DAMAGED)
    before = db.snapshot()
    r = ok(call(daemon.endpoint, "acme", "draft.check"))
    assert kinds(r["problems"]) == KINDS
    assert r["version"] == 3
    dup = r["problems"][5]
    assert dup["id"] == "a" and "first occurrence is on page \"home\" at index 0" in dup["message"]
    assert db.snapshot() == before
    # a tenant without a row has nothing to check
    assert ok(call(daemon.endpoint, "nobody", "draft.check")) == {"problems": [], "version": 0}


def test_repair_dry_run_then_repair_then_noop(daemon, db):
    put(db, "acme", DAMAGED)
    before = db.snapshot()
    want = [{"page": "home", "index": 1, "from": "a", "to": "home-hero-2"},
            {"page": "home", "index": 2, "from": None, "to": "home-text-main"},
            {"page": "about", "index": 0, "from": "a", "to": "about-hero-main"}]
    dry = ok(call(daemon.endpoint, "acme", "draft.repair", {"dry_run": True}))
    assert dry["renamed"] == want and dry["version"] == 3
    assert db.snapshot() == before, "a dry run wrote"

    r = ok(call(daemon.endpoint, "acme", "draft.repair"))
    assert r["renamed"] == want and r["version"] == 4
    assert kinds(r["unrepaired"]) == ["bad_id@home/3", "bad_type@home/4", "bad_shape@home/5"]
    row = db.row("acme")
    assert row["version"] == 4
    home = row["draft"]["pages"]["home"]["sections"]
    assert [s.get("id") if isinstance(s, dict) else s for s in home] == \
        ["a", "home-hero-2", "home-text-main", "Bad", "b", 3, "home-hero-main"]
    assert row["draft"]["pages"]["about"]["sections"][0]["id"] == "about-hero-main"
    assert row["draft"]["other"] == [1, 2] and home[1]["x"] == 1, "other fields kept"

    after = db.snapshot()
    again = ok(call(daemon.endpoint, "acme", "draft.repair"))
    assert again["renamed"] == [] and again["version"] == 4
    assert db.snapshot() == after, "a repeat repair wrote"
    # what repair cannot fix (a section that is not an object) still blocks edits
    r = call(daemon.endpoint, "acme", "section.upsert",
             {"page": "home", "section": {"type": "hero"}})
    assert r["error"]["code"] == "INTERNAL" and "sections[5]" in r["error"]["message"]


def test_repair_args_checked_at_admission(daemon, db):
    for args in ({"dry_run": 1}, {"dry_run": "yes"}, {"dry": True}):
        r = call(daemon.endpoint, "acme", "draft.repair", args)
        assert r["ok"] is False and r["error"]["code"] == "INVALID_ARGUMENT", r
    r = call(daemon.endpoint, "acme", "draft.check", {"dry_run": True})
    assert r["error"]["code"] == "INVALID_ARGUMENT"


def test_scan_exit_codes_and_pages(db):
    rc, lines, summary, err = scan(db)
    assert rc == 0 and lines == [] and summary["scanned"] == 0, err
    clean = {"pages": {"home": {"sections": [{"id": "x", "type": "hero"}]}}}
    with db.connect() as c:
        c.execute("INSERT INTO tenantq_storefront (tenant, draft) "
                  "SELECT 't' || lpad(g::text, 4, '0'), %s::jsonb FROM generate_series(0, 1199) g",
                  (json.dumps(clean),))
    rc, lines, summary, err = scan(db)
    assert rc == 0 and lines == [] and summary["scanned"] == 1200, err
    # damage on both sides of the page boundaries (500 rows a page)
    bad = ["t0000", "t0499", "t0500", "t0999", "t1000", "t1199"]
    with db.connect() as c:
        for t in bad:
            c.execute("UPDATE tenantq_storefront SET draft = %s::jsonb WHERE tenant = %s",
                      (json.dumps(DAMAGED), t))
    rc, lines, summary, err = scan(db)
    assert rc == 1, err
    assert [line["tenant"] for line in lines] == bad
    assert all(kinds(line["problems"]) == KINDS for line in lines)
    assert summary == {"scanned": 1200, "tenants_with_problems": 6, "problems": 36}


def test_scan_connection_error_exits_2(db):
    p = subprocess.run([daemon_bin(), "--database", "host=/nonexistent-dir dbname=x", "--scan"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 2 and "cannot connect" in p.stderr


def test_hostile_stored_drafts(daemon, db):
    deep = "[" * 2000 + "]" * 2000
    huge = "Z" * 200000
    hostile = {
        "h-array": "[1, 2]",
        "h-string": '"text"',
        "h-null": "null",
        "h-pages-array": '{"pages": []}',
        "h-deep": '{"pages": {"p": {"sections": [{"type": "t", "id": "d", "x": %s}]}}}' % deep,
        "h-huge-id": json.dumps({"pages": {"p": {"sections": [
            {"type": "t", "id": huge}, {"type": "t", "id": huge}]}}}),
        "h-many": json.dumps({"pages": {"p": {"sections": [{"type": "hero"}] * 10000}}}),
    }
    for t, text in hostile.items():
        put(db, t, text, raw=True)
    rc, lines, summary, stderr = scan(db)
    assert rc == 1, stderr
    got = {line["tenant"]: line for line in lines}
    assert set(got) == set(hostile) - {"h-null", "h-deep"}
    assert kinds(got["h-array"]["problems"]) == ["bad_shape@None/None"]
    assert len(got["h-many"]["problems"]) == 1000 and got["h-many"]["omitted"] == 9000
    assert all(len(p["id"]) <= 80 for p in got["h-huge-id"]["problems"])
    # through the daemon: always a report (a draft that is not an object is
    # bad_shape, as in the scan), and the daemon stays up
    for t in hostile:
        r = ok(call(daemon.endpoint, t, "draft.check", timeout_ms=30000))
        if t in ("h-array", "h-string"):
            assert kinds(r["problems"]) == ["bad_shape@None/None"], r
            assert "not a JSON object" in r["problems"][0]["message"], r
            rep = ok(call(daemon.endpoint, t, "draft.repair"))
            assert rep["renamed"] == [] and kinds(rep["unrepaired"]) == ["bad_shape@None/None"]
            assert rep["version"] == 3 and db.row(t)["version"] == 3
            e = err(call(daemon.endpoint, t, "draft.get"), "INTERNAL")
            assert "not a JSON object" in e["message"], e
    r = ok(call(daemon.endpoint, "h-many", "draft.repair", timeout_ms=30000))
    assert len(r["renamed"]) == 1000 and r["renamed_omitted"] == 9000 and r["version"] == 4
    ids = [s["id"] for s in db.row("h-many")["draft"]["pages"]["p"]["sections"]]
    assert len(set(ids)) == 10000
    assert ok(call(daemon.endpoint, "x", "ping")) == {"pong": True}


def test_scan_pipe_repair_with_concurrent_edits(daemon, db):
    tenants = ["c%02d" % i for i in range(20)]
    for t in tenants:
        put(db, t, RACED)
    acked = {t: [] for t in tenants}
    errors = []
    stop = threading.Event()

    def editor(k):
        n = 0
        while not stop.is_set() or n < 5:
            t = tenants[(k + n) % len(tenants)]
            sid = "e%d-%d" % (k, n)
            r = call(daemon.endpoint, t, "section.upsert",
                     {"page": "live", "section": {"type": "hero", "id": sid}}, timeout_ms=30000)
            if r["ok"]:
                acked[t].append(sid)
            else:
                errors.append(r)
            n += 1

    threads = [threading.Thread(target=editor, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    try:
        scanner = subprocess.Popen([daemon_bin(), "--database", db.conninfo, "--scan"],
                                   stdout=subprocess.PIPE)
        repair = subprocess.Popen([cli_bin(), "-e", daemon.endpoint, "-t", "30000", "repair"],
                                  stdin=scanner.stdout, stdout=subprocess.PIPE, text=True)
        scanner.stdout.close()
        out, _ = repair.communicate(timeout=120)
        assert scanner.wait(timeout=60) == 1
        assert repair.returncode == 0, out
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=120)
    assert errors == []
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["tenant"] for line in lines[:-1]) == tenants
    assert all(line["ok"] and line["renamed"] == 2 for line in lines[:-1])
    assert lines[-1]["tenants"] == 20 and lines[-1]["failed"] == 0 and lines[-1]["renamed"] == 40
    for t in tenants:
        d = db.row(t)["draft"]
        live = [s["id"] for s in d["pages"]["live"]["sections"]]
        # (threads append their acks in reply order, which may differ from commit order)
        assert sorted(live) == sorted(acked[t]), "tenant %s lost edits" % t
        ids = [s["id"] for p in d["pages"].values() for s in p["sections"]
               if isinstance(s, dict) and isinstance(s.get("id"), str)]
        assert len(ids) == len(set(ids)), "duplicates left in %s" % t
    rc, lines, summary, err = scan(db)
    assert rc == 0 and lines == [], "damage left after the repair: %r" % lines
    with db.connect() as c:
        for t in tenants[:3]:
            c.execute("UPDATE tenantq_storefront SET draft = %s::jsonb WHERE tenant = %s",
                      (json.dumps(RACED), t))
    # a dry run through the pipe writes nothing
    before = db.snapshot()
    scanner = subprocess.Popen([daemon_bin(), "--database", db.conninfo, "--scan"],
                               stdout=subprocess.PIPE)
    p = subprocess.run([cli_bin(), "-e", daemon.endpoint, "repair", "--dry-run"],
                       stdin=scanner.stdout, stdout=subprocess.PIPE, text=True, timeout=120)
    scanner.stdout.close()
    scanner.wait(timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[-1])["dry_run"] is True
    assert db.snapshot() == before


def test_cli_repair_usage_and_bad_lines(daemon, db):
    p = subprocess.run([cli_bin(), "-e", daemon.endpoint, "repair", "--now"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 2 and "repair takes only --dry-run" in p.stderr
    put(db, "acme", RACED)
    lines = 'not json\n{"scanned":1}\n{"tenant":"acme","problems":[]}\n{"tenant":""}\n'
    p = subprocess.run([cli_bin(), "-e", daemon.endpoint, "repair"], input=lines,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert p.returncode == 1, p.stdout
    assert "skipped a line that is not JSON" in p.stderr
    assert out[0] == {"tenant": "acme", "ok": True, "renamed": 2, "unrepaired": 0, "version": 4,
                      "unrepaired_problems": []}
    assert out[1]["tenant"] == "" and out[1]["ok"] is False and "BAD_REQUEST" in out[1]["error"]
    assert out[2] == {"tenants": 2, "failed": 1, "renamed": 2, "unrepaired": 0, "dry_run": False}
