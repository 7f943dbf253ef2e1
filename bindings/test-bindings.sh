#!/usr/bin/env bash
# Binding tests, run by scripts/test.sh after `cargo test` (and by CI):
#
#  1. the checked-in generated sources (bindings/generated) match what the
#     current tolk-ffi generates (fails when stale: run bindings/generate.sh);
#  2. Kotlin: the generated Kotlin plus bindings/tests/kotlin, compiled with
#     kotlinc (npm `kotlin-compiler`), run on the JVM over the real
#     libtolk_ffi.so through JNA (Debian `libjna-java`);
#  3. Python: the generated module over the same library through ctypes.
#
# Both talk to a real dispatcher with a fake node (`tolk-sdk`'s `testbed`
# example) over real sockets, with real speech from espeak-ng. Swift cannot be
# compiled on Linux here; its sources are only generated and checked.
# Needs what scripts/setup.sh installs (JDK, JNA, kotlinc, espeak-ng, sox).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${TOLK_TOOLS_DIR:-$HOME/.cache/tolk-tools}"
K="$TOOLS/node_modules/kotlin-compiler"
JNA=/usr/share/java/jna.jar
WORK=target/bindings-test
CACHE=target/bindings-cache
PASSED=0
FAILED=0

step() { echo "== bindings: $*"; }
result() { # result NAME STATUS
  if [ "$2" -eq 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); echo "FAIL: $1"; fi
}

for tool in "$K/bin/kotlinc-jvm" "$JNA" "$(command -v java || true)" "$(command -v espeak-ng || true)" "$(command -v sox || true)"; do
  if [ -z "$tool" ] || [ ! -e "$tool" ]; then
    echo "bindings: a tool is missing (${tool:-java/espeak-ng/sox}); run scripts/setup.sh" >&2
    exit 1
  fi
done
rm -rf "$WORK"
mkdir -p "$WORK" "$CACHE"

step "build tolk-ffi, uniffi-bindgen, the testbed"
cargo build --locked -q -p tolk-ffi -p uniffi-bindgen -p tolk-sdk --example testbed
LIB="$PWD/target/debug/libtolk_ffi.so"

step "generated sources are up to date"
bash bindings/generate.sh "$WORK/generated" >/dev/null
status=0
diff -r bindings/generated "$WORK/generated" >"$WORK/stale.diff" || status=$?
if [ "$status" -ne 0 ]; then
  echo "bindings/generated is stale: run 'bash bindings/generate.sh' and check in the result. First differences:"
  head -40 "$WORK/stale.diff"
fi
result "generated sources are up to date" "$status"

step "speech from espeak-ng: three sentences, 1 s of silence around each"
SENTENCES=("The quick brown fox jumps over the lazy dog." "Where is the nearest train station?" "Thank you very much for your help today.")
SPEECH="$WORK/speech.raw"
head -c 32000 /dev/zero >"$SPEECH"
for i in "${!SENTENCES[@]}"; do
  espeak-ng -w "$WORK/s$i.wav" "${SENTENCES[$i]}"
  sox "$WORK/s$i.wav" -r 16000 -b 16 -c 1 -e signed-integer -t raw "$WORK/s$i.raw"
  cat "$WORK/s$i.raw" >>"$SPEECH"
  head -c 32000 /dev/zero >>"$SPEECH"
done

step "start the testbed (dispatcher + fake node)"
target/debug/examples/testbed --lifetime 300 >"$WORK/testbed.out" 2>"$WORK/testbed.err" &
TESTBED=$!
trap 'kill "$TESTBED" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '^TOLK_URL=' "$WORK/testbed.out" && break
  sleep 0.1
done
TOLK_URL="$(sed -n 's/^TOLK_URL=//p' "$WORK/testbed.out")"
if [ -z "$TOLK_URL" ]; then
  echo "the testbed did not start:"; cat "$WORK/testbed.err"; exit 1
fi
export TOLK_URL

step "kotlin: compile (kotlinc $(cat "$K/build.txt" 2>/dev/null || echo '?'))"
KT_SOURCES=(bindings/generated/kotlin/dev/tolk/sdk/tolk_ffi.kt bindings/tests/kotlin/BindingTest.kt)
KEY="$(cat "${KT_SOURCES[@]}" "$K/build.txt" | sha256sum | cut -c1-16)"
JAR="$CACHE/kotlin-test-$KEY.jar"
if [ ! -f "$JAR" ]; then
  rm -f "$CACHE"/kotlin-test-*.jar
  start=$(date +%s)
  "$K/bin/kotlinc-jvm" -nowarn -cp "$JNA" "${KT_SOURCES[@]}" -d "$JAR.tmp.jar"
  mv "$JAR.tmp.jar" "$JAR"
  echo "   compiled in $(($(date +%s) - start)) s"
else
  echo "   unchanged: cached $JAR"
fi
step "kotlin: run"
status=0
RUST_BACKTRACE=0 java -Djna.library.path="$(dirname "$LIB")" -cp "$JAR:$JNA:$K/lib/kotlin-stdlib.jar" BindingTestKt "$SPEECH" "${#SENTENCES[@]}" || status=$?
result "kotlin binding tests" "$status"

step "python: run"
mkdir -p "$WORK/python"
cp bindings/generated/python/tolk_ffi.py "$LIB" "$WORK/python/"
status=0
RUST_BACKTRACE=0 PYTHONPATH="$WORK/python" python3 bindings/tests/python/test_bindings.py "$SPEECH" "${#SENTENCES[@]}" || status=$?
result "python binding tests" "$status"

echo "bindings: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
