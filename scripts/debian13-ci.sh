#!/usr/bin/env bash
# Run ARCH's CI (.ci/run: install.sh, then the whole test suite) in a Debian 13
# root on this host, to check the installer and the tests on Debian 13's
# packages (containerd 1.7, runc 1.1.15, Node 20.19, Go 1.24; CRIU comes from Debian forky, as on Debian 12) from a
# Debian 12 machine. As root; about 15 minutes the first time.
#
#   scripts/debian13-ci.sh [ROOT]      ROOT default /var/tmp/arch-debian13
#
# What it is and is not: the host's kernel, a Debian 13 userland. The root is
# made with debootstrap (installed on the host if missing) from the host's own
# Debian mirror, gets the host's extra CA certificates (a TLS-inspecting proxy
# needs them, as the host does) and its apt Acquire settings, and a fresh clone of this repository's HEAD.
# Everything runs in a private mount namespace entered with pivot_root (runc
# and CRIU need a real root mount, not a chroot): its mounts go away with it.
# .ci/run stops what it started; the root dir stays for a faster next run
# (remove it by hand).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${1:-/var/tmp/arch-debian13}"
say() { printf '[debian13-ci] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
  # The host's Debian mirror, as install.sh finds it.
  MIRROR="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -E '^(URIs:|deb )' | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n1 | sed 's:/*$::' || true)"
  [ -n "$MIRROR" ] || { echo "cannot find the Debian mirror in /etc/apt" >&2; exit 1; }
  say "debootstrap trixie into $ROOT"
  rm -rf "$ROOT"
  debootstrap --variant=minbase --include=ca-certificates,git,procps trixie "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null
fi
# The host's apt settings for reaching its mirror (Acquire::*: proxies, and a
# frozen mirror's expired Valid-Until dates, which the testing suite's
# Release files carry and install.sh's CRIU fetch reads), as the host has them.
for f in /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -q '^Acquire::' "$f" && cp "$f" "$ROOT/etc/apt/apt.conf.d/"
done
say "fresh clone of $(git -C "$REPO" rev-parse --short HEAD)"
rm -rf "$ROOT/work/arch"
mkdir -p "$ROOT/work" "$ROOT/.oldroot"
git clone -q "$REPO" "$ROOT/work/arch"

say "running .ci/run in it"
# shellcheck disable=SC2016 # the script is expanded by the inner bash, in the new mount namespace
exec unshare -m --propagation private bash -c '
  set -e
  R="$1"
  mount --bind "$R" "$R"
  mount --rbind /proc "$R/proc"
  mount --rbind /sys "$R/sys"
  mount --rbind /dev "$R/dev"
  mount -t tmpfs tmpfs "$R/run"
  mount -t tmpfs -o size=8g tmpfs "$R/tmp"
  cd "$R"
  pivot_root . .oldroot
  umount -l /.oldroot
  cd /
  exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true TERM=dumb \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt /bin/bash -c "cd /work/arch && bash .ci/run"
' debian13-ci "$ROOT"
