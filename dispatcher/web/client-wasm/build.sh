#!/usr/bin/env bash
# Rebuilds dispatcher/web/static/tolk_client.wasm from the SDK's chunker and
# session (this crate). Run it after changing sdk/src/chunker.rs or
# sdk/src/session.rs; tests/tests/web_chunker.rs fails until you do.
#
# Needs clang (it compiles webrtc-vad's C code for wasm32). The target has
# no libc: libc-shim/ holds the three headers libfvad includes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
export CC_wasm32_unknown_unknown=${CC_wasm32_unknown_unknown:-clang}
export CFLAGS_wasm32_unknown_unknown="-I$here/libc-shim -O2"
cd "$root"
# Small rather than fast (the C VAD is -O2 either way): a quarter less to
# download. These settings apply to this build only, not the workspace's.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_STRIP=symbols \
  CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
cargo build --locked --release -p tolk-web-wasm --target wasm32-unknown-unknown
cp target/wasm32-unknown-unknown/release/tolk_web_wasm.wasm dispatcher/web/static/tolk_client.wasm
ls -l dispatcher/web/static/tolk_client.wasm
