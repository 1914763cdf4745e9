"""tenantq-load as a test: short runs of every mode against a real daemon
and the session database, asserting on the --json report and the exit
status (tests/load/README.md: 0 = run done, check passed or skipped, some
request succeeded; 1 = check failed or nothing succeeded; 2 = usage/setup).

daemon and direct must keep every acknowledged edit and never duplicate an
id; unsafe (no lock, partial page writes) must be caught by the checker,
which shows that the check can fail; echo measures the transport alone.
Runs are kept short (SECONDS each) so the file stays well under 20 s, also
with the ASan build."""

import json
import os
import subprocess

from tqlib import build_dir

SECONDS = "1.5"
EXPECTED_ERRORS = {"DUPLICATE_SECTION_ID", "NOT_FOUND", "INVALID_ARGUMENT"}
CHECK_KEYS = {"duplicate_ids", "lost_acknowledged", "passed", "tenants_with_duplicates",
              "version_deficit", "tenants_checked", "tenants_uncertain"}


def load_bin():
    return os.path.join(build_dir(), "tests", "load", "tenantq-load")


def run_load(tmp_path, *args, timeout=60):
    """Run tenantq-load with --json; returns (exit status, report, output)."""
    out = tmp_path / "report.json"
    p = subprocess.run([load_bin(), *[str(a) for a in args], "--duration", SECONDS,
                        "--json", str(out)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert out.exists(), "no JSON report (exit %d):\n%s" % (p.returncode, p.stdout)
    with open(out) as f:
        report = json.load(f)
    return p.returncode, report, p.stdout


def _common(report, mode, output):
    assert report["mode"] == mode, report
    assert report["requests"] > 0 and report["ok"] > 0, output
    assert report["ok"] + report["errors_total"] == report["requests"], report
    assert sum(report["errors"].values()) == report["errors_total"], report
    lat = report["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"], lat


def _safe(rc, report, output, mode):
    _common(report, mode, output)
    c = report["check"]
    assert CHECK_KEYS <= set(c), c
    assert c["duplicate_ids"] == 0 and c["lost_acknowledged"] == 0, (c, output)
    assert c["version_deficit"] == 0 and c["tenants_with_duplicates"] == 0, c
    assert c["passed"] is True, c
    assert c["tenants_checked"] > 0, c
    # only the workload's own expected errors (collide makes the daemon or
    # the locked baseline refuse duplicates): nothing of the infrastructure
    assert set(report["errors"]) <= EXPECTED_ERRORS, (report["errors"], output)
    assert rc == 0, "tenantq-load exited %d:\n%s" % (rc, output)


def test_daemon_mode(daemon_factory, db, tmp_path):
    d = daemon_factory()
    rc, report, output = run_load(tmp_path, "--mode", "daemon", "-e", d.endpoint,
                                  "--database", db.conninfo, "--clients", 8,
                                  "--tenants", 20, "--collide", 0.2)
    _safe(rc, report, output, "daemon")
    assert report["check"]["tenants_uncertain"] == 0, report["check"]
    # what the checker read is what is stored: 20 seeded tenants, no duplicates
    with db.connect() as c:
        n = c.execute("SELECT count(*) FROM tenantq_storefront "
                      "WHERE tenant LIKE 'load-t%'").fetchone()[0]
    assert n == 20
    d.ping()


def test_daemon_mode_async(daemon_factory, db, tmp_path):
    """The same run with the clients as libtenantq asynchronous calls on two
    event loops (tq_call_async): every call answered and checked alike, and
    the remove-then-re-add chains started from callbacks keep the drafts
    whole."""
    d = daemon_factory()
    rc, report, output = run_load(tmp_path, "--mode", "daemon", "-e", d.endpoint,
                                  "--database", db.conninfo, "--clients", 16, "--async", 2,
                                  "--tenants", 20, "--collide", 0.2)
    _safe(rc, report, output, "daemon")
    assert report["check"]["tenants_uncertain"] == 0, report["check"]
    assert report["requests"] > 100, report
    d.ping()


def test_async_usage(tmp_path):
    for args in (["--mode", "direct", "--async", "1"],
                 ["--mode", "echo", "--clients", "2", "--async", "3"],
                 ["--mode", "echo", "--async", "0"]):
        p = subprocess.run([load_bin(), *args, "--duration", "1"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        assert p.returncode == 2, (args, p.stdout)
        assert "--async" in p.stdout, (args, p.stdout)


def test_direct_mode(db, tmp_path):
    rc, report, output = run_load(tmp_path, "--mode", "direct", "--database", db.conninfo,
                                  "--clients", 8, "--tenants", 20, "--collide", 0.2)
    _safe(rc, report, output, "direct")


def test_unsafe_mode_shows_the_race(db, tmp_path):
    """Without the lock, eight clients on one tenant with colliding upserts
    produce duplicate ids or lose acknowledged edits, and the checker says
    so (exit status 1)."""
    rc, report, output = run_load(tmp_path, "--mode", "unsafe", "--database", db.conninfo,
                                  "--clients", 8, "--tenants", 1, "--collide", 0.5)
    _common(report, "unsafe", output)
    c = report["check"]
    assert c["duplicate_ids"] > 0 or c["lost_acknowledged"] > 0, (c, output)
    assert c["passed"] is False, c
    assert rc == 1, "unsafe run exited %d (expected 1: check failed):\n%s" % (rc, output)
    if c["duplicate_ids"] > 0:
        # the database really holds a draft with a repeated id
        with db.connect() as conn:
            dup = conn.execute(
                "SELECT count(*) FROM (SELECT s->>'id' AS id FROM tenantq_storefront, "
                "jsonb_each(draft->'pages') AS p(name, page), "
                "jsonb_array_elements(page->'sections') AS s WHERE tenant = 'load-t000000' "
                "GROUP BY 1 HAVING count(*) > 1) d").fetchone()[0]
        assert dup > 0


def test_echo_mode(tmp_path):
    rc, report, output = run_load(tmp_path, "--mode", "echo", "--clients", 4)
    _common(report, "echo", output)
    assert report["errors_total"] == 0, report
    assert report["check"].get("skipped") is True, report["check"]
    assert rc == 0, output


def test_echo_mode_async(tmp_path):
    rc, report, output = run_load(tmp_path, "--mode", "echo", "--clients", 8, "--async", 1)
    _common(report, "echo", output)
    assert report["errors_total"] == 0, report
    assert rc == 0, output


def test_bad_usage_exits_2(tmp_path):
    p = subprocess.run([load_bin(), "--mode", "nonsense", "--duration", "1"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stdout


def test_smoke_script(daemon_factory, db):
    """tests/load/smoke.sh itself, with one-second runs: four modes pass."""
    d = daemon_factory()
    script = os.path.join(os.path.dirname(__file__), "..", "load", "smoke.sh")
    env = dict(os.environ, TQ_BUILD_DIR=build_dir(), TQ_TEST_DATABASE=db.conninfo,
               TQ_ENDPOINT=d.endpoint, TQ_LOAD_SECONDS="1")
    p = subprocess.run(["sh", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout
    assert p.stdout.rstrip().splitlines()[-1] == "load-smoke: 4 passed, 0 failed", p.stdout
    d.ping()

