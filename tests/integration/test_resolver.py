"""Host names never stall a shard's loop (docs/configuration.md, "Naming the
database server"), and a first host that swallows connections does not
block the others (docs/failure.md, "A silently dead first host").

The resolver tests run tenantqd in a private mount namespace whose
/etc/resolv.conf (a bind mount) names a fake DNS server of the test's own
on 127.0.0.x:53: while it holds every query unanswered, the shards' loops,
pings and /metrics must stay prompt and each connect attempt must end at the
connect deadline; once it answers (db.tenantq.test -> 127.0.0.1, where a
PostgreSQL cluster of the test listens on TCP) the daemon must connect and
serve an edit.  They need root (unshare, mount); the DNS traffic never
leaves the loopback interface, and names outside .tenantq.test are refused
(NXDOMAIN) by the fake server.  Run with -s to see the measured figures."""

import ctypes
import os
import socket
import struct
import tempfile
import threading
import time

import psycopg
import pytest

from tqlib import (Client, Daemon, NNError, TcpPgCluster, envelope, free_tcp_port, init_db,
                   metric_value, metrics_counters, ok, pack, sanitized_build, send_until_ok)

NAME = "db.tenantq.test"
SLOW = 3 if sanitized_build() else 1  # an ASan+UBSan build is slower


# --------------------------------------------------------------------------
# a DNS server that holds queries, or answers them


def _qname(msg, off):
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels).lower(), off
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n


class FakeDNS:
    """UDP on addr:53.  hold(): every query is kept unanswered (a hung
    resolver); answer(): the held ones and all later ones are answered,
    `names` -> 127.0.0.1 for A, no data for AAAA, NXDOMAIN otherwise."""

    def __init__(self, addr, names):
        self.addr = addr
        self.names = {n.lower() for n in names}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.answering = False
        self.held = []
        self.queries = []  # (time, qname, qtype) of every query received
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _reply(self, msg, peer):
        qid, flags, qd = struct.unpack("!HHH", msg[:6])
        name, off = _qname(msg, 12)
        qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
        question = msg[12:off + 4]
        known = name in self.names or name.rstrip(".") in self.names
        rcode = 0 if known else 3
        answers = b""
        if known and qtype == 1 and qclass == 1:
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
        head = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1,
                           1 if answers else 0, 0, 0)
        self.sock.sendto(head + question + answers, peer)

    def _run(self):
        while not self.stopped:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                name, off = _qname(msg, 12)
                qtype = struct.unpack("!H", msg[off:off + 2])[0]
            except (ValueError, IndexError, struct.error):
                continue
            with self.lock:
                self.queries.append((time.monotonic(), name, qtype))
                if not self.answering:
                    self.held.append((msg, peer))
                    continue
            self._reply(msg, peer)

    def answer(self):
        with self.lock:
            self.answering = True
            held, self.held = self.held, []
        for msg, peer in held:
            self._reply(msg, peer)

    def count(self, since=0.0):
        with self.lock:
            return len([q for q in self.queries if q[0] >= since])

    def close(self):
        self.stopped = True
        self.thread.join(5)
        self.sock.close()


def _free_dns_addr():
    """A loopback address whose UDP port 53 is free (glibc asks port 53 only)."""
    for last in (153, 154, 155, 156, 157):
        addr = "127.0.0.%d" % last
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((addr, 53))
            return addr
        except OSError:
            continue
        finally:
            s.close()
    return None


# --------------------------------------------------------------------------
# a private mount namespace with our resolv.conf

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def _private_resolv(path):
    """A preexec_fn: a new mount namespace (nothing propagates back) in which
    path is bind-mounted on /etc/resolv.conf."""
    def pre():
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        if _libc.mount(path.encode(), b"/etc/resolv.conf", None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --bind resolv.conf")
    return pre


@pytest.fixture
def resolver_env():
    """(FakeDNS holding queries, preexec_fn): skips unless this machine lets
    the test make a mount namespace and bind UDP port 53 on loopback."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a private mount namespace (unshare, mount --bind) and "
                    "UDP port 53 on 127.0.0.x for a fake DNS server")
    addr = _free_dns_addr()
    if addr is None:
        pytest.skip("no free UDP port 53 on 127.0.0.153-157 for the fake DNS server")
    tmp = tempfile.mkdtemp(prefix="tq-resolv-")
    conf = os.path.join(tmp, "resolv.conf")
    with open(conf, "w") as f:
        # one server, one try, a long timeout: one hung lookup outlasts the
        # daemon's connect deadline (10 s) several times over
        f.write("nameserver %s\noptions timeout:30 attempts:1\n" % addr)
    pre = _private_resolv(conf)
    import subprocess
    try:
        seen = subprocess.run(["cat", "/etc/resolv.conf"], preexec_fn=pre, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip("cannot make a private mount namespace here: %s" % e)
    if seen.returncode != 0 or ("nameserver %s" % addr) not in seen.stdout:
        pytest.skip("the bind-mounted resolv.conf is not seen in the namespace: %r" % seen.stdout)
    dns = FakeDNS(addr, [NAME])
    yield dns, pre
    dns.close()
    os.unlink(conf)
    os.rmdir(tmp)


@pytest.fixture
def tcp_cluster():
    pg = TcpPgCluster()
    pg.start()
    try:
        init_db(pg.tcp_conninfo)
        yield pg
    finally:
        pg.destroy()


def _tasks(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def _timed(f):
    t = time.monotonic()
    r = f()
    return time.monotonic() - t, r


def _upsert(tenant, key):
    return pack(envelope(tenant, "section.upsert",
                         {"page": "home", "section": {"id": key, "type": "x"}}, key=key))


def _start(conninfo, pre, *flags):
    d = Daemon(conninfo, [str(f) for f in flags], preexec_fn=pre)
    try:
        d.wait_ready(timeout=20.0 * SLOW)  # (startup checks the storage table first)
    except BaseException:
        d.stop()
        raise
    return d


# --------------------------------------------------------------------------


def test_hung_resolver_stalls_no_loop(resolver_env, tcp_cluster):
    dns, pre = resolver_env
    mport = free_tcp_port()
    conninfo = "host=%s port=%d user=postgres dbname=postgres" % (NAME, tcp_cluster.port)
    d = _start(conninfo, pre, "--shards", 2, "--connections-per-shard", 2,
               "--metrics-listen", "127.0.0.1:%d" % mport, "--default-deadline-ms", 1000)
    try:
        tenants = ["t%d" % i for i in range(16)]  # both shards, whatever the hash key
        pings, scrapes = [], []
        tasks0 = _tasks(d.pid)
        hang_s = 14.0  # past the 10 s connect deadline: one attempt fails, the next waits
        t_end = time.monotonic() + hang_s
        with Client(d.endpoint, timeout_ms=40000) as c:
            while time.monotonic() < t_end:
                for t in tenants:
                    dt, r = _timed(lambda: c.call(t, "ping"))
                    assert r["ok"] and r["result"] == {"pong": True}, r
                    pings.append(dt)
                dt, _ = _timed(lambda: metrics_counters(mport))
                scrapes.append(dt)
                time.sleep(0.1)
            # an edit while the name does not resolve: a prompt retryable error
            dt, r = _timed(lambda: c.call("t0", "section.upsert",
                                          {"page": "home", "section": {"id": "a", "type": "x"}}))
            assert not r["ok"] and r["error"]["retryable"], r
            assert dt < 3.0 * SLOW, "the edit took %.2fs to fail" % dt
        worst, worst_scrape = max(pings), max(scrapes)
        print("\nhung resolver, %.0f s: %d pings, max %.1f ms, median %.1f ms; "
              "%d scrapes of /metrics, max %.1f ms; %d DNS queries" % (
                  hang_s, len(pings), worst * 1000, sorted(pings)[len(pings) // 2] * 1000,
                  len(scrapes), worst_scrape * 1000, dns.count()))
        assert worst < 1.0 * SLOW, "a ping waited %.2fs: a shard's loop stalled" % worst
        assert worst_scrape < 1.0 * SLOW, "/metrics took %.2fs" % worst_scrape
        assert metric_value(mport, 'tenantq_db_connections{shard="0"}') == 0
        # one lookup of the name at a time for the whole daemon (glibc asks A
        # and AAAA once each), however many connections wait for it; and no
        # thread piles up behind the hung lookup
        assert 1 <= dns.count() <= 2, dns.queries
        assert _tasks(d.pid) <= tasks0 + 1, (tasks0, _tasks(d.pid))
        log = d.log()
        assert ("could not resolve %s within" % NAME) in log, d.tail()

        # the resolver answers again: the daemon connects and serves an edit
        t0 = time.monotonic()
        dns.answer()
        with Client(d.endpoint, timeout_ms=10000) as c:
            r = send_until_ok(c, _upsert("t1", "after"), limit_s=20.0 * SLOW)
        recovered = time.monotonic() - t0
        print("resolver answering again: first edit ok after %.2f s" % recovered)
        assert r["result"]["version"] == 1
        deadline = time.monotonic() + 10 * SLOW
        while any(metric_value(mport, 'tenantq_db_connections{shard="%d"}' % i) < 2
                  for i in (0, 1)):
            assert time.monotonic() < deadline, d.tail()
            time.sleep(0.1)
        with psycopg.connect(tcp_cluster.conninfo) as db:
            n = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'tenantqd' AND client_addr = '127.0.0.1'").fetchone()[0]
            assert n == 4, "expected 4 daemon connections over TCP, found %d" % n
        # four connections, one lookup: the answer is shared and cached
        assert dns.count() <= 4, dns.queries
    finally:
        d.stop()


def test_stop_during_a_hung_lookup(resolver_env, tcp_cluster):
    """SIGTERM while a lookup hangs: a clean, prompt exit (the lookup thread
    is left to the process's end; no sanitizer report)."""
    dns, pre = resolver_env
    conninfo = "host=%s port=%d user=postgres dbname=postgres" % (NAME, tcp_cluster.port)
    d = _start(conninfo, pre, "--shards", 2, "--statement-timeout-ms", 1000)
    time.sleep(1.0)
    assert dns.count() >= 1, "no lookup reached the fake DNS server"
    t0 = time.monotonic()
    d.stop()
    took = time.monotonic() - t0
    assert took < 5.0 * SLOW, "stopping took %.1fs" % took


@pytest.mark.parametrize("form", ["keywords", "uri"])
def test_names_in_a_multi_host_list(resolver_env, tcp_cluster, form):
    """A name that does not exist, then one that resolves (then a unix
    socket), with target_session_attrs: the daemon skips the unknown name and
    connects to the server by its name (over TCP, host kept for messages)."""
    dns, pre = resolver_env
    dns.answer()
    if form == "uri":
        conninfo = ("postgresql://postgres@nowhere.tenantq.test:%d,%s:%d/postgres"
                    "?target_session_attrs=read-write" % (tcp_cluster.port, NAME,
                                                          tcp_cluster.port))
    else:
        conninfo = ("host=nowhere.tenantq.test,%s,%s port=%d user=postgres dbname=postgres "
                    "target_session_attrs=read-write" % (NAME, tcp_cluster.dir,
                                                         tcp_cluster.port))
    d = _start(conninfo, pre, "--shards", 1, "--connections-per-shard", 1)
    try:
        with Client(d.endpoint) as c:
            r = send_until_ok(c, _upsert("m", "one"), limit_s=15.0 * SLOW)
        assert r["result"]["version"] == 1
        with psycopg.connect(tcp_cluster.conninfo) as db:
            n = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'tenantqd' AND client_addr = '127.0.0.1'").fetchone()[0]
        assert n == 1, "the daemon did not connect by the name (over TCP): %d" % n
        assert 'could not translate host name "nowhere.tenantq.test"' in d.log(), d.tail()
    finally:
        d.stop()


# --------------------------------------------------------------------------
# a first host that swallows connections


@pytest.fixture
def swallowing_port():
    """A TCP port on 127.0.0.1 whose listen queue is full: a connect there
    hangs (the SYN is dropped), as to a machine that never answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except socket.timeout:
            s.close()
            break
        fillers.append(s)
    else:
        pytest.skip("a listen queue of 0 does not fill up here")
    yield port
    for s in fillers:
        s.close()
    lsock.close()


@pytest.mark.parametrize("timeout_opt,bound_s", [("", 20.0), ("connect_timeout=2", 8.0)])
def test_silently_dead_first_host(swallowing_port, tcp_cluster, timeout_opt, bound_s):
    conninfo = "host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres %s" % (
        swallowing_port, tcp_cluster.port, timeout_opt)
    t0 = time.monotonic()
    d = Daemon(conninfo, ["--shards", "2", "--connections-per-shard", "1"])
    try:
        d.wait_ready()
        with Client(d.endpoint, timeout_ms=5000) as c:
            r = send_until_ok(c, _upsert("f", "one"), limit_s=(bound_s + 10) * SLOW)
        took = time.monotonic() - t0
        print("\nfirst host swallowing connections (%s): first edit ok after %.2f s" % (
            timeout_opt or "no connect_timeout", took))
        assert r["result"]["version"] == 1
        assert took < bound_s * SLOW, "failover to the second host took %.1fs" % took
        assert "timed out connecting to 127.0.0.1:%d" % swallowing_port in d.log(), d.tail()
    finally:
        d.stop()
