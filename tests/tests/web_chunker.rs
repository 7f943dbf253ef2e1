//! The web client's chunker is the SDK's: `tolk_client.wasm` (the file the
//! dispatcher serves at `/app/`) run by Node.js over the same audio, pushed in
//! the same pieces, cut at the same moments, gives exactly the utterances of
//! `tolk_sdk::Chunker` — positions, flags and samples (by hash).
//!
//! It fails when `sdk/src/chunker.rs`, `session.rs` or `error.rs` (or the
//! glue) changed and the wasm was not rebuilt: the module carries a hash of
//! the sources it was built from. Run `dispatcher/web/client-wasm/build.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::process::Command;

use serde_json::{Value, json};
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{scratch, workspace_root};
use tolk_sdk::{Chunker, ChunkerConfig, Utterance};

#[derive(Debug, Clone, Copy)]
enum Op {
    Push(usize),
    Cut,
    Flush,
}

/// As the wasm glue describes an utterance (`client-wasm/src/lib.rs`).
fn describe(u: &Utterance) -> Value {
    let fnv = u
        .samples
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, s| s.to_le_bytes().iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)));
    json!({
        "start_ms": u.start_ms, "speech_start_ms": u.speech_start_ms, "speech_end_ms": u.speech_end_ms,
        "end_ms": u.end_ms, "manual_cut": u.manual_cut, "forced": u.forced,
        "samples": u.samples.len(), "fnv": format!("{fnv:016x}"),
    })
}

fn rust(samples: &[i16], plan: &[Op]) -> Vec<Value> {
    let mut c = Chunker::new(ChunkerConfig::default()).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    for op in plan {
        match *op {
            Op::Push(n) => {
                let end = (at + n).min(samples.len());
                out.extend(c.push(&samples[at..end]));
                at = end;
            }
            Op::Cut => out.extend(c.cut()),
            Op::Flush => out.extend(c.flush()),
        }
    }
    out.iter().map(describe).collect()
}

fn wasm(dir: &std::path::Path, name: &str, samples: &[i16], plan: &[Op]) -> Vec<Value> {
    let pcm = dir.join(format!("{name}.pcm"));
    std::fs::write(&pcm, samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let plan_json: Vec<Value> = plan
        .iter()
        .map(|op| match op {
            Op::Push(n) => json!({"push": n}),
            Op::Cut => json!({"cut": true}),
            Op::Flush => json!({"flush": true}),
        })
        .collect();
    let plan_path = dir.join(format!("{name}.plan.json"));
    std::fs::write(&plan_path, serde_json::to_string(&plan_json).unwrap()).unwrap();
    let root = workspace_root();
    let out = Command::new("node")
        .arg(root.join("tests/browser/chunker.mjs"))
        .arg(root.join("dispatcher/web/static/tolk_client.wasm"))
        .arg(&pcm)
        .arg(&plan_path)
        .output()
        .expect("run node (Node.js)");
    assert!(out.status.success(), "chunker.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Pushes of uneven sizes (a browser's audio blocks are not VAD frames).
fn uneven(total: usize) -> Vec<Op> {
    let sizes = [160, 333, 1024, 7, 4096, 320, 1];
    let mut plan = Vec::new();
    let mut at = 0;
    for i in 0.. {
        if at >= total {
            break;
        }
        let n = sizes[i % sizes.len()];
        plan.push(Op::Push(n));
        at += n;
    }
    plan
}

fn check(dir: &std::path::Path, name: &str, samples: &[i16], plan: &[Op]) -> usize {
    let expected = rust(samples, plan);
    let got = wasm(dir, name, samples, plan);
    assert_eq!(got, expected, "{name}: the wasm chunker differs from the Rust one");
    println!("{name}: {} utterances, identical", expected.len());
    expected.len()
}

#[test]
fn the_wasm_chunker_cuts_exactly_as_the_rust_one() {
    let dir = scratch("web-chunker");
    let clips = speech::clips(&dir.join("speech"), &SENTENCES[..4]);
    let clean = speech::stream(&clips, 900);

    // Clean speech with pauses, uneven pushes, then the stream ends.
    let mut plan = uneven(clean.len());
    plan.push(Op::Flush);
    assert_eq!(check(&dir, "clean", &clean, &plan), 4);

    // The same speech in steady noise (a deterministic generator), with a
    // manual cut in the middle of the second sentence.
    let mut seed = 0x2545_f491_u32;
    let noisy: Vec<i16> = clean
        .iter()
        .map(|&s| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = ((seed >> 16) as i32 % 1200) - 600;
            (i32::from(s) + noise).clamp(-32768, 32767) as i16
        })
        .collect();
    let cut_at = (900 + 900) * 16 + clips[0].len() + clips[1].len() / 2;
    let mut plan = uneven(cut_at);
    plan.push(Op::Cut);
    plan.extend(uneven(noisy.len() - cut_at));
    plan.push(Op::Flush);
    check(&dir, "noisy-with-cut", &noisy, &plan);

    // Speech without pauses for longer than max_utterance_ms: forced cuts.
    let long: Vec<i16> = (0..6).flat_map(|_| clips.iter().flatten().copied()).collect();
    let mut plan = uneven(long.len());
    plan.push(Op::Flush);
    check(&dir, "forced", &long, &plan);
}

#[test]
fn the_served_wasm_is_built_from_the_current_sdk_sources() {
    let root = workspace_root();
    // As `dispatcher/web/client-wasm/build.rs` hashes them.
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for path in [
        "sdk/src/chunker.rs",
        "sdk/src/session.rs",
        "sdk/src/error.rs",
        "dispatcher/web/client-wasm/src/lib.rs",
        "dispatcher/web/client-wasm/src/codec.rs",
    ] {
        for b in std::fs::read(root.join(path)).unwrap() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let out = Command::new("node")
        .arg(root.join("tests/browser/chunker.mjs"))
        .arg(root.join("dispatcher/web/static/tolk_client.wasm"))
        .arg("--sources")
        .output()
        .expect("run node (Node.js)");
    assert!(out.status.success(), "chunker.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    let built: String = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built, format!("{h:016x}"), "tolk_client.wasm is stale: run dispatcher/web/client-wasm/build.sh");
}
