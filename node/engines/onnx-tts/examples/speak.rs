//! `cargo run -p tolk-engine-onnx-tts --example speak -- OUT_PREFIX LANG key=value... -- SENTENCE...`:
//! writes OUT_PREFIX-N.wav per sentence and prints the real-time factor
//! (synthesis time / speech duration) and the phonemes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool: fail loudly

use tolk_engine_sdk::{Options, Tts};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").expect("-- before the sentences");
    let (head, sentences) = (&args[..split], &args[split + 1..]);
    let [prefix, lang, options @ ..] = head else { panic!("usage: speak OUT_PREFIX LANG key=value... -- SENTENCE...") };
    let pairs = options.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned()));
    let options = Options::from_pairs(pairs);
    let mut tts = tolk_engine_onnx_tts::OnnxTts::create(&options).unwrap();
    for (i, s) in sentences.iter().enumerate() {
        let start = std::time::Instant::now();
        let speech = tts.synthesize(s, lang).unwrap();
        let took = start.elapsed().as_secs_f64();
        let secs = speech.samples.len() as f64 / f64::from(speech.sample_rate);
        let path = format!("{prefix}-{i}.wav");
        let spec =
            hound::WavSpec { channels: 1, sample_rate: speech.sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for x in &speech.samples {
            w.write_sample(*x).unwrap();
        }
        w.finalize().unwrap();
        let phonemes = if options.get("kind") == Some("piper") {
            String::new()
        } else {
            tolk_engine_onnx_tts::kokoro_phonemes(s, lang, None).unwrap()
        };
        println!("{path}\t{secs:.2}s\tRTF {:.3}\t{phonemes}", took / secs);
    }
}
