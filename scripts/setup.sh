#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Tolk. Idempotent: a
# second run installs nothing. Needs root (or sudo) for Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use (real audio from espeak-ng, measured with sox).
APT_PACKAGES=(espeak-ng sox)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rust-toolchain.toml pins the toolchain and lists the wasm target; this makes
# rustup install both now rather than on the first cargo call.
rustup show active-toolchain >/dev/null
