"""The man pages build, render with man -l without warnings, and mention
every setting (section, key and flag, from `tenantqd --help`, which prints
the daemon's settings table) and every option of tenantqd, tenantq and
tenantq-load (from their --help), so the pages cannot fall behind the code."""

import os
import re
import subprocess

import pytest

from tqlib import build_dir, cli_bin, daemon_bin

PAGES = ["tenantqd.8", "tenantqd.conf.5", "tenantq.1", "tenantq-load.1"]


def _render(page):
    path = os.path.join(build_dir(), "man", page)
    assert os.path.exists(path), "%s was not built (is scdoc installed?)" % path
    p = subprocess.run(["man", "--nh", "--nj", "--warnings", "-l", path], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="200", MAN_KEEP_FORMATTING="0"))
    assert p.returncode == 0 and p.stderr == "", (page, p.returncode, p.stderr)
    # plain text: drop overstrike bold/underline, undo hyphenation at line
    # ends and man's typographic hyphens
    out = re.sub(r".\x08", "", p.stdout)
    out = re.sub(r"([-\u2010])\n\s*", r"\1", out)   # groff breaks lines after hyphens
    return out.replace("\u2010", "-").replace("\u2212", "-")


def _help(*cmd):
    p = subprocess.run(list(cmd) + ["--help"], capture_output=True, text=True)
    return p.stdout + p.stderr


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page):
    text = _render(page)
    assert "NAME" in text and "SEE ALSO" in text, text[:500]


def test_every_setting_is_documented():
    settings = re.findall(r"^  --(\S+)\s+\[(\w+)\] (\w+) \(default", _help(daemon_bin()), re.M)
    assert len(settings) >= 20, settings
    conf, daemon = _render("tenantqd.conf.5"), _render("tenantqd.8")
    for flag, section, key in settings:
        assert "[%s]" % section in conf, section
        assert re.search(r"^\s*%s = " % re.escape(key), conf, re.M), (section, key)
        assert "--" + flag in daemon, flag


def test_every_option_is_documented():
    pages = {
        "tenantqd.8": _help(daemon_bin()).split("settings (")[0],
        "tenantq.1": _help(cli_bin()),
        "tenantq-load.1": _help(os.path.join(build_dir(), "tests", "load", "tenantq-load")),
    }
    for page, usage in pages.items():
        text = _render(page)
        opts = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z])(?=[ ,=\]|)]|$)", usage,
                              re.M))
        assert len(opts) >= 4, (page, opts)
        missing = sorted(o for o in opts if not re.search(r"(?<![\w-])%s(?![\w-])"
                                                          % re.escape(o), text))
        assert not missing, (page, missing)
