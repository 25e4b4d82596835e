#!/usr/bin/env bash
# Real clients the integration tests drive (not needed on a production node:
# install.sh is for users). Each part installs only when missing, so later CI
# runs on the same machine skip it.
#
#   scripts/install-test-clients.sh            # every part
#   scripts/install-test-clients.sh docker     # only the named parts
set -euo pipefail

say() { printf '[test-clients] %s\n' "$*"; }
die() { printf '[test-clients] ERROR: %s\n' "$*" >&2; exit 1; }

# Docker engine (Debian's docker.io: dockerd and the client of its version at
# /usr/bin/docker) for test/integration/docker.test.ts, which starts its own
# dockerd on a test node's containerd. The package's service is not started
# here: nothing but the tests runs a dockerd.
install_docker() {
  if [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ]; then
    say "docker present: $(/usr/bin/docker --version)"
    return 0
  fi
  say "installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  say "installed: $(/usr/bin/docker --version)"
}

parts=("$@")
[ "${#parts[@]}" -gt 0 ] || parts=(docker)
for p in "${parts[@]}"; do
  case "$p" in
    docker) install_docker ;;
    *) die "unknown part '$p' (known: docker)" ;;
  esac
done
