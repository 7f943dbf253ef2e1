// Runs the web client's chunker (tolk_client.wasm) over PCM16 the way a test
// plans it, and prints the utterances as JSON: tests/tests/web_chunker.rs
// compares them with the Rust chunker's on the same input.
//
//   node chunker.mjs WASM PCM PLAN
//   node chunker.mjs WASM --sources    (prints the hash of its sources)
// PCM: raw little-endian 16-bit mono samples at 16 kHz. PLAN: a JSON array
// of {"push": samples} | {"cut": true} | {"flush": true}, in order.
import { readFileSync } from 'node:fs';

const [wasmPath, pcmPath, planPath] = process.argv.slice(2);
const { instance } = await WebAssembly.instantiate(readFileSync(wasmPath), {});
const x = instance.exports;
const read = (len) => (len ? JSON.parse(new TextDecoder().decode(new Uint8Array(x.memory.buffer, x.tolk_out_ptr(), len))) : []);
if (pcmPath === '--sources') {
  // The hash of the sources the module was built from (its build.rs).
  process.stdout.write(JSON.stringify(read(x.tolk_sources())));
  process.exit(0);
}
const pcm = readFileSync(pcmPath);
const plan = JSON.parse(readFileSync(planPath, 'utf8'));
const h = x.tolk_chunker_new(16000);
if (h < 0) throw new Error('chunker refused 16 kHz');
const out = [];
let at = 0; // bytes consumed
for (const op of plan) {
  if (op.push !== undefined) {
    const bytes = pcm.subarray(at, at + op.push * 2);
    at += bytes.length;
    const ptr = x.tolk_in_buf(bytes.length);
    new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
    out.push(...read(x.tolk_chunker_op(h, 0, bytes.length / 2)));
  } else if (op.cut) {
    out.push(...read(x.tolk_chunker_op(h, 1, 0)));
  } else if (op.flush) {
    out.push(...read(x.tolk_chunker_op(h, 2, 0)));
  }
}
x.tolk_drop(h);
process.stdout.write(JSON.stringify(out));
