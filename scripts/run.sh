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
#
#   ./scripts/run.sh --cluster N  a cluster instead: nats-server (JetStream) and N
#                                dispatchers on consecutive ports from TOLK_LISTEN's,
#                                the node on the last one (so a session on the first
#                                is served through the cluster); TOLK_NATS_PORT=4222
set -euo pipefail
CLUSTER=0
if [ "${1:-}" = "--cluster" ]; then
  CLUSTER=${2:?--cluster needs the number of dispatchers}
  [ "$CLUSTER" -ge 1 ] 2>/dev/null || { echo "--cluster N: N must be a positive number" >&2; exit 2; }
fi
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
host=${LISTEN%:*}; port=${LISTEN##*:}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
}
# The web client's language pickers offer what the connected nodes serve.
start_dispatcher() { # PORT CONFIG
  TOLK_PLUGIN_DIR="$PWD/target/plugins" TOLK_SCHEDULER=least-loaded \
    TOLK_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$OUT/tolk-dispatcher" --listen "$host:$1" --config "$2" &
  pids+=($!)
  wait_port "$host" "$1"
}
NODE_PORT=$port
if [ "$CLUSTER" -gt 0 ]; then
  NATS_PORT=${TOLK_NATS_PORT:-4222}
  mkdir -p "$STATE/nats"
  # Forwarded jobs and stored outcomes carry speech: 8 MB messages.
  printf 'listen: 127.0.0.1:%s\nmax_payload: 8MB\njetstream { store_dir: "%s" }\n' "$NATS_PORT" "$PWD/$STATE/nats" > "$STATE/nats.conf"
  "$HOME/.cache/tolk/nats-2.15.1/nats-server" -c "$STATE/nats.conf" >"$STATE/nats.log" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$NATS_PORT"
  # Kept across runs, so the node's identity (and trust) survives a restart.
  [ -s "$STATE/cluster-secret" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$STATE/cluster-secret"
  SECRET=$(cat "$STATE/cluster-secret")
  for i in $(seq 1 "$CLUSTER"); do
    { cat "$STATE/dispatcher.toml"; printf '\n[cluster]\nnats_url = "nats://127.0.0.1:%s"\nname = "d%s"\nsecret = "%s"\n' "$NATS_PORT" "$i" "$SECRET"; } \
      > "$STATE/dispatcher-$i.toml"
    start_dispatcher $((port + i - 1)) "$STATE/dispatcher-$i.toml"
  done
  NODE_PORT=$((port + CLUSTER - 1))
else
  start_dispatcher "$port" "$STATE/dispatcher.toml"
fi

"$OUT/tolk-node" --dispatcher "ws://$host:$NODE_PORT" --config "$STATE/tolk-node.toml" --state-dir "$STATE/node" &
pids+=($!)

if [ "$CLUSTER" -gt 0 ]; then
  echo
  echo "A cluster of $CLUSTER dispatchers over NATS (nats://127.0.0.1:$NATS_PORT, JetStream in $STATE/nats):"
  for i in $(seq 1 "$CLUSTER"); do
    echo "  d$i: ws://$host:$((port + i - 1))/ws/session   dashboard http://$host:$((port + i - 1))/dashboard#token=$ADMIN_TOKEN"
  done
  echo "  the node is on d$CLUSTER; a session on any dispatcher is served by it."
fi
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
