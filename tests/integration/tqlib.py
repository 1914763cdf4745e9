"""Helpers of the integration suite: a nanomsg REQ client through ctypes and
the msgpack wire protocol v1, database access for assertions, tenantqd
processes and the tenantq CLI.  Fixtures built on them are in conftest.py.

Environment (scripts/test sets both):
  TQ_TEST_DATABASE  libpq conninfo of a server we may create databases on
  TQ_BUILD_DIR      meson build dir holding daemon/tenantqd, client/tenantq

Run under /usr/bin/python3 (Debian's pytest, msgpack and psycopg).
"""

import ctypes
import ctypes.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import msgpack
import psycopg
import psycopg.conninfo
import pytest

# --------------------------------------------------------------------------
# nanomsg through ctypes (constants from /usr/include/nanomsg/nn.h, reqrep.h)

AF_SP = 1
AF_SP_RAW = 2
NN_PROTO_REQREP = 3
NN_REQ = NN_PROTO_REQREP * 16 + 0  # 48
NN_SOL_SOCKET = 0
NN_LINGER = 1
NN_SNDTIMEO = 4
NN_RCVTIMEO = 5
NN_RCVMAXSIZE = 16
NN_REQ_RESEND_IVL = 1  # level NN_REQ
NN_MSG = ctypes.c_size_t(-1).value
NN_HAUSNUMERO = 156384712
ETIMEDOUT_NN = (110, NN_HAUSNUMERO + 23)  # native errno first
EAGAIN = 11

_nn = ctypes.CDLL("libnanomsg.so.5", use_errno=True)
_nn.nn_socket.argtypes = [ctypes.c_int, ctypes.c_int]
_nn.nn_socket.restype = ctypes.c_int
_nn.nn_connect.argtypes = [ctypes.c_int, ctypes.c_char_p]
_nn.nn_connect.restype = ctypes.c_int
_nn.nn_setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_size_t]
_nn.nn_setsockopt.restype = ctypes.c_int
_nn.nn_send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_nn.nn_send.restype = ctypes.c_int
_nn.nn_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_nn.nn_recv.restype = ctypes.c_int
_nn.nn_freemsg.argtypes = [ctypes.c_void_p]
_nn.nn_freemsg.restype = ctypes.c_int
_nn.nn_close.argtypes = [ctypes.c_int]
_nn.nn_close.restype = ctypes.c_int
_nn.nn_errno.argtypes = []
_nn.nn_errno.restype = ctypes.c_int
_nn.nn_strerror.argtypes = [ctypes.c_int]
_nn.nn_strerror.restype = ctypes.c_char_p


class NNError(Exception):
    def __init__(self, what, err):
        self.errno = err
        super().__init__("%s: %s (%d)" % (what, _nn.nn_strerror(err).decode(), err))


class NNTimeout(NNError):
    pass


def _check(rc, what):
    if rc < 0:
        err = _nn.nn_errno()
        if err in ETIMEDOUT_NN or err == EAGAIN:
            raise NNTimeout(what, err)
        raise NNError(what, err)
    return rc


class NNSocket:
    """A nanomsg REQ socket (cooked by default, AF_SP_RAW with raw=True).
    Not thread-safe: one per thread.  A cooked REQ has one request in
    flight; after a receive timeout close it (a kept socket would resend)."""

    def __init__(self, endpoint, timeout_ms=5000, raw=False, rcvmaxsize=None):
        self.fd = _check(_nn.nn_socket(AF_SP_RAW if raw else AF_SP, NN_REQ), "nn_socket")
        try:
            self._opt(NN_SOL_SOCKET, NN_RCVTIMEO, timeout_ms)
            self._opt(NN_SOL_SOCKET, NN_SNDTIMEO, timeout_ms)
            if rcvmaxsize is not None:
                self._opt(NN_SOL_SOCKET, NN_RCVMAXSIZE, rcvmaxsize)
            if not raw:
                # Far beyond any test: a resend would execute an edit twice.
                self._opt(NN_REQ, NN_REQ_RESEND_IVL, 600000)
            _check(_nn.nn_connect(self.fd, endpoint.encode()), "nn_connect")
        except Exception:
            _nn.nn_close(self.fd)
            raise

    def _opt(self, level, option, value):
        v = ctypes.c_int(value)
        _check(_nn.nn_setsockopt(self.fd, level, option, ctypes.byref(v),
                                 ctypes.sizeof(v)), "nn_setsockopt")

    def set_rcvtimeo(self, ms):
        self._opt(NN_SOL_SOCKET, NN_RCVTIMEO, ms)

    def send(self, data):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        _check(_nn.nn_send(self.fd, buf, len(data), 0), "nn_send")

    def recv(self):
        ptr = ctypes.c_void_p()
        n = _check(_nn.nn_recv(self.fd, ctypes.byref(ptr), NN_MSG, 0), "nn_recv")
        try:
            return ctypes.string_at(ptr, n)
        finally:
            _nn.nn_freemsg(ptr)

    def close(self):
        if self.fd >= 0:
            _nn.nn_close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def envelope(tenant, op, args=None, **extra):
    req = {"v": 1, "tenant": tenant, "op": op}
    if args is not None:
        req["args"] = args
    req.update(extra)
    return req


class Client:
    """Wire client on one cooked REQ socket (one per thread)."""

    def __init__(self, endpoint, timeout_ms=10000):
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.sock = NNSocket(endpoint, timeout_ms)

    def raw(self, data):
        """Send raw bytes, return the decoded reply (NNTimeout if none; the
        socket is then replaced so that no resend can follow)."""
        self.sock.send(data)
        try:
            reply = self.sock.recv()
        except NNTimeout:
            self.sock.close()
            self.sock = NNSocket(self.endpoint, self.timeout_ms)
            raise
        resp = unpack(reply)
        check_response_shape(resp)
        return resp

    def call(self, tenant, op, args=None, **extra):
        return self.raw(pack(envelope(tenant, op, args, **extra)))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(endpoint, tenant, op, args=None, timeout_ms=10000, **extra):
    """One request on a fresh socket; returns the decoded response dict."""
    with Client(endpoint, timeout_ms) as c:
        return c.call(tenant, op, args, **extra)


def call_raw(endpoint, data, timeout_ms=5000):
    with Client(endpoint, timeout_ms) as c:
        return c.raw(data)


def check_response_shape(resp):
    """Every response: a map with v=1 and ok, plus result or a full error."""
    assert isinstance(resp, dict), "response is not a map: %r" % (resp,)
    assert resp.get("v") == 1, resp
    assert isinstance(resp.get("ok"), bool), resp
    if resp["ok"]:
        assert "result" in resp, resp
    else:
        err = resp.get("error")
        assert isinstance(err, dict), resp
        assert isinstance(err.get("code"), str) and err["code"], resp
        assert isinstance(err.get("message"), str) and err["message"], resp
        assert isinstance(err.get("retryable"), bool), resp


def ok(resp):
    """The result of a response that must be ok."""
    assert resp["ok"] is True, "expected ok, got %r" % (resp,)
    return resp["result"]


def err(resp, code, retryable=None):
    """The error of a response that must have failed with code."""
    assert resp["ok"] is False, "expected %s, got ok: %r" % (code, resp)
    e = resp["error"]
    assert e["code"] == code, "expected %s, got %r" % (code, e)
    if retryable is not None:
        assert e["retryable"] is retryable, e
    return e


# --------------------------------------------------------------------------
# paths

def build_dir():
    d = os.environ.get("TQ_BUILD_DIR")
    if not d:
        pytest.exit("TQ_BUILD_DIR is not set (run scripts/test)", returncode=4)
    return os.path.abspath(d)


def daemon_bin():
    return os.path.join(build_dir(), "daemon", "tenantqd")


def cli_bin():
    return os.path.join(build_dir(), "client", "tenantq")


def sanitized_build():
    """Whether TQ_BUILD_DIR was configured with sanitizers (slower, more RSS)."""
    try:
        with open(os.path.join(build_dir(), "meson-info", "intro-buildoptions.json")) as f:
            for o in json.load(f):
                if o.get("name") == "b_sanitize":
                    return o.get("value") not in ("none", "", None)
    except OSError:
        pass
    return False


def linked_jemalloc():
    """Whether meson found jemalloc for TQ_BUILD_DIR's tenantqd (never with
    sanitizers: meson.build refuses the combination)."""
    with open(os.path.join(build_dir(), "meson-info", "intro-dependencies.json")) as f:
        return any(d.get("name") == "jemalloc" for d in json.load(f))


SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def log_tail(path, n=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return "(no log: %s)" % e


# --------------------------------------------------------------------------
# database

_db_counter = itertools.count()


def _admin_conninfo():
    ci = os.environ.get("TQ_TEST_DATABASE")
    if not ci:
        pytest.exit("TQ_TEST_DATABASE is not set (run scripts/test)", returncode=4)
    return ci


def create_database(prefix="tq_it"):
    """A new empty database on the test server; returns (name, conninfo)."""
    admin = _admin_conninfo()
    name = "%s_%d_%d" % (prefix, os.getpid(), next(_db_counter))
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute('DROP DATABASE IF EXISTS "%s"' % name)
        c.execute('CREATE DATABASE "%s"' % name)
    return name, psycopg.conninfo.make_conninfo(admin, dbname=name)


def drop_database(name):
    with psycopg.connect(_admin_conninfo(), autocommit=True) as c:
        c.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def run_tenantqd(*args, timeout=60):
    """Run tenantqd to completion (config checks, --init-db)."""
    return subprocess.run([daemon_bin(), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def init_db(conninfo):
    p = run_tenantqd("--database", conninfo, "--init-db")
    assert p.returncode == 0, "tenantqd --init-db failed (%d):\n%s%s" % (
        p.returncode, p.stdout, p.stderr)
    return p


class DB:
    """Read access to the daemon's storage for assertions."""

    def __init__(self, conninfo):
        self.conninfo = conninfo

    def connect(self, autocommit=True):
        return psycopg.connect(self.conninfo, autocommit=autocommit)

    def row(self, tenant):
        """{'draft','published','version'} of tenant, or None without a row."""
        with self.connect() as c:
            r = c.execute("SELECT draft, published, version FROM tenantq_storefront "
                          "WHERE tenant = %s", (tenant,)).fetchone()
        if r is None:
            return None
        return {"draft": r[0], "published": r[1], "version": r[2]}

    def snapshot(self):
        """Every stored row, for 'nothing changed' checks."""
        with self.connect() as c:
            rows = c.execute("SELECT tenant, draft, published, version "
                             "FROM tenantq_storefront ORDER BY tenant").fetchall()
        return [tuple(r) for r in rows]

    def sections(self, tenant, page):
        r = self.row(tenant)
        assert r is not None, "tenant %r has no row" % tenant
        return r["draft"]["pages"][page]["sections"]

    def end_lock_waiters(self, query_prefix="", limit_s=5.0):
        """pg_terminate_backend the daemons' sessions whose statement (one
        starting with query_prefix) waits for a lock, as soon as there is
        one: the server ends them with FATAL.  Returns how many it ended (0
        when none waited within limit_s)."""
        deadline = time.monotonic() + limit_s
        while True:
            with self.connect() as c:
                n = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE application_name = 'tenantqd' AND wait_event_type = 'Lock'"
                              " AND query LIKE %s", (query_prefix + "%",)).fetchone()[0]
            if n or time.monotonic() >= deadline:
                return n
            time.sleep(0.1)

    def truncate_all(self):
        with self.connect() as c:
            c.execute("SET lock_timeout = '10s'")
            tables = c.execute(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            if tables:
                c.execute("TRUNCATE " + ", ".join(t[0] for t in tables))


# --------------------------------------------------------------------------
# daemons

class Daemon:
    def __init__(self, conninfo, extra, sock_timeout_ms=10000, preexec_fn=None, auth=None):
        self.auth = auth  # the token its readiness pings carry (auth_token_file)
        self.dir = tempfile.mkdtemp(prefix="tq-it-")
        self.endpoint = "ipc://%s/tq.sock" % self.dir
        self.conf = os.path.join(self.dir, "tenantqd.conf")
        with open(self.conf, "w") as f:
            f.write("; integration test: everything comes from flags\n")
        self.stderr = os.path.join(self.dir, "stderr.log")
        self.args = [daemon_bin(), "-c", self.conf,
                     "--listen", self.endpoint,
                     "--database", conninfo,
                     "--metrics-listen", "",
                     *extra]
        self._log = open(self.stderr, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=preexec_fn)
        self.stopped = False

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        with open(self.stderr, errors="replace") as f:
            return f.read()

    def tail(self):
        return log_tail(self.stderr)

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("tenantqd exited with %d during startup (%s)\n%s" % (
                    self.proc.returncode, " ".join(self.args), self.tail()))
            try:
                r = call(self.endpoint, "ping", "ping", timeout_ms=500, **self._auth())
                if r.get("ok") and r["result"] == {"pong": True}:
                    return
                last = r
            except NNError as e:
                last = e
            time.sleep(0.05)
        pytest.fail("tenantqd did not answer ping within %.0fs (last: %r)\n%s" % (
            timeout, last, self.tail()))

    def ping(self):
        """Assert the daemon is alive and answers a ping over the wire."""
        assert self.proc.poll() is None, "tenantqd died (%s)\n%s" % (
            self.proc.returncode, self.tail())
        r = call(self.endpoint, "ping", "ping", timeout_ms=5000, **self._auth())
        assert r["ok"] and r["result"] == {"pong": True}, r

    def _auth(self):
        return {} if self.auth is None else {"auth": self.auth}

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.pid)

    def stop(self, timeout=15.0):
        """SIGTERM, wait, and assert a clean exit with a clean log."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail("tenantqd did not exit within %.0fs of SIGTERM\n%s" % (
                    timeout, self.tail()))
            self._log.close()
            text = self.log()
            assert rc == 0, "tenantqd exited with %d\n%s" % (rc, self.tail())
            for m in SANITIZER_MARKERS:
                assert m not in text, "sanitizer report (%s) in tenantqd log\n%s" % (
                    m, self.tail(150))
        finally:
            if not self._log.closed:
                self._log.close()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


class DaemonFactory:
    def __init__(self, conninfo):
        self.conninfo = conninfo
        self.daemons = []

    def __call__(self, *extra, conninfo=None, auth=None):
        d = Daemon(conninfo or self.conninfo, [str(a) for a in extra], auth=auth)
        self.daemons.append(d)
        d.wait_ready()
        return d

    def stop_all(self):
        errors = []
        for d in self.daemons:
            try:
                d.stop()
            except BaseException as e:  # stop every daemon, report all
                errors.append(str(e))
        self.daemons = []
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


# --------------------------------------------------------------------------
# CLI

def cli(*args, env=None, timeout=30):
    """Run the tenantq CLI; returns the CompletedProcess (text mode)."""
    e = dict(os.environ)
    e.pop("TENANTQ_ENDPOINT", None)
    if env:
        e.update(env)
    return subprocess.run([cli_bin(), *[str(a) for a in args]], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=e, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# pipelining: a raw REQ socket keeps many requests in flight

class RawReq:
    """AF_SP_RAW REQ socket: we write the SP header (a request id with bit 31
    set) ourselves, so any number of requests can be outstanding.  nn_recv
    strips the header of replies, so callers match replies by content.
    Keep fewer than ~200 replies unread: the daemon's raw REP silently drops
    replies while the pipe to us is blocked (kernel socket buffer full)."""

    def __init__(self, endpoint, timeout_ms=10000):
        self.sock = NNSocket(endpoint, timeout_ms, raw=True)
        self._ids = itertools.count(1)

    def send(self, body):
        rid = 0x80000000 | (next(self._ids) & 0x7FFFFFFF)
        self.sock.send(rid.to_bytes(4, "big") + body)

    def recv(self):
        resp = unpack(self.sock.recv())
        check_response_shape(resp)
        return resp

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# a private PostgreSQL cluster, for tests that stop and restart the server

PG_BIN = "/usr/lib/postgresql/15/bin"


class PgCluster:
    """initdb'd into a temp dir, unix socket only.  As root the server runs
    as postgres (it refuses root).  stop()/start() simulate an outage."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tq-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._pg(["initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C"])
        self.conninfo = "host=%s user=postgres dbname=postgres" % self.dir

    def _pg(self, argv, check=True):
        cmd = [os.path.join(PG_BIN, argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=60)
        if check:
            assert p.returncode == 0, "%s failed:\n%s\n%s" % (argv[0], p.stdout,
                                                             log_tail(self.logfile))
        return p

    def start(self):
        self._pg(["pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "30",
                  "-o", "-k %s -c listen_addresses='' -c fsync=off "
                  "-c max_connections=50" % self.dir, "start"])

    def stop(self):
        self._pg(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"], check=False)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# pipelining with reply matching: the routing header of each reply

class _NNIovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _NNMsghdr(ctypes.Structure):
    _fields_ = [("msg_iov", ctypes.POINTER(_NNIovec)), ("msg_iovlen", ctypes.c_int),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t)]


_nn.nn_recvmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_NNMsghdr), ctypes.c_int]
_nn.nn_recvmsg.restype = ctypes.c_int

_PROTO_SP = 1
_SP_HDR = 1


class TaggedRawReq(RawReq):
    """A RawReq whose send() returns the request id it put in the SP header
    and whose recv_tagged() returns (request id, response), read from the
    reply's routing header with nn_recvmsg.  This matches replies to
    requests whatever order they arrive in (PROTOCOL.md promises none)."""

    def send(self, body):
        rid = 0x80000000 | (next(self._ids) & 0x7FFFFFFF)
        self.sock.send(rid.to_bytes(4, "big") + body)
        return rid

    def recv_tagged(self):
        body = ctypes.c_void_p()
        iov = _NNIovec(ctypes.cast(ctypes.byref(body), ctypes.c_void_p), NN_MSG)
        control = ctypes.create_string_buffer(256)
        mh = _NNMsghdr(ctypes.pointer(iov), 1,
                       ctypes.cast(control, ctypes.c_void_p), len(control))
        n = _check(_nn.nn_recvmsg(self.sock.fd, ctypes.byref(mh), 0), "nn_recvmsg")
        try:
            data = ctypes.string_at(body, n)
        finally:
            _nn.nn_freemsg(body)
        # struct nn_cmsghdr {size_t cmsg_len; int cmsg_level; int cmsg_type;},
        # data aligned to size_t: [size_t hdr_len][hdr]; the reply's header is
        # the request id we sent
        sz = ctypes.sizeof(ctypes.c_size_t)
        raw = control.raw[:min(mh.msg_controllen, len(control))]
        rid = None
        off = 0
        hdr_size = sz + 2 * ctypes.sizeof(ctypes.c_int)
        data_off = (hdr_size + sz - 1) // sz * sz
        while off + data_off + sz <= len(raw):
            clen = int.from_bytes(raw[off:off + sz], "little")
            level = int.from_bytes(raw[off + sz:off + sz + 4], "little")
            ctype = int.from_bytes(raw[off + sz + 4:off + sz + 8], "little")
            if clen == 0:
                break
            if level == _PROTO_SP and ctype == _SP_HDR:
                d = off + data_off
                hlen = int.from_bytes(raw[d:d + sz], "little")
                hdr = raw[d + sz:d + sz + hlen]
                assert len(hdr) >= 4, "short routing header %r" % hdr
                rid = int.from_bytes(hdr[-4:], "big")
                break
            off += (clen + sz - 1) // sz * sz
        assert rid is not None, "reply without a routing header (control %r)" % raw
        resp = unpack(data)
        check_response_shape(resp)
        return rid, resp

    def recv_for(self, rids):
        """Replies to every id in rids (each exactly once), as a list in the
        order of rids; also returns the ids in the order the replies came."""
        want = set(rids)
        got = {}
        arrival = []
        while len(got) < len(want):
            rid, resp = self.recv_tagged()
            assert rid in want, "reply to unknown request id %#x: %r" % (rid, resp)
            assert rid not in got, "two replies to request id %#x" % rid
            got[rid] = resp
            arrival.append(rid)
        return [got[r] for r in rids], arrival


# --------------------------------------------------------------------------
# fault injection: kill -9, a successor on the same endpoint, a PostgreSQL
# restart, metrics counters, retries of the same request bytes

RETRYABLE_CODES = {"QUEUE_FULL", "DEADLINE_EXCEEDED", "LOCK_TIMEOUT", "DB_UNAVAILABLE",
                   "OUTCOME_UNKNOWN", "SHUTTING_DOWN"}


def sigkill(d):
    """kill -9 a Daemon: no drain and no exit check (the fixture's stop() is
    then a no-op).  Its temp dir is kept, because a successor may listen on
    the same ipc path; the caller removes d.dir when done.  A sanitizer
    report written before the kill is still a failure."""
    d.proc.kill()
    d.proc.wait()
    d.stopped = True
    d._log.close()
    text = d.log()
    for m in SANITIZER_MARKERS:
        assert m not in text, "sanitizer report (%s) before kill -9\n%s" % (m, d.tail(150))


def daemon_at(factory, endpoint, *extra, conninfo=None, timeout=10.0):
    """A ready tenantqd listening on endpoint (for instance the one of a
    daemon killed with sigkill), stopped and checked by the factory at
    teardown like factory(...)'s.  The last --listen flag wins."""
    d = Daemon(conninfo or factory.conninfo, [str(a) for a in extra] + ["--listen", endpoint])
    d.endpoint = endpoint  # its own temp dir holds only its log and config
    factory.daemons.append(d)
    d.wait_ready(timeout)
    return d


def pg_restart(cluster):
    """pg_ctl restart -m fast of a PgCluster (same options as its start)."""
    cluster._pg(["pg_ctl", "-D", cluster.data, "-l", cluster.logfile, "-m", "fast",
                 "-w", "-t", "30", "restart"])


def free_tcp_port():
    """A loopback TCP port that was free a moment ago (for --metrics-listen)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics_text(port):
    """The daemon's /metrics page on 127.0.0.1:port."""
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def metrics_counters(port, name="tenantq_requests_total"):
    """{labels-text: value} of one Prometheus counter from the daemon's
    /metrics on 127.0.0.1:port, e.g. {'op="ping",code="OK"': 3.0}."""
    out = {}
    for line in _metrics_text(port).splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            out[labels] = float(value)
    return out


def metric_value(port, name):
    """The value of an unlabelled metric from the daemon's /metrics on
    127.0.0.1:port."""
    for line in _metrics_text(port).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def idempotency_records(db, tenant=None):
    """{(tenant, key): response dict} of every stored idempotency record."""
    with db.connect() as c:
        if tenant is None:
            rows = c.execute("SELECT tenant, key, response FROM tenantq_idempotency").fetchall()
        else:
            rows = c.execute("SELECT tenant, key, response FROM tenantq_idempotency "
                             "WHERE tenant = %s", (tenant,)).fetchall()
    return {(t, k): json.loads(r) for t, k, r in rows}


def send_until_ok(client, body, limit_s=20.0, pause_s=0.05, log=None):
    """Send the same request bytes on client (a Client) until the reply is
    ok.  A timeout (no reply: outcome unknown) or a retryable error is
    retried with the same bytes, hence the same key; anything else fails the
    test.  log, if given, gets one entry per try: 'ok', 'replayed', an error
    code or 'timeout'.  Returns the ok response."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            r = client.raw(body)
        except NNTimeout:
            if log is not None:
                log.append("timeout")
            r = None
        if r is not None:
            if r["ok"]:
                if log is not None:
                    log.append("replayed" if r.get("replayed") else "ok")
                return r
            e = r["error"]
            if log is not None:
                log.append(e["code"])
            assert e["code"] in RETRYABLE_CODES and e["retryable"] is True, \
                "non-retryable reply to a retried request: %r" % (r,)
        assert time.monotonic() < deadline, "no ok within %.0fs (tries: %r)" % (limit_s, log)
        time.sleep(pause_s)


# --------------------------------------------------------------------------
# client threads

def start_threads(n, target):
    """Start target(i) in n threads.  Returns (threads, errors) for
    join_threads, which re-raises the first exception a thread hit."""
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as e:  # collected and re-raised by join_threads
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, errors


def join_threads(threads, errors, timeout=120):
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "client threads hung"
    if errors:
        raise errors[0]


def run_threads(n, target, timeout=120):
    """target(i) in n threads, waited for; the first exception is re-raised."""
    join_threads(*start_threads(n, target), timeout=timeout)


# --------------------------------------------------------------------------
# a primary and a streaming standby, for failover tests

class PgPair:
    """Two PostgreSQL 15 servers on this machine, each on its own unix
    socket directory (no TCP): a primary (wal_level=replica) and a hot
    standby made from it with `pg_basebackup -R`, streaming from it.
    sync=True sets synchronous_standby_names='*' on the primary (a commit
    waits until the standby has flushed its WAL, synchronous_commit=on);
    sync=False leaves replication asynchronous.  fsync stays on: these
    tests are about what survives.  As root the servers run as postgres.

    conninfo lists both socket directories with
    target_session_attrs=read-write, so libpq connects to whichever of the
    two accepts writes (never to a standby in recovery).  kill_primary()
    is `pg_ctl stop -m immediate` (no shutdown checkpoint: a crash), then
    promote() is `pg_ctl promote -w` of the standby."""

    def __init__(self, sync=True):
        self.sync = sync
        self.dir = tempfile.mkdtemp(prefix="tq-pgpair-")
        os.chmod(self.dir, 0o755)
        self.as_root = os.geteuid() == 0
        self.a = os.path.join(self.dir, "a")  # primary: socket dir, data in a/data
        self.b = os.path.join(self.dir, "b")  # standby
        for d in (self.a, self.b):
            os.mkdir(d)
            os.chmod(d, 0o755)
        if self.as_root:
            for d in (self.dir, self.a, self.b):
                shutil.chown(d, "postgres", "postgres")
        self.primary_data = os.path.join(self.a, "data")
        self.standby_data = os.path.join(self.b, "data")
        self.primary_log = os.path.join(self.a, "postgres.log")
        self.standby_log = os.path.join(self.b, "postgres.log")
        self.primary_conninfo = "host=%s user=postgres dbname=postgres" % self.a
        self.standby_conninfo = "host=%s user=postgres dbname=postgres" % self.b
        self.conninfo = ("host=%s,%s user=postgres dbname=postgres "
                         "target_session_attrs=read-write connect_timeout=2" % (self.a, self.b))
        self.primary_up = self.standby_up = False
        try:
            self._pg(["initdb", "-D", self.primary_data, "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C"])
            # initdb's pg_hba.conf already has "local replication all trust"
            self._start(self.primary_data, self.a, self.primary_log,
                        "-c synchronous_standby_names='%s'" % ("*" if sync else ""))
            self.primary_up = True
            self._pg(["pg_basebackup", "-h", self.a, "-U", "postgres", "-D", self.standby_data,
                      "-R", "-X", "stream", "-c", "fast", "--no-sync"])
            self._start(self.standby_data, self.b, self.standby_log,
                        "-c synchronous_standby_names='' -c hot_standby=on")
            self.standby_up = True
            self.wait_streaming()
        except BaseException:
            self.destroy()
            raise

    def _pg(self, argv, check=True, timeout=60):
        cmd = [os.path.join(PG_BIN, argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, "%s failed:\n%s\nprimary:\n%s\nstandby:\n%s" % (
                argv[0], p.stdout, log_tail(self.primary_log, 20),
                log_tail(self.standby_log, 20))
        return p

    def _start(self, data, sockdir, logfile, extra):
        self._pg(["pg_ctl", "-D", data, "-l", logfile, "-w", "-t", "30", "-o",
                  "-k %s -c listen_addresses='' -c fsync=on -c max_connections=50 "
                  "-c wal_level=replica -c max_wal_senders=4 -c shared_buffers=32MB "
                  "%s" % (sockdir, extra), "start"])

    def wait_streaming(self, timeout=30.0):
        """Until the primary lists the standby as streaming (and sync when
        sync=True)."""
        want = "sync" if self.sync else "async"
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            with psycopg.connect(self.primary_conninfo, autocommit=True) as c:
                last = c.execute("SELECT state, sync_state FROM pg_stat_replication").fetchall()
            if any(s == "streaming" and ss == want for s, ss in last):
                return
            time.sleep(0.05)
        raise AssertionError("standby not streaming (%s) within %.0fs: %r\n%s" % (
            want, timeout, last, log_tail(self.standby_log, 20)))

    def wait_replayed(self, timeout=30.0):
        """Until the standby has replayed everything the primary wrote so far."""
        with psycopg.connect(self.primary_conninfo, autocommit=True) as c:
            target = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.standby_conninfo, autocommit=True) as c:
                if c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                             (target,)).fetchone()[0]:
                    return
            time.sleep(0.02)
        raise AssertionError("standby did not replay up to %s within %.0fs" % (target, timeout))

    def cut_replication(self):
        """Stop the standby's WAL receiver and keep it stopped
        (primary_conninfo = '' on the standby, reloaded): from here on
        what the primary commits never reaches the standby."""
        with psycopg.connect(self.standby_conninfo, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET primary_conninfo = ''")
            c.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 10
            while c.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0]:
                assert time.monotonic() < deadline, "the WAL receiver is still running"
                time.sleep(0.02)

    def kill_primary(self):
        """The primary crashes: pg_ctl stop -m immediate."""
        self._pg(["pg_ctl", "-D", self.primary_data, "-m", "immediate", "-w", "stop"])
        self.primary_up = False

    def promote(self):
        """pg_ctl promote -w of the standby; returns once it accepts writes."""
        self._pg(["pg_ctl", "-D", self.standby_data, "-w", "-t", "30", "promote"])

    def destroy(self):
        if self.primary_up or os.path.exists(os.path.join(self.primary_data, "postmaster.pid")):
            self._pg(["pg_ctl", "-D", self.primary_data, "-m", "immediate", "-w", "stop"],
                     check=False)
        if self.standby_up or os.path.exists(os.path.join(self.standby_data, "postmaster.pid")):
            self._pg(["pg_ctl", "-D", self.standby_data, "-m", "immediate", "-w", "stop"],
                     check=False)
        self.primary_up = self.standby_up = False
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpPgCluster(PgCluster):
    """A PgCluster that listens on 127.0.0.1:port as well as on its unix
    socket (conninfo; tcp_conninfo names the server by address): for tests
    that reach the server over TCP, by address or by a host name."""

    def __init__(self):
        super().__init__()
        self.port = free_tcp_port()
        self.conninfo = "host=%s port=%d user=postgres dbname=postgres" % (self.dir, self.port)
        self.tcp_conninfo = "host=127.0.0.1 port=%d user=postgres dbname=postgres" % self.port

    def start(self):
        self._pg(["pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "30",
                  "-o", "-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=50" % (self.dir, self.port), "start"])
