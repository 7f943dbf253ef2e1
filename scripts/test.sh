#!/usr/bin/env bash
# Runs every test of the workspace, as CI does. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked
# The generated Kotlin/Python bindings over the real library (see bindings/test-bindings.sh).
bash bindings/test-bindings.sh
