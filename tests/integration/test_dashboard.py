"""docs/grafana/tenantq-dashboard.json queries only what the daemon exports:
every metric name in every panel's expression (histograms by their _bucket,
_sum or _count series) and every label matched or grouped by is on a live
/metrics page of a daemon that has answered requests."""

import json
import os
import re

from tqlib import _metrics_text, call, free_tcp_port, ok

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "grafana",
                         "tenantq-dashboard.json")
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "on", "group_left", "time", "le",
                "instance"}


def exported(text):
    """{metric name: set of label names} of a /metrics page."""
    names = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert m, line
        labels = set(re.findall(r'([a-zA-Z_]\w*)="', m.group(3) or ""))
        names.setdefault(m.group(1), set()).update(labels)
    return names


def test_dashboard_uses_only_exported_metrics(daemon_factory):
    port = free_tcp_port()
    d = daemon_factory("--metrics-listen", "127.0.0.1:%d" % port)
    ok(call(d.endpoint, "acme", "section.upsert", {"page": "home", "section": {"type": "hero"}}))
    call(d.endpoint, "acme", "section.remove", {"id": "nope"})  # an error code too
    have = exported(_metrics_text(port))
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15, exprs
    used = set()
    for e in exprs:
        bare = re.sub(r"\[[^\]]*\]", "", e)               # range selectors
        bare = re.sub(r'"[^"]*"', '""', bare)              # label values
        for name in re.findall(r"\b(tenantq_\w+|process_\w+)\b", bare):
            assert name in have, "%s (in %s) is not exported" % (name, e)
            used.add(name)
        for sel_name, sel in re.findall(r"\b(\w+)\{([^}]*)\}", bare):
            for label in re.findall(r"(\w+)\s*(?:=|!=|=~|!~)", sel):
                assert label in have.get(sel_name, set()), (label, sel_name, e)
        for group in re.findall(r"\bby \(([^)]*)\)", bare):
            for label in (x.strip() for x in group.split(",")):
                assert label == "le" or any(label in ls for ls in have.values()), (label, e)
    # every family the daemon exports is on some panel (histograms by one series)
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in have}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, "not on the dashboard: %s" % sorted(families - shown)
