#!/usr/bin/env bash
# Starts a complete local Tolk: the dispatcher (with the shipped Wasm
# plugins) and a local node with the shipped engines (pocketsphinx ASR for
# English, Apertium en<->es, flite and espeak-ng TTS). Ctrl-C stops both.
#
#   TOLK_LISTEN=127.0.0.1:8080   where the dispatcher listens
#   TOLK_PROFILE=release         cargo profile (release or dev)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

LISTEN=${TOLK_LISTEN:-127.0.0.1:8080}
PROFILE=${TOLK_PROFILE:-release}
case "$PROFILE" in
  release) OUT=target/release ;;
  dev) OUT=target/debug ;;
  *) echo "TOLK_PROFILE must be release or dev" >&2; exit 2 ;;
esac

echo "run: building (the first build takes several minutes)..."
cargo build --locked --profile "$PROFILE" -p tolk-dispatcher -p tolk-node \
  -p tolk-engine-pocketsphinx -p tolk-engine-apertium -p tolk-engine-flite -p tolk-engine-espeak
cargo run --locked -q -p tolk-plugin-build >/dev/null   # shipped plugins -> target/plugins/

STATE=target/tolk-local
mkdir -p "$STATE"
# The example node config, with engine paths pointing at this build.
sed "s#\.\./target/release/#$PWD/$OUT/#" node/tolk-node.example.toml > "$STATE/tolk-node.toml"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# The dashboard needs an admin token: a fresh one per run unless one is given.
ADMIN_TOKEN=${TOLK_ADMIN_TOKEN:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')}
# The web client's language pickers offer what the connected nodes serve.
TOLK_PLUGIN_DIR="$PWD/target/plugins" TOLK_SCHEDULER=least-loaded \
  TOLK_ADMIN_TOKEN="$ADMIN_TOKEN" \
  "$OUT/tolk-dispatcher" --listen "$LISTEN" &
pids+=($!)

host=${LISTEN%:*}; port=${LISTEN##*:}
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && break
  sleep 0.1
done

"$OUT/tolk-node" --dispatcher "ws://$LISTEN" --config "$STATE/tolk-node.toml" --state-dir "$STATE/node" &
pids+=($!)

cat <<MSG

Tolk is running.
  sessions:  ws://$LISTEN/ws/session   (languages: en -> es, es -> en)
  nodes:     ws://$LISTEN/ws/node      (one local node with the shipped engines)
  metrics:   http://$LISTEN/metrics
  web app:   http://$LISTEN/app/            (allow the microphone; speak English, hear Spanish)
  dashboard: http://$LISTEN/dashboard#token=$ADMIN_TOKEN
Ctrl-C stops it.
MSG
wait -n "${pids[@]}"
