"""`meson install --destdir` of the build under test: the installed tree has
the daemon, the CLI, the library with its soname, the headers, a pkg-config
file that compiles and links a program, the systemd unit whose ExecStart
names the installed binary and config (the daemon's own default), the
sysusers/tmpfiles snippets, the config and the man pages."""

import os
import re
import subprocess
import tempfile

from tqlib import build_dir, sanitized_build


def _introspect(option):
    import json
    out = subprocess.run(["meson", "introspect", "--buildoptions", build_dir()],
                         capture_output=True, text=True, check=True).stdout
    return {o["name"]: o["value"] for o in json.loads(out)}[option]


def test_meson_install_destdir():
    dest = tempfile.mkdtemp(prefix="tq-destdir-")
    p = subprocess.run(["meson", "install", "-C", build_dir(), "--no-rebuild", "--quiet",
                        "--destdir", dest], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    prefix = _introspect("prefix")
    libdir = os.path.join(prefix, _introspect("libdir"))
    sysconf = os.path.join(prefix, _introspect("sysconfdir"))
    root = lambda *parts: os.path.join(dest, *[q.lstrip("/") for q in parts])  # noqa: E731

    sbin = os.path.join(prefix, _introspect("sbindir"), "tenantqd")
    assert os.access(root(sbin), os.X_OK), sbin
    assert os.access(root(prefix, _introspect("bindir"), "tenantq"), os.X_OK)
    conf = os.path.join(sysconf, "tenantq", "tenantqd.conf")
    assert os.path.isfile(root(conf)), conf

    # the library: real file, soname link, dev link; SONAME libtenantq.so.0
    so = root(libdir, "libtenantq.so.0")
    assert os.path.islink(root(libdir, "libtenantq.so")) and os.path.exists(so)
    dyn = subprocess.run(["readelf", "-d", so], capture_output=True, text=True).stdout
    assert re.search(r"SONAME.*\[libtenantq\.so\.0\]", dyn), dyn
    for h in ("tenantq.h", "tq_codes.h"):
        assert os.path.isfile(root(prefix, "include", "tenantq", h)), h

    # a program built with nothing but the installed pkg-config file
    pcdir = root(libdir, "pkgconfig")
    assert os.path.isfile(os.path.join(pcdir, "tenantq.pc"))
    flags = subprocess.run(["pkg-config", "--define-variable=prefix=" + root(prefix), "--cflags",
                            "--libs", "tenantq"],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, PKG_CONFIG_PATH=pcdir)).stdout.split()
    src = os.path.join(dest, "prog.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include <tenantq.h>\n'
                'int main(void) { puts(tq_code_name(TQ_E_REJECTED)); return 0; }\n')
    exe = os.path.join(dest, "prog")
    # a sanitized library needs the sanitizer runtime in the program too
    san = ["-fsanitize=" + _introspect("b_sanitize")] if sanitized_build() else []
    compiler = "clang" if san else "cc"
    cc = subprocess.run([compiler, src, "-o", exe, *san, *flags], capture_output=True, text=True)
    assert cc.returncode == 0, (flags, cc.stderr)
    run = subprocess.run([exe], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=root(libdir)))
    assert run.returncode == 0 and run.stdout.strip() == "REJECTED", (run.stdout, run.stderr)

    # the unit starts what was installed, with the config the daemon defaults to
    units = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
             if f == "tenantqd.service"]
    assert len(units) == 1, units
    assert units[0].startswith(root(prefix)), units
    unit = open(units[0]).read()
    assert "ExecStart=%s -c %s\n" % (sbin, conf) in unit, unit
    assert "Documentation=man:tenantqd(8)" in unit
    helptext = subprocess.run([root(sbin), "--help"], capture_output=True, text=True).stdout
    assert "(default %s;" % conf in helptext, helptext[:300]
    for kind in ("sysusers.d", "tmpfiles.d"):
        found = [d for d, _, fs in os.walk(dest) if d.endswith(kind) and "tenantq.conf" in fs]
        assert found and found[0].startswith(root(prefix)), (kind, found)

    mandir = os.path.join(prefix, _introspect("mandir"))
    for page, sec in (("tenantqd.8", "8"), ("tenantqd.conf.5", "5"), ("tenantq.1", "1")):
        assert os.path.isfile(root(mandir, "man" + sec, page)), page
    # tenantq-load, a test tool, is not installed, nor its page
    assert not os.path.exists(root(mandir, "man1", "tenantq-load.1"))
    subprocess.run(["rm", "-rf", dest], check=True)
