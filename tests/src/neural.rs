//! Speech for the real-language tests, made here: Kokoro (Mandarin,
//! Spanish) and eSpeak NG (English), and English speech transcribed back
//! with whisper tiny.en. The engines are the real plugins, loaded with the
//! node's own loader; models from `tolk-node models` (scripts/setup.sh).

use std::path::Path;
use std::process::Command;

use tolk_engine_sdk::Options;
use tolk_node::engine::plugin::{Library, PluginEngine};
use tolk_node::engine::{Engine, Request, Response};

use crate::{build, node, speech};

fn options(lines: &str) -> Options {
    let pairs =
        lines.lines().filter_map(|l| l.split_once(" = ")).map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
    Options::from_pairs(pairs)
}

fn plugin(package: &str, options_lines: &str) -> PluginEngine {
    let lib = Library::open(&build::engine(package)).unwrap();
    PluginEngine::create(lib, &options(options_lines)).unwrap()
}

/// Kokoro, as the node loads it.
pub fn kokoro() -> PluginEngine {
    plugin("tolk-engine-onnx-tts", &node::tts_options("kokoro"))
}

/// Speech of `text` in `lang` by `tts`, resampled to 16 kHz.
pub fn synthesize(tts: &PluginEngine, text: &str, lang: &str) -> Vec<i16> {
    match tts.process(Request::Tts { text, lang }).unwrap() {
        Response::Speech { samples, sample_rate } => resample(&samples, sample_rate, speech::RATE),
        Response::Text(_) => panic!("a tts engine returned text"),
    }
}

/// `text` spoken by eSpeak NG's voice `voice` (the `espeak-ng` program), at 16 kHz.
pub fn espeak(dir: &Path, voice: &str, text: &str) -> Vec<i16> {
    std::fs::create_dir_all(dir).unwrap();
    let name: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let wav = dir.join(format!("espeak-{voice}-{name}.wav"));
    let status = Command::new("espeak-ng").args(["-v", voice, "-w"]).arg(&wav).arg(text).status();
    assert!(status.unwrap_or_else(|e| panic!("cannot run espeak-ng ({e}): run scripts/setup.sh")).success());
    let mut r = hound::WavReader::open(&wav).unwrap();
    let rate = r.spec().sample_rate;
    let samples: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>().unwrap();
    resample(&samples, rate, speech::RATE)
}

/// Whisper tiny.en: transcribes English speech back.
pub fn tiny_en() -> PluginEngine {
    plugin("tolk-engine-whisper", &format!("model = \"{}\"", node::model_file("whisper-tiny-en", "ggml-tiny.en.bin")))
}

/// The English text of a wav file (the job's speech), by `asr`.
pub fn transcribe_wav(asr: &PluginEngine, wav: &[u8]) -> String {
    let r = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    let rate = r.spec().sample_rate;
    let samples: Vec<i16> = r.into_samples::<i16>().collect::<Result<_, _>>().unwrap();
    match asr.process(Request::Asr { samples: &samples, sample_rate: rate, lang: "en" }).unwrap() {
        Response::Text(t) => t,
        Response::Speech { .. } => panic!("an asr engine returned speech"),
    }
}

/// Linear-interpolation resampling.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let ratio = f64::from(from) / f64::from(to);
    (0..n)
        .map(|i| {
            let pos = i as f64 * ratio;
            let i0 = (pos as usize).min(samples.len() - 1);
            let i1 = (i0 + 1).min(samples.len() - 1);
            let f = pos - i0 as f64;
            (f64::from(samples[i0]) * (1.0 - f) + f64::from(samples[i1]) * f).round() as i16
        })
        .collect()
}

/// The characters of `s` that count for a character error rate: no
/// punctuation, no spaces.
pub fn cer_chars(s: &str) -> Vec<char> {
    s.chars().filter(|c| c.is_alphanumeric()).collect()
}

/// Character-level edit distance between a reference and a hypothesis.
pub fn char_errors(reference: &str, hypothesis: &str) -> usize {
    let (r, h) = (cer_chars(reference), cer_chars(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rc) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hc) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rc != hc)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()]
}
