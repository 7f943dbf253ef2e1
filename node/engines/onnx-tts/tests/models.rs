//! The engine on the installed models (`tolk-node models install kokoro
//! piper-en-us-joe onnxruntime`, run by scripts/setup.sh): Kokoro speaks
//! Mandarin (own G2P) and Spanish (eSpeak NG IPA) at 24 kHz, piper English at
//! its voice's 22.05 kHz. That the speech is intelligible is checked end to
//! end (tests/: whisper transcribes it back).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::PathBuf;

use tolk_engine_onnx_tts::OnnxTts;
use tolk_engine_sdk::{Options, Tts};

fn models() -> PathBuf {
    std::env::var_os("TOLK_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("tolk/models")
    })
}

fn file(id: &str, name: &str) -> String {
    let p = models().join(id).join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh (tolk-node models install {id})", p.display());
    p.display().to_string()
}

fn engine(pairs: &[(&str, String)]) -> OnnxTts {
    let mut all = vec![("onnxruntime".to_owned(), file("onnxruntime", "libonnxruntime.so.1.31.1"))];
    all.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    OnnxTts::create(&Options::from_pairs(all)).unwrap()
}

fn rms(s: &[i16]) -> f64 {
    (s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
}

#[test]
fn kokoro_speaks_mandarin_and_spanish_at_24_khz() {
    let mut k = engine(&[
        ("model", file("kokoro", "kokoro-v1.0.int8.onnx")),
        ("vocab", file("kokoro", "vocab.json")),
        ("voices", file("kokoro", "voices.npz")),
    ]);
    for (text, lang) in [("今天天气很好。", "zh"), ("¿Dónde está la estación de tren?", "es")] {
        let s = k.synthesize(text, lang).unwrap();
        let secs = s.samples.len() as f64 / f64::from(s.sample_rate);
        assert_eq!(s.sample_rate, 24_000);
        assert!((1.0..6.0).contains(&secs) && rms(&s.samples) > 300.0, "{text}: {secs:.2} s, rms {}", rms(&s.samples));
    }
    assert!(k.synthesize("", "zh").unwrap().samples.is_empty());
}

#[test]
fn piper_speaks_english_at_its_voices_rate() {
    let mut p = engine(&[
        ("kind", "piper".into()),
        ("model", file("piper-en-us-joe", "en_US-joe-medium.onnx")),
        ("config", file("piper-en-us-joe", "en_US-joe-medium.onnx.json")),
    ]);
    let s = p.synthesize("Where is the train station?", "en").unwrap();
    let secs = s.samples.len() as f64 / f64::from(s.sample_rate);
    assert_eq!(s.sample_rate, 22_050);
    assert!((0.8..5.0).contains(&secs) && rms(&s.samples) > 300.0, "{secs:.2} s");
}
