#!/usr/bin/env bash
# Builds tolk-ffi for Android with cargo-ndk: release `libtolk_ffi.so` for
# arm64-v8a, armeabi-v7a and x86_64 (API 24+) under OUT/jniLibs/<abi>/, and
# copies the generated Kotlin under OUT/kotlin/.
#
#   bash bindings/scripts/build-android.sh [OUT]      # default OUT: target/android
#
# Needs: the Android NDK (ANDROID_NDK_HOME, r26 or newer), cmake, `cargo install
# cargo-ndk`; the Rust targets are added here. In the app: add OUT/jniLibs to
# `jniLibs.srcDirs` and OUT/kotlin to the Kotlin sources, and depend on JNA's
# Android build (`net.java.dev.jna:jna:5.13.0@aar`) — the generated Kotlin
# loads the library through JNA (library name `tolk_ffi`).
#
# Not run on the project's Linux machines: they have no NDK (and no Maven
# Central for the JNA aar). The same sources are compiled and run on the JVM by
# bindings/test-bindings.sh, against the host build of the same crate.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-target/android}"
ABIS=(arm64-v8a armeabi-v7a x86_64)
TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)

if ! command -v cargo-ndk >/dev/null; then
  echo "cargo-ndk is missing: cargo install cargo-ndk" >&2
  exit 1
fi
if [ -z "${ANDROID_NDK_HOME:-}" ] || [ ! -d "$ANDROID_NDK_HOME" ]; then
  echo "ANDROID_NDK_HOME must point at an Android NDK" >&2
  exit 1
fi
rustup target add "${TARGETS[@]}"
# libopus (Opus on the wire): the `opus` crate's audiopus_sys builds its
# bundled copy with cmake and links it statically; never a host library.
export LIBOPUS_NO_PKG=1 LIBOPUS_STATIC=1
ndk_args=()
for abi in "${ABIS[@]}"; do ndk_args+=(-t "$abi"); done
cargo ndk "${ndk_args[@]}" --platform 24 -o "$OUT/jniLibs" build --locked --release -p tolk-ffi
rm -rf "$OUT/kotlin"
mkdir -p "$OUT/kotlin"
cp -r bindings/generated/kotlin/. "$OUT/kotlin/"
echo "android: $(find "$OUT/jniLibs" -name '*.so' | sort | tr '\n' ' ')"
echo "android: Kotlin sources in $OUT/kotlin (package dev.tolk.sdk)"
