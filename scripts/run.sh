#!/usr/bin/env bash
# Starts what Tolk has so far (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --locked -p tolk-protocol --example schema -- "$@"
