#!/usr/bin/env bash
# Regenerates the shipped canary speech (run from the repository root after
# scripts/setup.sh and `cargo build --release -p tolk-engine-onnx-tts --example speak`).
# English: flite's slt voice; Chinese and Spanish: Kokoro. All 16 kHz mono.
set -euo pipefail
cd "$(dirname "$0")"
for t in "the weather is nice today:en-weather" "where is the train station:en-station" "thank you very much for your help:en-thanks"; do
  flite -voice slt -t "${t%%:*}" -o "${t##*:}.wav"
done
M=$(dirname "$(cargo run --locked -q -p tolk-node -- models path kokoro)")
speak() {
  ../../target/release/examples/speak "/tmp/canary-$1" "$2" model="$M/kokoro/kokoro-v1.0.int8.onnx" vocab="$M/kokoro/vocab.json" \
    voices="$M/kokoro/voices.npz" onnxruntime="$M/onnxruntime/libonnxruntime.so.1.31.1" -- "$3" >/dev/null
  sox "/tmp/canary-$1-0.wav" -r 16000 -b 16 -c 1 "$1.wav"
}
speak zh-weather zh "今天天气很好。"
speak zh-train zh "我想买一张去北京的火车票。"
speak es-station es "¿Dónde está la estación de tren?"
speak es-coffee es "Me gusta mucho el café."
