#!/usr/bin/env bash
# Regenerates the Kotlin, Swift and Python sources of tolk-ffi from the built
# library (uniffi reads the interface from the library's metadata):
#
#   bash bindings/generate.sh            # into bindings/generated (check them in)
#   bash bindings/generate.sh DIR        # elsewhere (the staleness test does this)
#
# Builds tolk-ffi and uniffi-bindgen (debug) first. Generator settings (the
# Kotlin package, the Swift module name) are in bindings/ffi/uniffi.toml, found
# through `cargo metadata`. Sources are not run
# through ktlint/swiftformat/black (--no-format): the output depends only on
# uniffi's version and tolk-ffi's interface.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bindings/generated}"
cargo build --locked -q -p tolk-ffi -p uniffi-bindgen
rm -rf "$OUT"
for lang in kotlin swift python; do
  target/debug/uniffi-bindgen generate --no-format --library target/debug/libtolk_ffi.so \
    --language "$lang" --out-dir "$OUT/$lang" >/dev/null
done
echo "generated: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
