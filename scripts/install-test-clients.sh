#!/usr/bin/env bash
# Real clients the integration tests drive (not needed on a production node:
# install.sh is for users). Each part installs only when missing or of
# another version, so later CI runs on the same machine skip the build.
#
#   scripts/install-test-clients.sh                 # every part
#   scripts/install-test-clients.sh docker crictl   # only the named parts (docker, crictl, versitygw, shellcheck, python3, java, postgres, podman)
#
#   ARCH_TEST_TOOLS=/opt/arch/test-tools   where built binaries go (bin/ below it)
set -euo pipefail

ARCH_TEST_TOOLS="${ARCH_TEST_TOOLS:-/opt/arch/test-tools}"
CRICTL_VERSION="v1.37.0"
VERSITYGW_VERSION="v1.8.0"
say() { printf '[test-clients] %s\n' "$*"; }
die() { printf '[test-clients] ERROR: %s\n' "$*" >&2; exit 1; }

# apt-get install PACKAGE... with no service of theirs started: policy-rc.d
# answers 101 (action forbidden) while they install, unless the machine has
# a policy of its own.
apt_install_without_services() {
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d made_policy=0 ok=1
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || ok=0
  [ "$made_policy" = 1 ] && rm -f "$policy"
  [ "$ok" = 1 ] || die "apt-get install $* failed"
}

# Docker engine (Debian's docker.io: dockerd, and the client of its version at
# /usr/bin/docker: part of docker.io on Debian 12, the package docker-cli,
# which docker.io only recommends, on Debian 13) for
# test/integration/docker.test.ts, which starts its own dockerd on a test
# node's containerd. The package's service is not started here: nothing but
# the tests runs a dockerd.
install_docker() {
  if [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ]; then
    say "docker present: $(/usr/bin/docker --version)"
    return 0
  fi
  say "installing Debian's docker.io"
  apt-get update -qq
  # Its service must not start (on a machine with systemd it would make a
  # bridge and iptables rules of its own).
  local pkgs=(docker.io)
  apt-cache show docker-cli >/dev/null 2>&1 && pkgs+=(docker-cli)
  apt_install_without_services "${pkgs[@]}"
  say "installed: $(/usr/bin/docker --version)"
}

# ShellCheck, for `npm run lint` (bin/, install.sh, .ci/run, scripts/).
install_shellcheck() {
  if command -v shellcheck >/dev/null 2>&1; then
    say "shellcheck present: $(shellcheck --version | sed -n 's/^version: //p')"
    return 0
  fi
  say "installing Debian's shellcheck"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq shellcheck >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; }
}

# Debian's python3, for the Python job image of the workload tests
# (test/support/images.ts copies it, its standard library and its libraries).
install_python3() {
  if [ -x /usr/bin/python3 ]; then
    say "python3 present: $(/usr/bin/python3 --version)"
    return 0
  fi
  say "installing Debian's python3"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends python3 >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null; } \
    || die "apt-get install python3 failed"
}

# Debian's JDK (default-jdk-headless: OpenJDK 17 on Debian 12, 21 on Debian
# 13), for the Java job image of the workload tests (test/support/images.ts
# compiles the job with its javac and makes the image's runtime with its jlink).
install_java() {
  if command -v javac >/dev/null 2>&1 && command -v jlink >/dev/null 2>&1; then
    say "JDK present: $(javac -version 2>&1)"
    return 0
  fi
  say "installing Debian's default-jdk-headless"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends default-jdk-headless >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends default-jdk-headless >/dev/null; } \
    || die "apt-get install default-jdk-headless failed"
}

# Debian's PostgreSQL server (postgresql: 15 on Debian 12, 17 on Debian 13),
# for the test job with its own database (test/support/images.ts copies the
# server's binaries, modules and share files into its rootfs). No
# cluster is made and no service started: only the tests run a server, in
# their containers.
install_postgres() {
  local found
  for found in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$found" ] && { say "PostgreSQL present: $found"; return 0; }
  done
  say "installing Debian's postgresql (no cluster, no service)"
  mkdir -p /etc/postgresql-common/createcluster.d
  printf 'create_main_cluster = false\n' >/etc/postgresql-common/createcluster.d/arch-test-clients.conf
  apt-get update -qq
  apt_install_without_services postgresql
  for found in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$found" ] && { say "installed: $found"; return 0; }
  done
  die "postgresql installed, but no /usr/lib/postgresql/*/bin/postgres"
}

find_go() {
  local g
  for g in /usr/local/go/bin/go "$(command -v go || true)"; do
    [ -n "$g" ] && [ -x "$g" ] && { echo "$g"; return 0; }
  done
  return 1
}

# A Go tool no Debian package has, built with `go install` (about 3 minutes)
# into $ARCH_TEST_TOOLS/bin, a stamp file beside it recording which version:
#   install_go_tool NAME VERSION MODULE_PATH
install_go_tool() {
  local name="$1" version="$2" module="$3"
  local bin="$ARCH_TEST_TOOLS/bin/$name" stamp="$ARCH_TEST_TOOLS/bin/.$name-version"
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    say "$name $version present at $bin"
    return 0
  fi
  local go
  go="$(find_go)" || die "Go is needed to build $name (apt-get install golang-go)"
  say "building $name $version with $("$go" version) (about 3 minutes the first time)"
  mkdir -p "$ARCH_TEST_TOOLS/bin"
  GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOBIN="$ARCH_TEST_TOOLS/bin" "$go" install "$module@$version"
  echo "$version" >"$stamp"
  say "$name $version built at $bin"
}

# podman (Debian's), for the store-v2 bench's side-by-side size of
# `podman container checkpoint --export --compress zstd` (bench/podman.ts).
# Its CRIU comes from PATH: the bench puts ARCH's private CRIU first.
install_podman() {
  if command -v podman >/dev/null 2>&1; then
    say "podman present: $(podman --version)"
    return 0
  fi
  say "installing Debian's podman"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman >/dev/null || die "apt-get install podman failed"
  say "podman installed: $(podman --version)"
}

# crictl drives containerd's CRI plugin as the kubelet would (test/support/cri-node.ts).
install_crictl() { install_go_tool crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl; }

# versitygw: a real S3-compatible server (POSIX backend: it serves a
# directory) for the S3 store tests, started on loopback and stopped by them.
install_versitygw() { install_go_tool versitygw "$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw; }

parts=("$@")
[ "${#parts[@]}" -gt 0 ] || parts=(docker crictl versitygw shellcheck python3 java postgres)
for p in "${parts[@]}"; do
  case "$p" in
    docker) install_docker ;;
    crictl) install_crictl ;;
    versitygw) install_versitygw ;;
    shellcheck) install_shellcheck ;;
    podman) install_podman ;;
    python3) install_python3 ;;
    java) install_java ;;
    postgres) install_postgres ;;
    *) die "unknown part '$p' (known: docker, crictl, versitygw, shellcheck, python3, java, postgres, podman)" ;;
  esac
done
