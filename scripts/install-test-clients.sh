#!/usr/bin/env bash
# Real clients the integration tests drive (not needed on a production node:
# install.sh is for users). Each part installs only when missing or of
# another version, so later CI runs on the same machine skip the build.
#
#   scripts/install-test-clients.sh            # every part
#   scripts/install-test-clients.sh crictl     # only the named parts
#
#   ARCH_TEST_TOOLS=/opt/arch/test-tools   where the binaries go (bin/ below it)
set -euo pipefail

ARCH_TEST_TOOLS="${ARCH_TEST_TOOLS:-/opt/arch/test-tools}"
CRICTL_VERSION="v1.37.0"
say() { printf '[test-clients] %s\n' "$*"; }
die() { printf '[test-clients] ERROR: %s\n' "$*" >&2; exit 1; }

find_go() {
  local g
  for g in /usr/local/go/bin/go "$(command -v go || true)"; do
    [ -n "$g" ] && [ -x "$g" ] && { echo "$g"; return 0; }
  done
  return 1
}

# crictl drives containerd's CRI plugin as the kubelet would (test/support/cri-node.ts).
# No Debian package has it; a go install takes about 3 minutes, so a stamp
# file beside the binary records which version was built.
install_crictl() {
  local bin="$ARCH_TEST_TOOLS/bin/crictl" stamp="$ARCH_TEST_TOOLS/bin/.crictl-version"
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CRICTL_VERSION" ]; then
    say "crictl $CRICTL_VERSION present at $bin"
    return 0
  fi
  local go
  go="$(find_go)" || die "Go is needed to build crictl (install.sh installs it, or apt-get install golang-go)"
  say "building crictl $CRICTL_VERSION with $("$go" version) (about 3 minutes the first time)"
  mkdir -p "$ARCH_TEST_TOOLS/bin"
  GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOBIN="$ARCH_TEST_TOOLS/bin" "$go" install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  echo "$CRICTL_VERSION" >"$stamp"
  say "crictl $CRICTL_VERSION built at $bin"
}

parts=("$@")
[ "${#parts[@]}" -gt 0 ] || parts=(crictl)
for p in "${parts[@]}"; do
  case "$p" in
    crictl) install_crictl ;;
    *) die "unknown part '$p' (known: crictl)" ;;
  esac
done
