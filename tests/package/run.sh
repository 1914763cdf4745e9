#!/usr/bin/env bash
# tests/package/run.sh - build the Debian packages from the working tree,
# check them with lintian, install them with dpkg -i, check the installed
# daemon, and purge them again.  Prints one "package_<check>: ok|FAILED"
# line per check; exit 0 only if every check passed.  Installing needs root
# (scripts/test runs this only as root, as CI does).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/tq-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
bad=0
verdict() { # NAME RC [detail]
    if [ "$2" -eq 0 ]; then echo "package_$1: ok"; else echo "package_$1: FAILED ${3:-}"; bad=1; fi
}

version=$(sed -n '1s/^tenantq (\([^)]*\)).*/\1/p' "$root/debian/changelog")
src=$work/tenantq-$version
mkdir -p "$src"
# the tracked and new (not ignored) files: what a clean clone would hold
(cd "$root" && { git ls-files; git ls-files --others --exclude-standard; } |
    grep -v '^client/node/node_modules/' | tar -cf - -T -) | tar -xf - -C "$src"

(cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1
rc=$?
[ $rc -eq 0 ] || tail -30 "$work/build.log"
verdict build $rc "(dpkg-buildpackage exit $rc)"
[ $rc -eq 0 ] || exit 1

debs=("$work"/tenantqd_*.deb "$work"/tenantq_*.deb "$work"/libtenantq0_*.deb
      "$work"/libtenantq-dev_*.deb)
lintian --tag-display-limit 0 "$work"/*.changes >"$work/lintian.log" 2>&1
grep -v 'root privileges' "$work/lintian.log" || true
errors=$(grep -c '^E: ' "$work/lintian.log" || true)
verdict lintian "$errors" "($errors errors)"

dpkg -i "${debs[@]}" >"$work/dpkg.log" 2>&1
rc=$?
[ $rc -eq 0 ] || cat "$work/dpkg.log"
verdict install $rc "(dpkg -i exit $rc)"
if [ $rc -eq 0 ]; then
    out=$(/usr/sbin/tenantqd --check-config 2>&1)
    rc=$?
    echo "$out"
    verdict check_config $rc "(exit $rc)"
    getent passwd tenantq >/dev/null
    verdict system_user $? "(no user tenantq: sysusers did not run)"
    unit=$(systemctl cat tenantqd.service 2>/dev/null || cat /lib/systemd/system/tenantqd.service)
    grep -q '^ExecStart=/usr/sbin/tenantqd -c /etc/tenantq/tenantqd.conf$' <<<"$unit"
    verdict unit $? "(ExecStart does not name the installed daemon and config)"
    dpkg-query -W -f='${Conffiles}\n' tenantqd | grep -q '/etc/tenantq/tenantqd.conf'
    verdict conffile $? "(tenantqd.conf is not a conffile)"
fi
dpkg --purge tenantqd tenantq libtenantq-dev libtenantq0 >/dev/null 2>&1 || true
exit $bad
