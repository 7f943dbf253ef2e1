//! Reading a 43 kB utterance (1.3 s of 16 kHz pcm16 in base64) and a node's
//! result with 64 kB of speech: with the bulk field lifted out
//! (`Message::parse`) against the full reader on the same text, side by
//! side in one run. `cargo bench -p tolk-protocol --bench parse`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use criterion::{Criterion, criterion_group, criterion_main};
use tolk_protocol::{ClientToServer, Message, NodeToServer};

fn bench(c: &mut Criterion) {
    let audio = "QUJD".repeat(43_000 / 4);
    let utterance = format!(
        r#"{{"type":"utterance","session_id":"s-0123456789abcdef0123456789abcdef","utterance_index":3,"manual_cut":false,"src_lang":"en","tgt_lang":"es","dialect":null,"features":null,"audio":"{audio}","audio_format":"pcm16","sample_rate":16000}}"#
    );
    let speech = "AAAA".repeat(64_000 / 4);
    let result = format!(
        r#"{{"type":"job_result","job_id":"j-0123456789abcdef0123456789abcdef","node_id":"n-0123456789abcdef0123456789abcdef","session_id":"s-0123456789abcdef0123456789abcdef","utterance_index":3,"success":true,"text_asr":"the weather is nice today","text_translated":"el tiempo es bueno hoy","tts_audio":"{speech}","tts_format":"pcm16","tts_sample_rate":22050,"processing_time_ms":812}}"#
    );
    assert_eq!(ClientToServer::parse(&utterance).unwrap(), ClientToServer::deserialize_typed("utterance", &utterance).unwrap());
    let mut g = c.benchmark_group("parse");
    g.bench_function("utterance 43 kB/lifted", |b| b.iter(|| ClientToServer::parse(&utterance).unwrap()));
    let shared = bytes::Bytes::from(utterance.clone());
    let view = std::str::from_utf8(&shared).unwrap();
    g.bench_function("utterance 43 kB/lifted, shared", |b| b.iter(|| ClientToServer::parse_shared(view, &shared).unwrap()));
    g.bench_function("utterance 43 kB/full reader", |b| b.iter(|| ClientToServer::deserialize_typed("utterance", &utterance).unwrap()));
    g.bench_function("job_result 64 kB/lifted", |b| b.iter(|| NodeToServer::parse(&result).unwrap()));
    g.bench_function("job_result 64 kB/full reader", |b| b.iter(|| NodeToServer::deserialize_typed("job_result", &result).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
