//! `cargo run --release -p tolk-engine-whisper --example transcribe -- MODEL.bin LANG transcribe|translate FILE.wav...`:
//! prints each file's text and the real-time factor (processing time / audio duration).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool: fail loudly

use tolk_engine_sdk::{Asr, Options, SpeechTranslation};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, lang, task, files @ ..] = args.as_slice() else {
        panic!("usage: transcribe MODEL LANG transcribe|translate FILE.wav...");
    };
    let extra: Vec<(String, String)> = std::env::var("WHISPER_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let options = Options::from_pairs([("model".to_owned(), model.clone())].into_iter().chain(extra));
    let mut w = tolk_engine_whisper::Whisper::create(&options).unwrap();
    for f in files {
        let mut r = hound::WavReader::open(f).unwrap();
        let rate = r.spec().sample_rate;
        let pcm: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>().unwrap();
        let start = std::time::Instant::now();
        let text = if task == "translate" { w.translate_speech(&pcm, rate, lang, "en") } else { w.transcribe(&pcm, rate, lang) };
        let secs = pcm.len() as f64 / f64::from(rate);
        println!("{f}\t{:.2}s audio\tRTF {:.3}\t{}", secs, start.elapsed().as_secs_f64() / secs, text.unwrap());
    }
}
