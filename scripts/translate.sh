#!/usr/bin/env bash
# Sends a WAV file through the SDK to a running Tolk (./scripts/run.sh),
# prints what was recognised and its translation, and writes the translated
# speech to target/translation/utterance-N.wav.
#
#   ./scripts/translate.sh [FILE.wav]     default: an English sample made with flite
#   TOLK_LISTEN=127.0.0.1:8080  TOLK_SRC=en  TOLK_TGT=es
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN=${TOLK_LISTEN:-127.0.0.1:8080}
SRC=${TOLK_SRC:-en}
TGT=${TOLK_TGT:-es}
OUT=target/translation
WAV=${1:-}
if [ -z "$WAV" ]; then
  mkdir -p target
  WAV=target/sample-en.wav
  # The sample is generated, not downloaded: flite speaks two sentences.
  flite -voice slt -t "The weather is nice today. Please send me the report before the meeting." -o "$WAV"
  echo "translate: sample speech written to $WAV"
fi
rm -rf "$OUT"
exec cargo run --locked --release -q -p tolk-sdk --example stream_wav -- \
  --url "ws://$LISTEN/ws/session" --src "$SRC" --tgt "$TGT" --speed 2 --out "$OUT" "$WAV"
