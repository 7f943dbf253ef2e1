#!/usr/bin/env bash
# Sends a WAV file through the SDK to a running Tolk (./scripts/run.sh),
# prints what was recognised and its translation, and writes the translated
# speech to target/translation/utterance-N.wav.
#
#   ./scripts/translate.sh [--src LANG] [--tgt LANG] [FILE.wav]
#     default: --src en --tgt es; without a file, a sample made here:
#     English by flite, Chinese and Spanish by Kokoro (the installed model)
#   TOLK_LISTEN=127.0.0.1:8080 (TOLK_SRC / TOLK_TGT also set the languages)
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN=${TOLK_LISTEN:-127.0.0.1:8080}
SRC=${TOLK_SRC:-en}
TGT=${TOLK_TGT:-es}
WAV=""
while [ $# -gt 0 ]; do
  case "$1" in
    --src) SRC=$2; shift 2 ;;
    --tgt) TGT=$2; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) WAV=$1; shift ;;
  esac
done
OUT=target/translation
if [ -z "$WAV" ]; then
  mkdir -p target
  case "$SRC" in
    zh*|es*)
      # Generated, not downloaded: Kokoro speaks it (Chinese through the engine's pinyin G2P).
      if [ "${SRC%%-*}" = zh ]; then TEXT="今天天气很好。我想买一张去北京的火车票。"; else TEXT="¿Dónde está la estación de tren? Me gusta mucho el café."; fi
      M=$(dirname "$(cargo run --locked -q -p tolk-node -- models path kokoro)")
      cargo run --locked --release -q -p tolk-engine-onnx-tts --example speak -- "target/sample-$SRC" "$SRC" \
        model="$M/kokoro/kokoro-v1.0.int8.onnx" vocab="$M/kokoro/vocab.json" voices="$M/kokoro/voices.npz" \
        onnxruntime="$M/onnxruntime/libonnxruntime.so.1.31.1" -- "$TEXT" >/dev/null
      # Kokoro speaks at 24 kHz; the SDK's VAD takes 8/16/32/48 kHz.
      WAV="target/sample-$SRC.wav"
      sox "target/sample-$SRC-0.wav" -r 16000 "$WAV" ;;
    *)
      WAV=target/sample-en.wav
      flite -voice slt -t "The weather is nice today. Please send me the report before the meeting." -o "$WAV" ;;
  esac
  echo "translate: sample speech written to $WAV"
fi
rm -rf "$OUT"
exec cargo run --locked --release -q -p tolk-sdk --example stream_wav -- \
  --url "ws://$LISTEN/ws/session" --src "$SRC" --tgt "$TGT" --speed 2 --out "$OUT" "$WAV"
