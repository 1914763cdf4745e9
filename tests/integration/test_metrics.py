"""/metrics describes the build and the process as well as the queues:
tenantq_build_info{version}, process_start_time_seconds,
process_resident_memory_bytes, process_open_fds, process_max_fds, checked
against the process itself (/proc) and `tenantqd --version`."""

import os
import re
import subprocess
import time

from tqlib import _metrics_text, daemon_bin, free_tcp_port, metric_value


def test_build_and_process_metrics(daemon_factory):
    before = time.time()
    port = free_tcp_port()
    d = daemon_factory("--metrics-listen", "127.0.0.1:%d" % port)
    after = time.time()
    text = _metrics_text(port)

    version = subprocess.run([daemon_bin(), "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    assert '\ntenantq_build_info{version="%s"} 1\n' % version in text, text

    start = metric_value(port, "process_start_time_seconds")
    assert before - 1 <= start <= after + 1, (before, start, after)

    rss = metric_value(port, "process_resident_memory_bytes")
    with open("/proc/%d/statm" % d.pid) as f:
        rss_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 0.5 * rss_now <= rss <= 2 * rss_now, (rss, rss_now)
    assert metric_value(port, "process_virtual_memory_bytes") >= rss

    fds = metric_value(port, "process_open_fds")
    fds_now = len(os.listdir("/proc/%d/fd" % d.pid))
    assert abs(fds - fds_now) <= 3, (fds, fds_now)   # a scrape's own socket comes and goes
    with open("/proc/%d/limits" % d.pid) as f:
        soft = re.search(r"^Max open files\s+(\d+)", f.read(), re.M).group(1)
    assert metric_value(port, "process_max_fds") == float(soft)

    # every sample line belongs to a series announced by # TYPE
    typed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in typed or base in typed, line
