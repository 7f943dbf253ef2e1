#!/usr/bin/env bash
# Builds tolk-ffi for iOS as an XCFramework: release static libraries for
# devices (aarch64-apple-ios) and simulators (aarch64-apple-ios-sim and
# x86_64-apple-ios, merged with lipo), wrapped with the generated C header and
# module map into OUT/TolkFFI.xcframework; the generated Swift source goes to
# OUT/TolkFFI.swift (add both to the app or to a Swift package target).
#
#   bash bindings/scripts/build-ios.sh [OUT]          # default OUT: target/ios
#
# Needs macOS with Xcode (xcodebuild, lipo) and cmake (libopus is built from
# the crate's bundled source); the Rust targets are added here.
# The static library is built with `cargo rustc --crate-type staticlib` so
# that everyday builds (and CI) do not produce a large .a they never use.
#
# Not run on the project's Linux machines: no Xcode, and no Swift compiler
# can be installed there, so the Swift sources are generated and checked for
# staleness (bindings/test-bindings.sh) but never compiled here.
set -euo pipefail
# libopus (Opus on the wire): the `opus` crate's audiopus_sys builds its
# bundled copy with cmake and links it statically; never a host library.
export LIBOPUS_NO_PKG=1 LIBOPUS_STATIC=1
cd "$(dirname "$0")/../.."
OUT="${1:-target/ios}"
DEVICE=aarch64-apple-ios
SIMULATORS=(aarch64-apple-ios-sim x86_64-apple-ios)

for tool in xcodebuild lipo; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool is missing: this script needs macOS with Xcode" >&2
    exit 1
  fi
done
rustup target add "$DEVICE" "${SIMULATORS[@]}"
for target in "$DEVICE" "${SIMULATORS[@]}"; do
  cargo rustc --locked --release -p tolk-ffi --lib --crate-type staticlib --target "$target"
done
rm -rf "$OUT"
mkdir -p "$OUT/headers" "$OUT/simulator"
cp bindings/generated/swift/TolkFFIFFI.h "$OUT/headers/"
# Xcode wants the module map named module.modulemap.
cp bindings/generated/swift/TolkFFIFFI.modulemap "$OUT/headers/module.modulemap"
lipo -create "target/${SIMULATORS[0]}/release/libtolk_ffi.a" "target/${SIMULATORS[1]}/release/libtolk_ffi.a" \
  -output "$OUT/simulator/libtolk_ffi.a"
xcodebuild -create-xcframework \
  -library "target/$DEVICE/release/libtolk_ffi.a" -headers "$OUT/headers" \
  -library "$OUT/simulator/libtolk_ffi.a" -headers "$OUT/headers" \
  -output "$OUT/TolkFFI.xcframework"
cp bindings/generated/swift/TolkFFI.swift "$OUT/"
echo "ios: $OUT/TolkFFI.xcframework and $OUT/TolkFFI.swift (import TolkFFI's types from that file)"
