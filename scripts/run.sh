#!/usr/bin/env bash
# Starts the Tolk dispatcher on 127.0.0.1:8080 (pass --listen ADDR, --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --locked --release -p tolk-dispatcher --bin tolk-dispatcher -- "$@"
