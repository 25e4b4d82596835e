#!/usr/bin/env bash
# ARCH node installer: idempotent, as root, on Debian 12 or 13.
# Installs runc, containerd, iptables, zstd, CRIU >= 4.2, the Temporal CLI,
# the npm dependencies and the build, then puts arch-runc, arch-cli and
# arch-worker on PATH and writes /etc/arch/arch.env (kept if present).
#
#   sudo ./install.sh            # everything
#   ARCH_PREFIX=/opt/arch        # where private binaries go (default)
set -euo pipefail

ARCH_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARCH_PREFIX="${ARCH_PREFIX:-/opt/arch}"
TEMPORAL_CLI_VERSION="v1.5.1"   # later versions cannot be go-installed
CONF_DIR=/etc/arch
say() { printf '[arch-install] %s\n' "$*"; }
die() { printf '[arch-install] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo ./install.sh)"
[ -r /etc/debian_version ] || die "only Debian 12 and 13 are supported (no /etc/debian_version)"
DEBIAN_MAJOR="$(cut -d. -f1 /etc/debian_version)"
case "$DEBIAN_MAJOR" in
  12|13) ;;
  trixie*|forky*|sid*) DEBIAN_MAJOR=13 ;;
  *) die "unsupported Debian version '$(cat /etc/debian_version)': use Debian 12 or 13" ;;
esac
say "Debian $DEBIAN_MAJOR, ARCH at $ARCH_HOME, private binaries in $ARCH_PREFIX"
mkdir -p "$ARCH_PREFIX/bin" "$CONF_DIR"
export DEBIAN_FRONTEND=noninteractive

# ---- Debian packages -------------------------------------------------------
# gcc and libc6-dev: the build compiles arch-runc's front (shim/arch-runc.c); the tests, their images' programs.
# zlib1g-dev: the gzip ARCH gives CRIU for its tmpfs archives (shim/criu-gzip.c) is built against zlib.
# iproute2: CRIU runs `ip` to save and restore a container's own network namespace (Debian's criu
# only recommends it, and a minimal Debian 13 has none); ARCH brings a restored container's loopback up with
# `ip` and frees its listener ports of TIME_WAIT entries with `ss`; the tests make namespaces with `ip netns`.
PKGS=(runc containerd iptables iproute2 zstd busybox-static gcc libc6-dev zlib1g-dev attr ca-certificates openssl)
# npm ci builds zstd-napi (store format 2's compression) from source with node-gyp: a C++ compiler, make and python3.
PKGS+=(g++ make python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# ---- CRIU >= 4.2 -----------------------------------------------------------
# Debian 12's criu 3.17 cannot dump on kernels with [vvar_vclock], and
# Debian 13's 4.1.1 cannot dump a process with any inet socket (a TCP
# connection, a listener) on Linux >= 6.16, which refuses SO_PASSCRED on
# them (fixed in CRIU 4.2: "Restrict SO_PASSCRED and SO_PASSSEC to
# supported families"). So ARCH takes Debian's newest criu (the testing
# suite, forky: 4.2.1 when this was written) and the libraries it needs
# into a private directory, and runs it through that directory's own
# loader: the system's libc and packages stay as they are. ARCH_CRIU in
# /etc/arch/arch.env can name another CRIU >= 4.2.
criu_version() { "$1" --version 2>/dev/null | sed -n 's/^Version: \([0-9.]*\).*/\1/p'; }
criu_at_least_4_2() {
  local v; v="$(criu_version "$1")"
  [ -n "$v" ] && [ "$(printf '%s\n4.2\n' "$v" | sort -V | head -n1)" = 4.2 ]
}
CRIU_DIR="$ARCH_PREFIX/criu"
if ! criu_at_least_4_2 "$CRIU_DIR/bin/criu"; then
  CRIU_SUITE=forky
  say "fetching Debian $CRIU_SUITE's criu into $CRIU_DIR (system libc untouched)"
  APT_PRIV="$ARCH_PREFIX/apt-criu"
  rm -rf "$APT_PRIV" "$ARCH_PREFIX/apt-trixie"
  mkdir -p "$APT_PRIV/lists/partial" "$APT_PRIV/cache/archives/partial" "$APT_PRIV/debs"
  # Same mirror as the configured Debian suite, read from apt's own config.
  MIRROR="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -E '^(URIs:|deb )' | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n1 | sed 's:/*$::' || true)"
  [ -n "$MIRROR" ] || die "cannot find the Debian mirror in /etc/apt (needed to fetch Debian's criu)"
  cat > "$APT_PRIV/criu.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $CRIU_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_PRIV/criu.sources" -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$APT_PRIV/lists" -o "Dir::Cache=$APT_PRIV/cache" -o "Dir::State::status=$APT_PRIV/status"
    -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  : > "$APT_PRIV/status"
  apt-get "${APT_OPTS[@]}" update -qq
  # criu and everything it loads, whatever that suite's versions depend on today (no list to go stale).
  mapfile -t DEBS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -E '^[a-z0-9]' | sort -u)
  [ "${#DEBS[@]}" -gt 1 ] || die "Debian $CRIU_SUITE has no criu package"
  (cd "$APT_PRIV/debs" && apt-get "${APT_OPTS[@]}" download "${DEBS[@]}" >/dev/null 2>&1) \
    || (cd "$APT_PRIV/debs" && for d in "${DEBS[@]}"; do apt-get "${APT_OPTS[@]}" download "$d" >/dev/null 2>&1 || true; done)
  rm -rf "$CRIU_DIR.new" && mkdir -p "$CRIU_DIR.new/bin"
  for d in "$APT_PRIV"/debs/*.deb; do dpkg-deb -x "$d" "$CRIU_DIR.new/root"; done
  cat > "$CRIU_DIR.new/bin/criu" <<WRAP
#!/bin/sh
# Debian $CRIU_SUITE's criu, run by its own loader and libraries (installed by ARCH).
R=$CRIU_DIR/root
exec "\$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu" "\$R/usr/sbin/criu" "\$@"
WRAP
  chmod 755 "$CRIU_DIR.new/bin/criu"
  # The wrapper names $CRIU_DIR: moved into place first, then checked there.
  rm -rf "$CRIU_DIR.old" && { [ ! -e "$CRIU_DIR" ] || mv "$CRIU_DIR" "$CRIU_DIR.old"; }
  mv "$CRIU_DIR.new" "$CRIU_DIR"
  if criu_at_least_4_2 "$CRIU_DIR/bin/criu"; then
    rm -rf "$CRIU_DIR.old" "$APT_PRIV/debs"
  else
    rm -rf "$CRIU_DIR" && { [ ! -e "$CRIU_DIR.old" ] || mv "$CRIU_DIR.old" "$CRIU_DIR"; }
    die "Debian $CRIU_SUITE's criu does not run here (or is older than 4.2): $("$CRIU_DIR/bin/criu" --version 2>&1 | head -n3 || true)"
  fi
fi
CRIU_BIN="$CRIU_DIR/bin/criu"
say "criu: $("$CRIU_BIN" --version | head -n1) at $CRIU_BIN"

# ---- Go (for the Temporal CLI) and the Temporal CLI -------------------------
GO=""
for g in /usr/local/go/bin/go "$(command -v go || true)"; do [ -n "$g" ] && [ -x "$g" ] && { GO="$g"; break; }; done
# go-installed builds report version 0.0.0-DEV: a stamp file records which one we built.
if [ ! -x "$ARCH_PREFIX/bin/temporal" ] || [ "$(cat "$ARCH_PREFIX/bin/.temporal-version" 2>/dev/null)" != "$TEMPORAL_CLI_VERSION" ]; then
  if [ -z "$GO" ]; then
    say "installing golang-go (needed to build the Temporal CLI)"
    apt-get install -y -qq --no-install-recommends golang-go >/dev/null
    GO="$(command -v go)"
  fi
  say "building the Temporal CLI $TEMPORAL_CLI_VERSION with $("$GO" version) (module cache makes reruns fast)"
  GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOBIN="$ARCH_PREFIX/bin" GOFLAGS=-mod=mod "$GO" install "github.com/temporalio/cli/cmd/temporal@$TEMPORAL_CLI_VERSION"
  echo "$TEMPORAL_CLI_VERSION" > "$ARCH_PREFIX/bin/.temporal-version"
fi
say "temporal: $("$ARCH_PREFIX/bin/temporal" --version)"

# ---- npm dependencies and build --------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing Node.js and npm (Debian packages)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || die "Node.js 20 or newer is required (found $(node --version))"
cd "$ARCH_HOME"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
say "building"
npm run --silent build

# ---- PATH and configuration ------------------------------------------------
for b in arch-runc arch-cli arch-worker; do ln -sfn "$ARCH_HOME/bin/$b" "/usr/local/bin/$b"; done
ln -sfn "$ARCH_PREFIX/bin/temporal" /usr/local/bin/arch-temporal
if [ ! -f "$CONF_DIR/arch.env" ]; then
  say "writing $CONF_DIR/arch.env"
  cat > "$CONF_DIR/arch.env" <<CONF
# ARCH node settings (shell syntax, read by arch-runc, arch-cli, arch-worker).
# Environment variables of the same name override these.
ARCH_HOME=$ARCH_HOME
ARCH_RUNC=$(command -v runc)
ARCH_CRIU=$CRIU_BIN
ARCH_TEMPORAL_CLI=$ARCH_PREFIX/bin/temporal
ARCH_LOG_FILE=/var/log/arch/arch.log
CONF
else
  # Keep the user's settings; only move ARCH_HOME to this checkout, and move
  # ARCH_CRIU on from a CRIU older than 4.2 (an earlier install's, Debian 13's
  # own 4.1.1) to the one installed above.
  sed -i "s:^ARCH_HOME=.*:ARCH_HOME=$ARCH_HOME:" "$CONF_DIR/arch.env"
  OLD_CRIU="$(sed -n 's/^ARCH_CRIU=//p' "$CONF_DIR/arch.env" | tail -n1)"
  if [ -n "$OLD_CRIU" ] && [ "$OLD_CRIU" != "$CRIU_BIN" ] && ! criu_at_least_4_2 "$OLD_CRIU"; then
    say "ARCH_CRIU in $CONF_DIR/arch.env: $OLD_CRIU ($(criu_version "$OLD_CRIU" || true)) -> $CRIU_BIN"
    sed -i "s:^ARCH_CRIU=.*:ARCH_CRIU=$CRIU_BIN:" "$CONF_DIR/arch.env"
  fi
fi
mkdir -p /var/log/arch /var/lib/arch
# This node's checkpoint signing key (Ed25519): restores accept only manifests
# signed by a trusted key. Made once, never replaced (checkpoints signed with
# it would stop restoring); node.pub is what other nodes list in
# ARCH_TRUSTED_KEYS.
KEY_DIR=$CONF_DIR/keys
mkdir -p "$KEY_DIR"
[ -f "$KEY_DIR/node.key" ] || say "creating this node's signing key $KEY_DIR/node.key (public part: node.pub)"
(umask 077; node -e '
  const c = require("node:crypto"), fs = require("node:fs"), dir = process.argv[1];
  const key = dir + "/node.key", pub = dir + "/node.pub";
  if (!fs.existsSync(key)) {
    fs.writeFileSync(key + ".tmp", c.generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    fs.renameSync(key + ".tmp", key);
  }
  fs.chmodSync(key, 0o600);
  if (!fs.existsSync(pub)) fs.writeFileSync(pub, c.createPublicKey(fs.readFileSync(key)).export({ type: "spki", format: "pem" }));
  fs.chmodSync(pub, 0o644);
' "$KEY_DIR") || die "could not create the signing key in $KEY_DIR"
# The cluster's Temporal payload key (AES-256): container environments and
# transfer tokens reach Temporal only encrypted with it. ONE key per cluster:
# copy this file from the first node to every node and CLI host before
# running install.sh there (an existing key is kept, never replaced).
PAYLOAD_KEY=$CONF_DIR/keys/payload.key
mkdir -p "$CONF_DIR/keys" && chmod 700 "$CONF_DIR/keys"
if [ ! -s "$PAYLOAD_KEY" ]; then
  say "creating the cluster's payload key $PAYLOAD_KEY: copy it to every other node and CLI host (same path, mode 0600)"
  (umask 077; openssl rand -hex 32 > "$PAYLOAD_KEY.tmp" && mv "$PAYLOAD_KEY.tmp" "$PAYLOAD_KEY") || die "could not create $PAYLOAD_KEY"
fi
chmod 600 "$PAYLOAD_KEY"
# Hardware breakpoints do not fire in some VMs: CRIU then hangs in dump unless
# told to use its ptrace fallback. Probe once and record the answer.
"$ARCH_HOME/bin/arch-cli" doctor --write-config >/dev/null || true
"$ARCH_HOME/bin/arch-cli" doctor || say "doctor reported problems (see above)"
say "done: arch-runc, arch-cli, arch-worker are on PATH"
