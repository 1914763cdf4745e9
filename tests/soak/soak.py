#!/usr/bin/python3
"""Soak under faults: mixed keyed traffic from the Python wire client, the
tenantq CLI (libtenantq), the Node client and tenantq-load for a given time,
against two tenantqd on one database (a primary with a synchronous streaming
standby), while a seeded fault injector kills a daemon, restarts PostgreSQL,
fails over to the standby, freezes a backend and floods a metrics port.
Afterwards every acknowledged change is checked on the final primary, and
the RSS and descriptor count of the daemon that ran the whole time against
their baseline.  Not part of CI's test suite proper: scripts/test runs a
3-minute version (tests/soak/run.sh); docs/soak.md has the figures of a long
run and explains every check.

Usage: /usr/bin/python3 tests/soak/soak.py [--seconds 180] [--seed N] [--json FILE]
       (see --help).  Needs root or a user that can run PostgreSQL 15's
       binaries; the build dir from TQ_BUILD_DIR or --build-dir (default build).

The topology (docs/soak.md, "Topology"):
  * servers a and b (tqlib.PgPair's layout: unix sockets only, fsync on), one
    primary and one standby streaming from it, synchronous_standby_names='*'
    on the primary while its standby streams; the daemons' conninfo is
    `host=A,B target_session_attrs=read-write`;
  * daemon d0 runs the whole time (its RSS and fds are measured), daemon d1
    is the one that gets SIGKILLed and restarted on the same endpoint.

Faults, one at a time, kinds in a shuffled round so that each kind comes
once before any comes twice, gaps drawn from the seed:
  kill_daemon   SIGKILL d1, restart it on its endpoint after 0.2-3 s
  pg_restart    pg_ctl restart -m fast|immediate of the current primary
  failover      the primary stopped -m immediate, the standby promoted; then
                the old primary's data dir is rebuilt from the new primary
                with pg_basebackup and started as its standby, and
                synchronous replication switched on again once it streams
                (so every failover of a run finds a synchronous standby)
  sigstop       SIGSTOP one of the daemons' backends (pg_stat_activity,
                application_name tenantqd) for 2-6 s, then SIGCONT
  metrics_flood 300 connections to a daemon's metrics port (a third of them
                sending a request, a third half a request, the rest
                nothing) held 3 s, plus 40 /metrics scrapes; /healthz must
                answer again within 10 s

Exit status: 0 no violation, 1 a violation (listed in the JSON summary), 2
setup failure.
"""

import argparse
import bisect
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import psycopg  # noqa: E402

import tqlib  # noqa: E402
from tqlib import (PG_BIN, RETRYABLE_CODES, SANITIZER_MARKERS, Client, Daemon, NNError,  # noqa: E402
                   NNTimeout, free_tcp_port, init_db, log_tail, sigkill)

OPS_DIR = os.path.join(REPO, "systemd", "ops", "booking", "ops")
BOOKING_SCHEMA = os.path.join(REPO, "systemd", "ops", "booking", "schema.sql")
NODE_DIR = os.path.join(REPO, "client", "node")
NODE_SCRIPT = os.path.join(HERE, "node_writer.mjs")
PAGES = ("home", "about")
BOOKING_BASE = 1893456000  # 2030-01-01T00:00:00Z: slot k is BASE + 60 k
RESOLVE_S = 120.0          # a keyed request still unresolved after this: a violation
FAULT_KINDS = ("kill_daemon", "pg_restart", "failover", "sigstop", "metrics_flood")
CLIENT_ERRORS = {"TIMEOUT", "TRANSPORT"}  # the clients' own: no reply, outcome unknown


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# bookkeeping shared by every thread


class Run:
    def __init__(self, args):
        self.args = args
        self.t0 = now()
        self.lock = threading.Lock()
        self.stop = threading.Event()        # traffic stops
        self.t_stop = None
        self.faults_stop = threading.Event()  # the injector stops
        self.requests = {}    # client kind -> tries sent
        self.acks = {}        # client kind -> acknowledged requests (changes and reads)
        self.errors = {}      # client kind -> {code: n}
        self.ack_times = []   # monotonic time of every acknowledgement
        self.violations = []  # {"kind", "detail", "t"}
        self.faults = []      # {"kind", "t", "took_s", ...}
        self.uncertain = set()  # tenants whose exact check is void (an unresolved request)

    def el(self):
        return now() - self.t0

    def say(self, msg):
        print("[%7.1fs] %s" % (self.el(), msg), flush=True)

    def request(self, kind):
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1

    def error(self, kind, code):
        with self.lock:
            e = self.errors.setdefault(kind, {})
            e[code] = e.get(code, 0) + 1

    def ack(self, kind):
        t = now()
        with self.lock:
            self.acks[kind] = self.acks.get(kind, 0) + 1
            self.ack_times.append(t)

    def violation(self, kind, detail):
        with self.lock:
            self.violations.append({"kind": kind, "detail": detail, "t": round(self.el(), 1)})
        self.say("VIOLATION %s: %s" % (kind, detail))


# --------------------------------------------------------------------------
# rendezvous routing of libtenantq and the Node client (client/node/src/route.ts)

_M64 = (1 << 64) - 1


def _fnv(h, data):
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & _M64
    return h


def _fmix(k):
    k ^= k >> 33
    k = (k * 0xff51afd7ed558ccd) & _M64
    k ^= k >> 33
    k = (k * 0xc4ceb9fe1a85ec53) & _M64
    return k ^ (k >> 33)


def home_endpoint(endpoints, tenant):
    """Index of the endpoint libtenantq and the Node client send tenant to."""
    def score(e):
        h = _fnv(_fnv(0xcbf29ce484222325, e.encode()), b"\0")
        return _fmix(_fnv(h, tenant.encode()))
    scores = [score(e) for e in endpoints]
    return max(range(len(endpoints)), key=lambda i: (scores[i], -i))


def tenants_homed(endpoints, prefix):
    """One tenant name per endpoint, each routed to that endpoint."""
    out = {}
    k = 0
    while len(out) < len(endpoints):
        t = "%s%d" % (prefix, k)
        out.setdefault(home_endpoint(endpoints, t), t)
        k += 1
    return [out[i] for i in range(len(endpoints))]


# --------------------------------------------------------------------------
# PostgreSQL: two servers whose roles swap at each failover


class Pair:
    """Servers 'a' and 'b' under root/, each with its socket dir root/X and
    data root/X/data (tqlib.PgPair's layout), one primary and one standby."""

    def __init__(self, root):
        self.root = root
        self.as_root = os.geteuid() == 0
        self.primary, self.standby = "a", "b"
        for n in ("a", "b"):
            d = self.sock(n)
            os.mkdir(d)
            os.chmod(d, 0o755)
            if self.as_root:
                shutil.chown(d, "postgres", "postgres")
        if self.as_root:
            shutil.chown(root, "postgres", "postgres")
        self.conninfo = ("host=%s,%s user=postgres dbname=postgres "
                         "target_session_attrs=read-write connect_timeout=2"
                         % (self.sock("a"), self.sock("b")))
        self._pg(["initdb", "-D", self.data("a"), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C"])
        self._start("a")
        self._make_standby("b")
        self._sync_on()

    def sock(self, n):
        return os.path.join(self.root, n)

    def data(self, n):
        return os.path.join(self.root, n, "data")

    def logfile(self, n):
        return os.path.join(self.root, n, "postgres.log")

    def ci(self, n):
        return "host=%s user=postgres dbname=postgres connect_timeout=5" % self.sock(n)

    def primary_ci(self):
        return self.ci(self.primary)

    def _pg(self, argv, check=True, timeout=120):
        cmd = [os.path.join(PG_BIN, argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed:\n%s\n%s" % (" ".join(argv), p.stdout,
                                                       log_tail(self.logfile(self.primary), 20)))
        return p

    def _start(self, n):
        # no synchronous_standby_names here: ALTER SYSTEM sets it (a command
        # line -c would win over it).  wal_retrieve_retry_interval: with the
        # default 5 s a standby whose primary restarted reconnects up to 5 s
        # later, and every synchronous COMMIT waits that long (docs/soak.md)
        self._pg(["pg_ctl", "-D", self.data(n), "-l", self.logfile(n), "-w", "-t", "60", "-o",
                  "-k %s -c listen_addresses='' -c fsync=on -c max_connections=60 "
                  "-c wal_level=replica -c max_wal_senders=4 -c shared_buffers=32MB "
                  "-c hot_standby=on -c wal_keep_size=256MB -c wal_retrieve_retry_interval=500ms"
                  % self.sock(n), "start"])

    def _make_standby(self, n):
        """Data dir of n made anew from the primary (pg_basebackup -R), started."""
        shutil.rmtree(self.data(n), ignore_errors=True)
        self._pg(["pg_basebackup", "-h", self.sock(self.primary), "-U", "postgres",
                  "-D", self.data(n), "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                 timeout=600)
        self._start(n)
        self.wait_streaming("async")

    def _set_sync(self, value):
        with psycopg.connect(self.primary_ci(), autocommit=True) as c:
            c.execute("ALTER SYSTEM SET synchronous_standby_names = '%s'" % value)
            c.execute("SELECT pg_reload_conf()")

    def _sync_on(self):
        self._set_sync("*")
        self.wait_streaming("sync")

    def wait_streaming(self, want, timeout=60.0):
        deadline = now() + timeout
        last = None
        while now() < deadline:
            try:
                with psycopg.connect(self.primary_ci(), autocommit=True) as c:
                    last = c.execute("SELECT state, sync_state FROM pg_stat_replication"
                                     ).fetchall()
                if any(s == "streaming" and ss == want for s, ss in last):
                    return
            except psycopg.Error as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError("standby not streaming (%s) within %.0f s: %r\n%s" % (
            want, timeout, last, log_tail(self.logfile(self.standby), 20)))

    def restart_primary(self, mode):
        self._pg(["pg_ctl", "-D", self.data(self.primary), "-l", self.logfile(self.primary),
                  "-m", mode, "-w", "-t", "60", "restart"])

    def failover(self):
        """Crash the primary, promote the standby, rebuild a standby in the
        old primary's place.  Returns the phases' durations."""
        old, new = self.primary, self.standby
        t0 = now()
        self._pg(["pg_ctl", "-D", self.data(old), "-m", "immediate", "-w", "stop"])
        t1 = now()
        self._pg(["pg_ctl", "-D", self.data(new), "-w", "-t", "60", "promote"])
        t2 = now()
        self.primary, self.standby = new, old
        # the promoted server must not wait for a standby it does not have yet
        self._set_sync("")
        t3 = now()
        self._make_standby(old)
        self._sync_on()
        t4 = now()
        return {"from": old, "to": new, "stop_s": round(t1 - t0, 2),
                "promote_s": round(t2 - t1, 2), "rebuild_s": round(t4 - t3, 2)}

    def backends(self):
        with psycopg.connect(self.primary_ci(), autocommit=True) as c:
            return [r[0] for r in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'tenantqd' "
                "AND backend_type = 'client backend'").fetchall()]

    def destroy(self):
        for n in ("a", "b"):
            if os.path.exists(os.path.join(self.data(n), "postmaster.pid")):
                self._pg(["pg_ctl", "-D", self.data(n), "-m", "immediate", "-w", "stop"],
                         check=False)


# --------------------------------------------------------------------------
# the daemons


DAEMON_FLAGS = ["--shards", "2", "--connections-per-shard", "2",
                "--default-deadline-ms", "2000", "--lock-timeout-ms", "1000",
                "--statement-timeout-ms", "3000", "--shutdown-grace-ms", "3000",
                "--idempotency-ttl-s", "900", "--ops-dir", OPS_DIR]


class Daemons:
    """d0 (never killed) and d1 (killed and restarted), each on a fixed
    endpoint and metrics port; every daemon's log is kept in workdir."""

    def __init__(self, run, conninfo, workdir):
        self.run = run
        self.conninfo = conninfo
        self.workdir = workdir
        self.endpoints = ["ipc://%s/d%d.sock" % (workdir, i) for i in range(2)]
        self.ports = [free_tcp_port() for _ in range(2)]
        self.procs = [None, None]
        self.generation = [0, 0]
        self.killing = threading.Lock()
        self.expected_down = [False, False]
        for i in range(2):
            self.start(i)

    def start(self, i):
        d = Daemon(self.conninfo, DAEMON_FLAGS + ["--metrics-listen", "127.0.0.1:%d" % self.ports[i],
                                                  "--listen", self.endpoints[i]])
        d.endpoint = self.endpoints[i]
        self.procs[i] = d
        try:
            d.wait_ready(30)
        except BaseException as e:  # tqlib raises pytest's Failed
            raise RuntimeError("d%d did not start: %s" % (i, e))
        self.expected_down[i] = False

    def _keep_log(self, i, d):
        self.generation[i] += 1
        try:
            shutil.copy(d.stderr, os.path.join(self.workdir, "d%d.%d.log" % (i, self.generation[i])))
        except OSError:
            pass

    def kill(self, i):
        d = self.procs[i]
        self.expected_down[i] = True
        try:
            sigkill(d)
        except AssertionError as e:  # a sanitizer report before the kill
            self.run.violation("sanitizer", "d%d: %s" % (i, e))
        self._keep_log(i, d)
        shutil.rmtree(d.dir, ignore_errors=True)

    def pid(self, i):
        return self.procs[i].pid

    def alive(self, i):
        return self.procs[i].proc.poll() is None

    def stop_all(self):
        """SIGTERM each; exit 0 and a log without sanitizer reports, or a violation."""
        out = {}
        for i, d in enumerate(self.procs):
            if d is None or d.stopped:
                continue
            d.stopped = True
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
            try:
                rc = d.proc.wait(30)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                rc = d.proc.wait()
                self.run.violation("daemon_stop", "d%d did not exit within 30 s of SIGTERM" % i)
            d._log.close()
            text = d.log()
            if rc != 0:
                self.run.violation("daemon_stop", "d%d exited with %d:\n%s" % (i, rc, d.tail()))
            for m in SANITIZER_MARKERS:
                if m in text:
                    self.run.violation("sanitizer", "d%d: %s" % (i, m))
            out["d%d" % i] = {"exit": rc, "reconnects_logged": text.count("reconnected to the database")}
            self._keep_log(i, d)
            shutil.rmtree(d.dir, ignore_errors=True)
        return out


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# --------------------------------------------------------------------------
# models of what a writer's tenants must hold


def norm_draft(draft):
    """{page: [sections]} without empty pages."""
    return {p: v.get("sections", []) for p, v in (draft or {}).get("pages", {}).items()
            if v.get("sections")}


class Storefront:
    """A tenant edited by one writer alone: its whole draft is known."""

    def __init__(self, name):
        self.name = name
        self.pages = {p: [] for p in PAGES}
        self.published = {}
        self.version = 0

    def ids(self):
        return [s["id"] for p in PAGES for s in self.pages[p]]

    def where(self, sid):
        for p in PAGES:
            for i, s in enumerate(self.pages[p]):
                if s["id"] == sid:
                    return p, i
        raise KeyError(sid)

    def draft(self):
        return {p: list(v) for p, v in self.pages.items() if v}

    def choose(self, rng, prefix, n):
        """The next op (op, args) or ('draft.get', None)."""
        ids = self.ids()
        r = rng.random()
        if len(ids) < 4 or (r < 0.4 and len(ids) < 24):
            return "section.upsert", {"page": rng.choice(PAGES),
                                      "section": {"id": "%s-%d" % (prefix, n), "type": "item",
                                                  "n": 0}}
        if r < 0.55:
            p, i = self.where(rng.choice(ids))
            s = self.pages[p][i]
            return "section.upsert", {"page": p, "index": i,
                                      "section": {"id": s["id"], "type": "item", "n": s["n"] + 1}}
        if r < 0.7:
            return "section.remove", {"id": rng.choice(ids)}
        if r < 0.85:
            sid = rng.choice(ids)
            page = rng.choice(PAGES)
            n_other = len([s for s in self.pages[page] if s["id"] != sid])
            return "section.move", {"id": sid, "page": page, "index": rng.randint(0, n_other)}
        if r < 0.9:
            return "draft.publish", {}
        return "draft.get", None

    def apply(self, op, args):
        if op == "section.upsert":
            if "index" in args:
                self.pages[args["page"]][args["index"]] = args["section"]
            else:
                self.pages[args["page"]].append(args["section"])
        elif op == "section.remove":
            p, i = self.where(args["id"])
            del self.pages[p][i]
        elif op == "section.move":
            p, i = self.where(args["id"])
            s = self.pages[p].pop(i)
            self.pages[args["page"]].insert(args["index"], s)
        elif op == "draft.publish":
            self.published = self.draft()
        self.version += 1


def check_ack_version(run, who, model, version):
    """A writer's change on its own tenant: exactly the next version."""
    if version != model.version + 1:
        run.violation("version_order", "%s %s: change acknowledged with version %r, expected %d"
                      % (who, model.name, version, model.version + 1))


def check_read(run, who, model, version, draft):
    if version != model.version or norm_draft(draft) != model.draft():
        run.violation("read", "%s %s: draft.get gave version %r and %r; the writer's model "
                      "has version %d and %r" % (who, model.name, version, norm_draft(draft),
                                                 model.version, model.draft()))


def slot_iso(k):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BOOKING_BASE + 60 * k))


# --------------------------------------------------------------------------
# writers


class PyWorker:
    """A Python wire-client writer: its own storefront tenant (whole draft
    modelled), the shared storefront tenants (its own section ids there),
    its own booking tenant and the shared booking tenant (slot races)."""

    def __init__(self, run, i, endpoints, shared_tenants, rng):
        self.run = run
        self.i = i
        self.endpoints = endpoints
        self.home = i % len(endpoints)
        self.avoid = [0.0] * len(endpoints)
        self.clients = [Client(e, timeout_ms=4000) for e in endpoints]
        self.rng = rng
        self.n = 0
        self.gen = 0
        self.own = Storefront("soak-own-%d" % i)
        self.owned = [self.own]       # every own-tenant generation, for the final check
        self.shared_tenants = shared_tenants
        self.shared_live = {t: [] for t in shared_tenants}   # my ids there, present
        self.shared_last = {}    # (tenant, id) -> "upsert" | "remove" (last acknowledged)
        self.shared_keys = {t: set() for t in shared_tenants}  # acknowledged change keys
        self.versions = {}       # tenant -> versions acknowledged, in order
        self.bk_tenant = "soak-bk-%d" % i
        self.bookings = {}       # id -> (slot k, customer)
        self.cancelled = set()
        self.bk_next = i * 1000000
        self.shared_slots = {}   # slot k -> set of ids acknowledged ok to me
        self.shared_rejected = {}

    def close(self):
        for c in self.clients:
            c.close()

    def pick(self):
        if self.avoid[self.home] < now():
            return self.home
        return 1 - self.home

    def send(self, tenant, op, args=None, key=None):
        """Until ok or a definite (non-retryable) error; None if unresolved."""
        give_up = now() + RESOLVE_S
        pause = 0.05
        ep = self.pick()
        extra = {"key": key} if key else {}
        while True:
            self.run.request("py")
            r = None
            try:
                r = self.clients[ep].call(tenant, op, args, **extra)
            except NNTimeout:
                self.run.error("py", "TIMEOUT")
                self.run.say("py%d: no reply within 4 s from d%d to %s %s key %r"
                             % (self.i, ep, tenant, op, key))
                self.avoid[ep] = now() + 3
                ep = 1 - ep
            except NNError as e:
                self.run.error("py", "TRANSPORT")
                self.avoid[ep] = now() + 3
                ep = 1 - ep
                self.run.say("py%d transport error: %s" % (self.i, e))
            except AssertionError as e:
                self.run.violation("bad_reply", "py%d: %s" % (self.i, e))
            if r is not None:
                if r["ok"]:
                    self.run.ack("py")
                    return r
                e = r["error"]
                self.run.error("py", e["code"])
                if not e["retryable"]:
                    return r
                if e["code"] not in RETRYABLE_CODES:
                    self.run.violation("error", "py%d: retryable %s is not one of the "
                                       "documented retryable codes: %r" % (self.i, e["code"], e))
                if e["code"] == "SHUTTING_DOWN":
                    ep = 1 - ep
            if now() > give_up:
                self.run.violation("unresolved", "py%d: %s %s %r key %r: no definite answer "
                                   "within %.0f s" % (self.i, tenant, op, args, key, RESOLVE_S))
                self.run.uncertain.add(tenant)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.8)

    def key(self):
        self.n += 1
        return "py%d-k%d" % (self.i, self.n)

    def seen_version(self, tenant, v):
        vs = self.versions.setdefault(tenant, [])
        if vs and not v > vs[-1]:
            self.run.violation("version_order", "py%d %s: version %r acknowledged after %r"
                               % (self.i, tenant, v, vs[-1]))
        vs.append(v)

    def unexpected(self, tenant, op, args, r):
        self.run.violation("error", "py%d %s %s %r: %r" % (self.i, tenant, op, args, r["error"]))

    def new_own_tenant(self):
        """After an unexpected error or an unresolved request the model of
        the own tenant is void: continue on a fresh one."""
        self.run.uncertain.add(self.own.name)
        self.gen += 1
        self.own = Storefront("soak-own-%d-g%d" % (self.i, self.gen))
        self.owned.append(self.own)

    # -- the four kinds of work

    def own_step(self):
        m = self.own
        self.n += 1
        op, args = m.choose(self.rng, "py%d" % self.i, self.n)
        if op == "draft.get":
            r = self.send(m.name, op)
            if r is None:
                return
            if not r["ok"]:
                return self.unexpected(m.name, op, args, r)
            check_read(self.run, "py%d" % self.i, m, r["result"]["version"], r["result"]["draft"])
            return
        r = self.send(m.name, op, args, key=self.key())
        if r is None:
            return self.new_own_tenant()
        if not r["ok"]:
            self.unexpected(m.name, op, args, r)
            return self.new_own_tenant()
        check_ack_version(self.run, "py%d" % self.i, m, r["result"]["version"])
        m.apply(op, args)

    def shared_step(self):
        t = self.rng.choice(self.shared_tenants)
        live = self.shared_live[t]
        if self.rng.random() < 0.1:
            r = self.send(t, "draft.get")
            if r is None or not r["ok"]:
                return r and self.unexpected(t, "draft.get", None, r)
            ids = [s["id"] for p in r["result"]["draft"]["pages"].values() for s in p["sections"]]
            for sid in live:
                if ids.count(sid) != 1:
                    self.run.violation("read", "py%d %s: my acknowledged section %s present %d "
                                       "times in a read" % (self.i, t, sid, ids.count(sid)))
            vs = self.versions.get(t)
            if vs and r["result"]["version"] < vs[-1]:
                self.run.violation("read", "py%d %s: read version %d older than my last change's %d"
                                   % (self.i, t, r["result"]["version"], vs[-1]))
            return
        if len(live) > 6 and self.rng.random() < 0.5:
            sid = live[self.rng.randrange(len(live))]
            op, args = "section.remove", {"id": sid}
        else:
            self.n += 1
            sid = "py%d-s%d" % (self.i, self.n)
            op, args = "section.upsert", {"page": self.rng.choice(PAGES),
                                          "section": {"id": sid, "type": "item", "w": self.i}}
        key = self.key()
        r = self.send(t, op, args, key=key)
        if r is None:
            self.shared_last[(t, sid)] = "unknown"
            return
        if not r["ok"]:
            return self.unexpected(t, op, args, r)
        self.seen_version(t, r["result"]["version"])
        self.shared_keys[t].add(key)
        if op == "section.remove":
            live.remove(sid)
            self.shared_last[(t, sid)] = "remove"
        else:
            live.append(sid)
            self.shared_last[(t, sid)] = "upsert"

    def booking_step(self):
        t = self.bk_tenant
        live = [b for b in self.bookings if b not in self.cancelled]
        r = self.rng.random()
        if r < 0.2:
            rr = self.send(t, "booking.list", {"from": slot_iso(-1), "until": slot_iso(10 ** 8)})
            if rr is None or not rr["ok"]:
                return rr and self.unexpected(t, "booking.list", None, rr)
            got = sorted(row["id"] for row in rr["result"]["rows"])
            if got != sorted(live):
                self.run.violation("read", "py%d %s: booking.list gave %r, acknowledged %r"
                                   % (self.i, t, got, sorted(live)))
            return
        if len(live) > 8 and r < 0.6:
            bid = self.rng.choice(live)
            rr = self.send(t, "booking.cancel", {"id": bid}, key=self.key())
            if rr is None:
                return
            if not rr["ok"]:
                return self.unexpected(t, "booking.cancel", bid, rr)
            self.cancelled.add(bid)
            return
        self.bk_next += 1
        k = self.bk_next
        key = self.key()
        rr = self.send(t, "booking.create", {"slot": slot_iso(k), "customer": key}, key=key)
        if rr is None:
            return
        if not rr["ok"]:
            return self.unexpected(t, "booking.create", k, rr)
        bid = rr["result"]["rows"][0]["id"]
        if bid in self.bookings:
            self.run.violation("duplicate", "py%d: booking id %d acknowledged twice" % (self.i, bid))
        self.bookings[bid] = (k, key)

    def shared_booking_step(self):
        k = int(self.run.el() / 2)  # every worker in the same 2 s goes for the same slot
        key = self.key()
        rr = self.send("soak-bk-shared", "booking.create", {"slot": slot_iso(k), "customer": key},
                       key=key)
        if rr is None:
            self.shared_slots.setdefault(k, set()).add(None)
            return
        if rr["ok"]:
            self.shared_slots.setdefault(k, set()).add(rr["result"]["rows"][0]["id"])
        elif rr["error"]["code"] == "REJECTED":
            self.shared_rejected[k] = self.shared_rejected.get(k, 0) + 1
            self.shared_slots.setdefault(k, set())
        else:
            self.unexpected("soak-bk-shared", "booking.create", k, rr)

    def loop(self):
        pause = self.run.args.pause_ms / 1000.0
        steps = ((0.5, self.own_step), (0.75, self.shared_step), (0.92, self.booking_step),
                 (1.0, self.shared_booking_step))
        try:
            while not self.run.stop.is_set():
                r = self.rng.random()
                for edge, fn in steps:
                    if r < edge:
                        fn()
                        break
                time.sleep(pause * (0.5 + self.rng.random()))
        except Exception:
            self.run.violation("worker_crash", "py%d:\n%s" % (self.i, traceback.format_exc()))
        finally:
            self.close()


class CliWriter:
    """The tenantq CLI (libtenantq), one process per try, -k KEY, both
    endpoints listed; its tenants (one routed to each daemon) are its own."""

    def __init__(self, run, endpoints, tenants, rng, cli):
        self.run = run
        self.eps = ",".join(endpoints)
        self.models = [Storefront(t) for t in tenants]
        self.rng = rng
        self.cli = cli
        self.n = 0
        self.env = dict(os.environ)
        self.env.pop("TENANTQ_ENDPOINT", None)

    def send(self, tenant, op, args, key):
        give_up = now() + RESOLVE_S
        argv = [self.cli, "-e", self.eps, "-t", "4000"]
        if key:
            argv += ["-k", key]
        argv += ["call", tenant, op, json.dumps(args or {})]
        while True:
            self.run.request("cli")
            try:
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=self.env, timeout=60, stdin=subprocess.DEVNULL)
                rc, out, err = p.returncode, p.stdout, p.stderr
            except subprocess.TimeoutExpired:
                rc, out, err = 3, "", "TIMEOUT: the CLI hung for 60 s"
                self.run.violation("cli_hang", "%s %s: the CLI did not exit within 60 s" % (tenant, op))
            if rc == 0:
                self.run.ack("cli")
                return json.loads(out)
            code = err.split(":", 1)[0].strip() or "EXIT%d" % rc
            if rc == 3:
                self.run.error("cli", code if code in CLIENT_ERRORS else "TIMEOUT")
            else:
                self.run.error("cli", code)
                if rc != 1 or code not in RETRYABLE_CODES:
                    self.run.violation("error", "cli %s %s %r: exit %d: %s" % (tenant, op, args, rc, err.strip()))
                    self.run.uncertain.add(tenant)
                    return None
            if now() > give_up:
                self.run.violation("unresolved", "cli %s %s key %r" % (tenant, op, key))
                self.run.uncertain.add(tenant)
                return None
            time.sleep(0.1)

    def loop(self):
        try:
            turn = 0
            while not self.run.stop.is_set():
                m = self.models[turn % len(self.models)]
                turn += 1
                if m.name in self.run.uncertain:
                    continue
                self.n += 1
                op, args = m.choose(self.rng, "cli", self.n)
                if op == "draft.get":
                    res = self.send(m.name, op, None, None)
                    if res is not None:
                        check_read(self.run, "cli", m, res["version"], res["draft"])
                else:
                    res = self.send(m.name, op, args, "cli-k%d" % self.n)
                    if res is not None:
                        check_ack_version(self.run, "cli", m, res["version"])
                        m.apply(op, args)
                time.sleep(self.run.args.cli_pause_ms / 1000.0)
        except Exception:
            self.run.violation("worker_crash", "cli:\n%s" % traceback.format_exc())


class NodeWriter:
    """tests/soak/node_writer.mjs: its acknowledgements and reads are
    replayed here, in its order, on models of its tenants."""

    def __init__(self, run, endpoints, tenants, seconds, seed):
        self.run = run
        self.models = {t: Storefront(t) for t in tenants}
        self.requests = 0
        self.done = False
        self.proc = subprocess.Popen(
            ["node", NODE_SCRIPT, ",".join(endpoints), ",".join(tenants), "node", str(seconds),
             str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        try:
            for line in self.proc.stdout:
                o = json.loads(line)
                if "try" in o:
                    self.run.error("node", o["try"]["code"])
                    if o["try"]["code"] in CLIENT_ERRORS:
                        self.run.say("node: %s for key %r" % (o["try"]["code"], o["try"]["key"]))
                elif "ack" in o:
                    a = o["ack"]
                    m = self.models[a["tenant"]]
                    self.run.ack("node")
                    check_ack_version(self.run, "node", m, a["version"])
                    m.apply(a["op"], a["args"])
                elif "read" in o:
                    a = o["read"]
                    self.run.ack("node")
                    check_read(self.run, "node", self.models[a["tenant"]], a["version"], a["draft"])
                elif "done" in o:
                    self.requests = o["done"]["requests"]
                    self.done = True
                else:
                    self.run.violation("node", "node writer: %r" % o)
                    for t in self.models:
                        self.run.uncertain.add(t)
        except Exception:
            self.run.violation("worker_crash", "node reader:\n%s" % traceback.format_exc())

    def finish(self, timeout):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.run.violation("node", "the Node writer did not finish in time")
        self.reader.join(30)
        err = self.proc.stderr.read()
        if rc != 0 or not self.done:
            self.run.violation("node", "node writer exit %d:\n%s" % (rc, err[-2000:]))
            for t in self.models:
                self.run.uncertain.add(t)
        with self.run.lock:
            self.run.requests["node"] = self.requests


class LoadBursts:
    """tenantq-load (libtenantq, unkeyed background load on tenants load-t*):
    bursts of --requests N, one client, both endpoints.  Not tracked beyond
    its own counts; its own check is off (--no-check: faults make its
    requests of unknown outcome)."""

    def __init__(self, run, endpoints, conninfo, workdir, binary):
        self.run = run
        self.argv = [binary, "--mode", "daemon", *sum((["-e", e] for e in endpoints), []),
                     "--database", conninfo, "--clients", "1", "--tenants", "8",
                     "--requests", str(run.args.load_burst), "--no-check"]
        self.json = os.path.join(workdir, "load.json")
        self.stats = {"bursts": 0, "failed_bursts": 0, "requests": 0, "ok": 0, "errors": {}}

    def loop(self):
        k = 0
        while not self.run.stop.is_set():
            k += 1
            try:
                os.unlink(self.json)
            except OSError:
                pass
            try:
                p = subprocess.run(self.argv + ["--json", self.json, "--seed", str(k)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   timeout=300, stdin=subprocess.DEVNULL)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = -1
            self.stats["bursts"] += 1
            try:
                with open(self.json) as f:
                    rep = json.load(f)
                self.stats["requests"] += rep["requests"]
                self.stats["ok"] += rep["ok"]
                for c, n in rep["errors"].items():
                    self.stats["errors"][c] = self.stats["errors"].get(c, 0) + n
            except (OSError, ValueError, KeyError):
                self.stats["failed_bursts"] += 1  # e.g. its seeding met a fault
            if rc not in (0, 1):
                self.stats["failed_bursts"] += 0  # counted above when no report
            self.run.stop.wait(self.run.args.load_gap)


# --------------------------------------------------------------------------
# faults


class Injector:
    def __init__(self, run, pair, daemons, rng):
        self.run = run
        self.pair = pair
        self.daemons = daemons
        self.rng = rng
        self.frozen = []

    def loop(self, until):
        order = []
        try:
            while True:
                gap = self.run.args.fault_every * (0.5 + self.rng.random())
                if self.run.faults_stop.wait(gap) or self.run.el() + 5 > until:
                    return
                if not order:
                    order = list(self.run.args.faults)
                    self.rng.shuffle(order)
                kind = order.pop()
                t = self.run.el()
                self.run.say("fault %s ..." % kind)
                try:
                    detail = getattr(self, kind)()
                except Exception:
                    self.run.violation("fault_failed", "%s:\n%s" % (kind, traceback.format_exc()))
                    detail = {"failed": True}
                    if kind in ("failover", "pg_restart"):
                        return  # the topology is in an unknown state: no further faults
                took = self.run.el() - t
                rec = {"kind": kind, "t": round(t, 1), "took_s": round(took, 2)}
                rec.update(detail or {})
                self.run.faults.append(rec)
                self.run.say("fault %s done in %.2f s %s" % (kind, took, json.dumps(detail)))
        finally:
            for pid in self.frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass

    def kill_daemon(self):
        d = self.daemons
        pid = d.pid(1)
        d.kill(1)
        down = 0.2 + self.rng.random() * 2.8
        time.sleep(down)
        t = now()
        d.start(1)
        return {"pid": pid, "down_s": round(down, 2), "restart_ready_s": round(now() - t, 2)}

    def pg_restart(self):
        mode = self.rng.choice(("fast", "immediate"))
        server = self.pair.primary
        self.pair.restart_primary(mode)
        return {"mode": mode, "server": server}

    def failover(self):
        return self.pair.failover()

    def sigstop(self):
        pids = self.pair.backends()
        if not pids:
            return {"skipped": "no tenantqd backend"}
        pid = self.rng.choice(pids)
        pause = 2 + self.rng.random() * 4
        self.frozen.append(pid)
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.frozen.remove(pid)
        return {"pid": pid, "stopped_s": round(pause, 2), "of": len(pids)}

    def metrics_flood(self):
        i = 0 if self.rng.random() < 0.7 else 1
        port = self.daemons.ports[i]
        socks, refused = [], 0
        try:
            for k in range(300):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=2)
                except OSError:
                    refused += 1
                    continue
                socks.append(s)
                try:
                    if k % 3 == 0:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n")
                    elif k % 3 == 1:
                        s.sendall(b"GET /metr")
                except OSError:
                    pass
            scraped = 0
            for _ in range(40):
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=3) as r:
                        r.read()
                        scraped += 1
                except OSError:
                    pass
            time.sleep(3)
        finally:
            for s in socks:
                s.close()
        t = now()
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if now() - t > 10:
                self.run.violation("metrics", "d%d: /healthz not back within 10 s of a flood" % i)
                break
            time.sleep(0.2)
        return {"daemon": "d%d" % i, "connections": len(socks), "refused": refused,
                "scrapes_ok": scraped, "healthz_back_s": round(now() - t, 2)}


# --------------------------------------------------------------------------
# the final checks


def final_checks(run, conninfo, workers, cli, node):
    """Against the final primary: every acknowledged change there exactly
    once, nothing nobody acknowledged, versions = number of changes."""
    out = {"lost": 0, "duplicates": 0, "unacknowledged": 0, "version_mismatch": 0,
           "tenants_checked": 0, "sections_checked": 0, "bookings_checked": 0}

    def bad(kind, counter, detail):
        out[counter] += 1
        run.violation(kind, detail)

    with psycopg.connect(conninfo, autocommit=True) as c:
        rows = {t: (d, p, v) for t, d, p, v in c.execute(
            "SELECT tenant, draft, published, version FROM tenantq_storefront").fetchall()}
        bookings = c.execute("SELECT id, tenant_id, customer, "
                             "extract(epoch FROM slot)::bigint FROM booking").fetchall()

    # no section id twice in any draft (every tenant, tenantq-load's too)
    for t, (d, _, _) in rows.items():
        ids = [s.get("id") for p in (d or {}).get("pages", {}).values() for s in p.get("sections", [])]
        dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
        if dup:
            bad("duplicate", "duplicates", "%s: section ids present more than once: %r" % (t, dup))

    # tenants a single writer owns: the stored draft, published copy and
    # version are exactly the writer's model
    owned = [m for w in workers for m in w.owned] + (cli.models if cli else []) + \
        (list(node.models.values()) if node else [])
    for m in owned:
        if m.name in run.uncertain:
            continue
        out["tenants_checked"] += 1
        got = rows.get(m.name)
        if got is None:
            if m.version:
                bad("lost", "lost", "%s: no row, %d changes acknowledged" % (m.name, m.version))
            continue
        d, p, v = got
        want, have = m.draft(), norm_draft(d)
        want_ids = {s["id"] for ss in want.values() for s in ss}
        have_ids = {s["id"] for ss in have.values() for s in ss}
        out["sections_checked"] += len(want_ids)
        for sid in sorted(want_ids - have_ids):
            bad("lost", "lost", "%s: acknowledged section %s missing" % (m.name, sid))
        for sid in sorted(have_ids - want_ids):
            bad("unacknowledged", "unacknowledged", "%s: section %s present, not acknowledged "
                "(or acknowledged removed)" % (m.name, sid))
        if want != have and want_ids == have_ids:
            bad("lost", "lost", "%s: draft differs from the acknowledged edits (an edit lost or "
                "applied twice): stored %r, acknowledged %r" % (m.name, have, want))
        if m.published and norm_draft(p) != m.published:
            bad("lost", "lost", "%s: published copy differs from the last acknowledged publish"
                % m.name)
        if v != m.version:
            bad("version", "version_mismatch", "%s: version %d, %d changes acknowledged"
                % (m.name, v, m.version))

    # shared tenants: each writer's ids by their last acknowledged change
    shared = {}
    for w in workers:
        for t in w.shared_tenants:
            shared.setdefault(t, {"keys": 0, "ids": {}})
            shared[t]["keys"] += len(w.shared_keys[t])
        for (t, sid), last in w.shared_last.items():
            shared[t]["ids"][sid] = last
    for t, s in shared.items():
        if t in run.uncertain or t not in rows and not s["keys"]:
            continue
        out["tenants_checked"] += 1
        d, _, v = rows.get(t, ({}, None, 0))
        ids = [x.get("id") for p in (d or {}).get("pages", {}).values() for x in p.get("sections", [])]
        for sid, last in s["ids"].items():
            out["sections_checked"] += 1
            n = ids.count(sid)
            if last == "upsert" and n != 1:
                bad("lost" if n == 0 else "duplicate", "lost" if n == 0 else "duplicates",
                    "%s: acknowledged section %s present %d times" % (t, sid, n))
            elif last == "remove" and n != 0:
                bad("unacknowledged", "unacknowledged", "%s: section %s present after its "
                    "acknowledged removal" % (t, sid))
        for sid in set(ids) - set(s["ids"]):
            bad("unacknowledged", "unacknowledged", "%s: section %s nobody acknowledged" % (t, sid))
        if not any(last == "unknown" for last in s["ids"].values()) and v != s["keys"]:
            bad("version", "version_mismatch", "%s: version %d, %d changes acknowledged"
                % (t, v, s["keys"]))

    # bookings: own tenants exactly; the shared one one row per slot raced for
    by_tenant = {}
    for bid, t, cust, epoch in bookings:
        by_tenant.setdefault(t, []).append((bid, cust, (epoch - BOOKING_BASE) // 60))
    for w in workers:
        if w.bk_tenant in run.uncertain:
            continue
        have = {bid: (k, cust) for bid, cust, k in by_tenant.get(w.bk_tenant, [])}
        want = {bid: v for bid, v in w.bookings.items() if bid not in w.cancelled}
        out["bookings_checked"] += len(want)
        for bid in sorted(set(want) - set(have)):
            bad("lost", "lost", "%s: acknowledged booking %d missing" % (w.bk_tenant, bid))
        for bid in sorted(set(have) - set(want)):
            bad("unacknowledged", "unacknowledged", "%s: booking %d %r present, not acknowledged "
                "(or acknowledged cancelled)" % (w.bk_tenant, bid, have[bid]))
        for bid in set(want) & set(have):
            if want[bid] != have[bid]:
                bad("lost", "lost", "%s: booking %d is %r, acknowledged %r" % (
                    w.bk_tenant, bid, have[bid], want[bid]))
        slots = [k for k, _ in have.values()]
        if len(slots) != len(set(slots)):
            bad("duplicate", "duplicates", "%s: a slot booked twice" % w.bk_tenant)
    shared_rows = {}
    for bid, cust, k in by_tenant.get("soak-bk-shared", []):
        shared_rows.setdefault(k, []).append(bid)
    attempted = {}
    for w in workers:
        for k, ids in w.shared_slots.items():
            attempted.setdefault(k, set()).update(ids)
    for k, ids in attempted.items():
        out["bookings_checked"] += 1
        have = shared_rows.get(k, [])
        oks = {i for i in ids if i is not None}
        if len(have) > 1:
            bad("duplicate", "duplicates", "soak-bk-shared: slot %d booked %d times: %r" % (k, len(have), have))
        if len(oks) > 1:
            bad("duplicate", "duplicates", "soak-bk-shared: slot %d acknowledged to %d bookings %r"
                % (k, len(oks), oks))
        if oks and not set(have) & oks:
            bad("lost", "lost", "soak-bk-shared: slot %d acknowledged as booking %r, stored %r"
                % (k, oks, have))
        if have and not oks and None not in ids:
            bad("unacknowledged", "unacknowledged", "soak-bk-shared: slot %d booked (%r) but "
                "every try was refused" % (k, have))
    for k in set(shared_rows) - set(attempted):
        bad("unacknowledged", "unacknowledged", "soak-bk-shared: slot %d booked, never tried" % k)
    return out


# --------------------------------------------------------------------------


def ack_gaps(run):
    """For each fault, the longest time without any acknowledgement from
    its start to 15 s after its end (or to the end of the traffic)."""
    times = sorted(run.ack_times)
    per_kind = {}
    for f in run.faults:
        a = run.t0 + f["t"]
        b = a + f["took_s"] + 15
        i = bisect.bisect_left(times, a)
        prev, gap = a, 0.0
        while i < len(times) and times[i] <= b:
            gap = max(gap, times[i] - prev)
            prev = times[i]
            i += 1
        gap = max(gap, min(b, run.t_stop or now()) - prev)
        f["longest_ack_gap_s"] = round(gap, 2)
        per_kind[f["kind"]] = max(per_kind.get(f["kind"], 0.0), round(gap, 2))
    return per_kind


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180, help="traffic time (default 180)")
    ap.add_argument("--seed", type=int, default=None, help="fault and op sequence (default: time)")
    ap.add_argument("--workers", type=int, default=4, help="Python wire-client writers (4)")
    ap.add_argument("--pause-ms", type=float, default=30,
                    help="mean pause between a Python writer's requests (30)")
    ap.add_argument("--cli-pause-ms", type=float, default=150, help="pause between CLI calls (150)")
    ap.add_argument("--fault-every", type=float, default=None,
                    help="mean seconds between faults (default 15, 25 for runs over 10 min)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS/fd baseline and the first fault "
                         "(default 10%% of the run, 20..120)")
    ap.add_argument("--load-burst", type=int, default=300, help="tenantq-load requests per burst (300)")
    ap.add_argument("--load-gap", type=float, default=10, help="seconds between bursts (10)")
    ap.add_argument("--faults", default=",".join(FAULT_KINDS),
                    help="kinds of fault to inject, comma-separated (default all: %s)"
                         % ",".join(FAULT_KINDS))
    ap.add_argument("--no-node", action="store_true", help="without the Node writer")
    ap.add_argument("--no-load", action="store_true", help="without tenantq-load")
    ap.add_argument("--rss-slack", type=float, default=0.25,
                    help="allowed RSS growth over the baseline, fraction (0.25) ...")
    ap.add_argument("--rss-slack-kb", type=int, default=8192, help="... plus KiB (8192)")
    ap.add_argument("--fd-slack", type=int, default=4, help="allowed extra descriptors (4)")
    ap.add_argument("--build-dir", default=os.environ.get("TQ_BUILD_DIR", os.path.join(REPO, "build")))
    ap.add_argument("--json", help="write the summary here too")
    ap.add_argument("--workdir", help="keep servers' and daemons' logs here (default: a temp "
                                      "dir, removed after a clean run)")
    args = ap.parse_args()
    args.faults = [k for k in args.faults.split(",") if k]
    if any(k not in FAULT_KINDS for k in args.faults):
        ap.error("--faults: kinds are %s" % ",".join(FAULT_KINDS))
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    if args.fault_every is None:
        args.fault_every = 15 if args.seconds <= 600 else 25
    if args.warmup is None:
        args.warmup = min(120, max(20, args.seconds * 0.1))
    os.environ["TQ_BUILD_DIR"] = os.path.abspath(args.build_dir)
    cli_bin = tqlib.cli_bin()
    load_bin = os.path.join(tqlib.build_dir(), "tests", "load", "tenantq-load")
    for b in (tqlib.daemon_bin(), cli_bin, load_bin):
        if not os.access(b, os.X_OK):
            print("soak: %s is not built (tq_build %s)" % (b, args.build_dir), file=sys.stderr)
            return 2
    node_ok = not args.no_node and os.path.exists(os.path.join(NODE_DIR, "dist", "esm", "index.js"))
    if not args.no_node and not node_ok:
        print("soak: client/node is not built (npm ci in client/node): no Node writer",
              file=sys.stderr)

    run = Run(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tq-soak-")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    pgroot = tempfile.mkdtemp(prefix="pg-", dir=workdir)
    os.chmod(pgroot, 0o755)
    run.say("soak: seed %d, %.0f s, workdir %s" % (args.seed, args.seconds, workdir))
    pair = daemons = None
    summary = {}
    try:
        try:
            pair = Pair(pgroot)
            init_db(pair.conninfo)
            with psycopg.connect(pair.primary_ci(), autocommit=True) as c:
                with open(BOOKING_SCHEMA) as f:
                    c.execute(f.read())
            daemons = Daemons(run, pair.conninfo, workdir)
        except BaseException as e:
            print("soak: setup failed: %s" % e, file=sys.stderr)
            return 2
        eps = daemons.endpoints
        run.say("topology up: primary %s, standby %s (sync); d0 pid %d, d1 pid %d"
                % (pair.primary, pair.standby, daemons.pid(0), daemons.pid(1)))

        workers = [PyWorker(run, i, eps, ["soak-shared-0", "soak-shared-1"],
                            random.Random(args.seed * 1000 + i)) for i in range(args.workers)]
        cli = CliWriter(run, eps, tenants_homed(eps, "soak-cli-"), random.Random(args.seed + 7),
                        cli_bin)
        node = NodeWriter(run, eps, tenants_homed(eps, "soak-node-"), args.seconds,
                          args.seed) if node_ok else None
        load = None if args.no_load else LoadBursts(run, eps, pair.conninfo, workdir, load_bin)
        threads = [threading.Thread(target=w.loop, name="py%d" % w.i) for w in workers]
        threads.append(threading.Thread(target=cli.loop, name="cli"))
        if load:
            threads.append(threading.Thread(target=load.loop, name="load"))
        for t in threads:
            t.start()

        # warm-up, then the baseline of d0 and the faults
        samples = []
        d0 = daemons.pid(0)
        end = args.seconds
        while run.el() < args.warmup:
            time.sleep(1)
        base_rss, base_fds = proc_rss_kb(d0), proc_fds(d0)
        samples.append((round(run.el()), base_rss, base_fds))
        run.say("baseline d0: RSS %d KiB, %d fds; acknowledged so far %r"
                % (base_rss, base_fds, run.acks))
        inj = Injector(run, pair, daemons, random.Random(args.seed + 1))
        inj_t = threading.Thread(target=inj.loop, args=(end,), name="faults")
        inj_t.start()
        last_sample = run.el()
        while run.el() < end:
            time.sleep(1)
            for i in (0, 1):
                if not daemons.alive(i) and not daemons.expected_down[i]:
                    run.violation("daemon_died", "d%d exited by itself (%r):\n%s" % (
                        i, daemons.procs[i].proc.returncode, daemons.procs[i].tail()))
                    daemons.procs[i].stopped = True
                    daemons.start(i)
            if run.el() - last_sample >= 10:
                last_sample = run.el()
                samples.append((round(run.el()), proc_rss_kb(d0), proc_fds(d0)))
                with run.lock:
                    recent = [t for t in run.ack_times[-2000:] if t > now() - 60]
                if not recent and not run.stop.is_set():
                    run.violation("stall", "no acknowledgement in the last 60 s")
            if int(run.el()) % 60 == 0:
                run.say("progress: requests %r acks %r faults %d violations %d"
                        % (run.requests, run.acks, len(run.faults), len(run.violations)))
        run.faults_stop.set()
        inj_t.join(600)
        end_rss, end_fds = proc_rss_kb(d0), proc_fds(d0)
        run.stop.set()
        run.t_stop = now()
        run.say("traffic stopping")
        for t in threads:
            t.join(RESOLVE_S + 60)
            if t.is_alive():
                run.violation("hang", "thread %s did not finish" % t.name)
        if node:
            node.finish(RESOLVE_S + 60)
        # settle: no client any more, the daemons idle
        time.sleep(10)
        after = []
        for _ in range(3):
            after.append((proc_rss_kb(d0), proc_fds(d0)))
            time.sleep(2)
        rss_after = min(a[0] for a in after)
        fds_after = min(a[1] for a in after)
        rss_limit = int(base_rss * (1 + args.rss_slack) + args.rss_slack_kb)
        if rss_after > rss_limit:
            run.violation("rss", "d0 RSS %d KiB after the load, baseline %d KiB (limit %d)"
                          % (rss_after, base_rss, rss_limit))
        if fds_after > base_fds + args.fd_slack:
            run.violation("fds", "d0 has %d descriptors after the load, baseline %d"
                          % (fds_after, base_fds))
        for i in (0, 1):
            if not daemons.alive(i):
                run.violation("daemon_died", "d%d not running at the end" % i)

        checks = final_checks(run, pair.conninfo, workers, cli, node)
        stops = daemons.stop_all()
        daemons = None
        gaps = ack_gaps(run)
        faults_by_kind = {k: sum(1 for f in run.faults if f["kind"] == k) for k in FAULT_KINDS}
        errors = {}
        for per in run.errors.values():
            for c, n in per.items():
                errors[c] = errors.get(c, 0) + n
        for k in ("py", "cli", "node"):
            run.requests.setdefault(k, 0)
            run.acks.setdefault(k, 0)
        summary = {
            "seed": args.seed, "seconds": args.seconds, "elapsed_s": round(run.el(), 1),
            "workers": args.workers,
            "requests": dict(run.requests, total=sum(run.requests.values())),
            "acks": dict(run.acks, total=sum(run.acks.values())),
            "faults": faults_by_kind, "faults_total": len(run.faults),
            "errors": dict(sorted(errors.items())), "errors_by_client": run.errors,
            "lost": checks["lost"], "duplicates": checks["duplicates"],
            "unacknowledged_present": checks["unacknowledged"],
            "version_mismatches": checks["version_mismatch"],
            "checked": {k: checks[k] for k in ("tenants_checked", "sections_checked",
                                               "bookings_checked")},
            "uncertain_tenants": sorted(run.uncertain),
            "d0": {"rss_kb_baseline": base_rss, "rss_kb_end_of_load": end_rss,
                   "rss_kb_after": rss_after, "rss_kb_peak": max(s[1] for s in samples),
                   "fds_baseline": base_fds, "fds_end_of_load": end_fds, "fds_after": fds_after,
                   "fds_peak": max(s[2] for s in samples), "samples": samples},
            "longest_ack_gap_s_by_fault": gaps,
            "tenantq_load": load.stats if load else None,
            "daemon_exits": stops,
            "fault_log": run.faults,
            "violations": run.violations,
        }
    finally:
        if daemons is not None:
            for d in daemons.procs:
                if d is not None and d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()
        if pair is not None:
            pair.destroy()
    summary["violation_count"] = len(run.violations)
    text = json.dumps(summary, indent=1, sort_keys=False)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    if run.violations:
        print("soak: %d violation(s); logs kept in %s" % (len(run.violations), workdir))
        return 1
    print("soak: passed (%d requests, %d acknowledged, %d faults, lost 0, duplicates 0)"
          % (summary["requests"]["total"], summary["acks"]["total"], len(run.faults)))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
