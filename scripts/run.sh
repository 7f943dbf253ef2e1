#!/usr/bin/env bash
# Starts a complete local Tolk: the dispatcher (with the shipped Wasm
# plugins) and a local node with the neural engines on the installed models
# (node/tolk-node.neural.toml): whisper base ASR (zh en es de fr ja) and
# speech translation to English, Apertium en<->es, piper (en) and Kokoro
# (es, zh) TTS, eSpeak NG for fr/de, PocketSphinx and flite as light English
# fallbacks. Ctrl-C stops both.
#
#   TOLK_LISTEN=127.0.0.1:8080   where the dispatcher listens
#   TOLK_PROFILE=release         cargo profile (release or dev)
#   TOLK_NODE_CONFIG=FILE        another node configuration (e.g. node/tolk-node.example.toml
#                                for the light engines only; `../target/release/` is rewritten)
#   TOLK_MODELS_DIR=DIR          the models folder (default ~/.cache/tolk/models)
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
  -p tolk-engine-pocketsphinx -p tolk-engine-apertium -p tolk-engine-flite -p tolk-engine-espeak \
  -p tolk-engine-whisper -p tolk-engine-onnx-tts
cargo run --locked -q -p tolk-plugin-build >/dev/null   # shipped plugins -> target/plugins/
MODELS=$(cargo run --locked -q -p tolk-node -- models path whisper-base)
MODELS=$(dirname "$MODELS")

STATE=target/tolk-local
mkdir -p "$STATE"
# The node config, with engine and model paths pointing at this build and the models folder.
sed -e "s#\.\./target/release/#$PWD/$OUT/#" -e "s#@LIB@#$PWD/$OUT#g" -e "s#@MODELS@#$MODELS#g" \
  "${TOLK_NODE_CONFIG:-node/tolk-node.neural.toml}" > "$STATE/tolk-node.toml"

# Whisper on a CPU takes seconds per utterance (two passes for X -> en): give
# jobs more time than the dispatcher's defaults (15 s + 2 s per second of audio).
cat > "$STATE/dispatcher.toml" <<'TOML'
[core]
job_timeout_base_ms = 60000
job_timeout_per_audio_s_ms = 5000
admission_wait_ms = 30000
TOML

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
  "$OUT/tolk-dispatcher" --listen "$LISTEN" --config "$STATE/dispatcher.toml" &
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
  sessions:  ws://$LISTEN/ws/session   (zh/es/de/fr/ja -> en, en <-> es, ...)
  nodes:     ws://$LISTEN/ws/node      (one local node with the neural engines)
  metrics:   http://$LISTEN/metrics
  web app:   http://$LISTEN/app/            (allow the microphone; pick the languages the node serves)
  dashboard: http://$LISTEN/dashboard#token=$ADMIN_TOKEN
  try:       ./scripts/translate.sh --src zh --tgt en
Ctrl-C stops it.
MSG
wait -n "${pids[@]}"
