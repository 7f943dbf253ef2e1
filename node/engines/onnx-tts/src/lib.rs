//! `tolk-engine-onnx-tts`: neural speech synthesis on ONNX Runtime (`ort`,
//! loaded at run time from the shared library `tolk-node models install
//! onnxruntime` installs). Two model families, chosen by option `kind`:
//!
//! - `kokoro` (Kokoro-82M v1.0 int8, 24 kHz, `tolk-node models install
//!   kokoro`): phonemes from libespeak-ng's IPA for the languages it covers
//!   (`espeak_voice`, default from the language: `en` → `en-us`, `es` → `es`,
//!   …); Mandarin (`zh`) through this crate's own pinyin G2P ([`zh`]).
//!   Options: `model`, `vocab` (vocab.json), `voices` (voices npz), `voice`
//!   (default `jf_alpha`), `speed` (default 1.0).
//! - `piper` (a piper voice, e.g. `piper-en-us-joe`): phonemes from
//!   libespeak-ng in the voice's own `espeak.voice`. Options: `model`,
//!   `config` (the voice's `.onnx.json`).
//!
//! Both: `onnxruntime` (path of `libonnxruntime.so.*`; default
//! `ORT_DYLIB_PATH`), `threads` (default 2). Results carry their sample rate.
//!
//! # Layout
//! - this file: the engine, the two models, the voices npz reader.
//! - [`espeak`]: IPA from libespeak-ng. [`zh`]: Mandarin G2P.

pub mod espeak;
pub mod zh;

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;
use tolk_engine_sdk::{Error, Options, Speech, Tts, export_tts};

/// Kokoro's longest token sequence (the model's context is 512 with the two pads).
const KOKORO_MAX_TOKENS: usize = 500;
const KOKORO_RATE: u32 = 24_000;

/// The process's ONNX Runtime environment (the library loads once).
static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(options: &Options) -> Result<ort::environment::Environment, Error> {
    ENV.get_or_init(|| {
        let path = options.get("onnxruntime").map(str::to_owned).or_else(|| std::env::var("ORT_DYLIB_PATH").ok());
        let path = path.ok_or("option onnxruntime (or ORT_DYLIB_PATH) is required: tolk-node models install onnxruntime")?;
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {path}: {e}"))?;
        // The `cuda` feature: the CUDA execution provider first (CPU stays the fallback).
        #[cfg(feature = "cuda")]
        let builder = builder.with_execution_providers([ort::ep::CUDA::default().build()]);
        builder.with_name("tolk").build().map_err(|e| format!("ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(Error::backend)
}

fn session(options: &Options, model: &str) -> Result<Session, Error> {
    let env = environment(options)?;
    let threads: usize = options.get("threads").map_or(Ok(2), str::parse).map_err(|_| Error::unsupported("threads must be a number"))?;
    let builder = Session::builder(&env).map_err(|e| Error::backend(format!("ONNX Runtime: {e}")))?;
    let mut builder = builder.with_intra_threads(threads).map_err(|e| Error::backend(format!("ONNX Runtime: {e}")))?;
    builder.commit_from_file(model).map_err(|e| Error::backend(format!("cannot load {model}: {e}")))
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::backend(e.to_string())
}

/// Reads one `.npy` array of little-endian f32 (C order) into (shape, values).
fn read_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bad = |m: &str| format!("npy: {m}");
    if bytes.get(..6) != Some(b"\x93NUMPY") {
        return Err(bad("no magic"));
    }
    let major = *bytes.get(6).ok_or_else(|| bad("truncated"))?;
    let (len, start) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or_else(|| bad("truncated"))?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10)
        }
        _ => {
            let b = bytes.get(8..12).ok_or_else(|| bad("truncated"))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
    };
    let header = std::str::from_utf8(bytes.get(start..start + len).ok_or_else(|| bad("truncated header"))?).map_err(|_| bad("header"))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian f32 in C order"));
    }
    let shape_text = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<Vec<usize>, _>>();
    let shape = shape.map_err(|_| bad("shape"))?;
    let data = &bytes[start + len..];
    let n: usize = shape.iter().product();
    if data.len() != n * 4 {
        return Err(bad("data length does not match the shape"));
    }
    Ok((shape, data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

/// A voice's style rows (one 256-float row per token count) from a voices npz.
fn read_voice(npz: &str, voice: &str) -> Result<Vec<Vec<f32>>, Error> {
    let file = std::fs::File::open(npz).map_err(|e| Error::backend(format!("{npz}: {e}")))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::backend(format!("{npz}: {e}")))?;
    let mut bytes = Vec::new();
    let mut member = zip.by_name(&format!("{voice}.npy")).map_err(|_| Error::unsupported(format!("{npz} has no voice {voice}")))?;
    member.read_to_end(&mut bytes).map_err(backend)?;
    let (shape, values) = read_npy(&bytes).map_err(Error::backend)?;
    let width = *shape.last().unwrap_or(&0);
    if width != 256 {
        return Err(Error::backend(format!("voice {voice}: shape {shape:?}, expected (…, 256)")));
    }
    Ok(values.chunks_exact(256).map(<[f32]>::to_vec).collect())
}

/// The eSpeak NG voice for a language tag, when none is configured.
fn espeak_voice_for(lang: &str) -> String {
    let primary = lang.split('-').next().unwrap_or(lang).to_ascii_lowercase();
    match primary.as_str() {
        "en" => "en-us".into(),
        "fr" => "fr-fr".into(),
        "pt" => "pt-br".into(),
        _ => primary,
    }
}

/// Kokoro phonemes for `text` in `lang` (IPA adjusted to Kokoro's set).
pub fn kokoro_phonemes(text: &str, lang: &str, espeak_voice: Option<&str>) -> Result<String, Error> {
    let primary = lang.split('-').next().unwrap_or(lang).to_ascii_lowercase();
    if primary == "zh" || primary == "cmn" {
        return Ok(zh::phonemes(text));
    }
    let voice = espeak_voice.map_or_else(|| espeak_voice_for(lang), str::to_owned);
    let ipa = espeak::ipa(&voice, text).map_err(Error::unsupported)?;
    // eSpeak's affricates are two letters; Kokoro's are one. English: Kokoro's
    // set has no ɐ or trilled r.
    let mut s = ipa.replace("tʃ", "ʧ").replace("dʒ", "ʤ").replace('\u{361}', "");
    if primary == "en" {
        s = s.replace('ɐ', "ə").replace('r', "ɹ");
    }
    Ok(s)
}

enum Model {
    Kokoro { session: Session, vocab: HashMap<char, i64>, style: Vec<Vec<f32>>, speed: f32, espeak_voice: Option<String> },
    Piper { session: Session, ids: HashMap<char, Vec<i64>>, scales: [f32; 3], espeak_voice: String, rate: u32 },
}

/// A loaded model.
pub struct OnnxTts {
    model: Model,
}

impl std::fmt::Debug for OnnxTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.model {
            Model::Kokoro { .. } => "kokoro",
            Model::Piper { .. } => "piper",
        };
        f.debug_struct("OnnxTts").field("kind", &kind).finish_non_exhaustive()
    }
}

fn read_json(path: &str) -> Result<serde_json::Value, Error> {
    let text = std::fs::read(path).map_err(|e| Error::backend(format!("{path}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| Error::backend(format!("{path}: {e}")))
}

impl OnnxTts {
    fn kokoro(&mut self, text: &str, lang: &str) -> Result<Speech, Error> {
        let Model::Kokoro { session, vocab, style, speed, espeak_voice } = &mut self.model else { unreachable!() };
        let phonemes = kokoro_phonemes(text, lang, espeak_voice.as_deref())?;
        let mut tokens: Vec<i64> = phonemes.chars().filter_map(|c| vocab.get(&c).copied()).collect();
        tokens.truncate(KOKORO_MAX_TOKENS);
        if tokens.is_empty() {
            return Ok(Speech { samples: Vec::new(), sample_rate: KOKORO_RATE });
        }
        // The style row for this many tokens (the last row for longer inputs).
        let row = tokens.len().min(style.len()).checked_sub(1).and_then(|i| style.get(i));
        let row = row.ok_or_else(|| Error::backend("voice has no style rows"))?;
        let n = tokens.len() + 2;
        let mut padded = Vec::with_capacity(n);
        padded.push(0);
        padded.extend(tokens);
        padded.push(0);
        let inputs = ort::inputs![
            "tokens" => Tensor::from_array(([1usize, n], padded)).map_err(backend)?,
            "style" => Tensor::from_array(([1usize, 256], row.clone())).map_err(backend)?,
            "speed" => Tensor::from_array(([1usize], vec![*speed])).map_err(backend)?,
        ];
        let outputs = session.run(inputs).map_err(backend)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(backend)?;
        Ok(Speech { samples: to_pcm16(audio), sample_rate: KOKORO_RATE })
    }

    fn piper(&mut self, text: &str) -> Result<Speech, Error> {
        let Model::Piper { session, ids, scales, espeak_voice, rate } = &mut self.model else { unreachable!() };
        let phonemes = espeak::ipa(espeak_voice, text).map_err(Error::unsupported)?;
        let id = |c: char| ids.get(&c).cloned().unwrap_or_default();
        let pad = id('_');
        let mut seq = id('^');
        seq.extend(&pad);
        for c in phonemes.chars() {
            let i = id(c);
            if !i.is_empty() {
                seq.extend(i);
                seq.extend(&pad);
            }
        }
        seq.extend(id('$'));
        let n = seq.len();
        let inputs = ort::inputs![
            "input" => Tensor::from_array(([1usize, n], seq)).map_err(backend)?,
            "input_lengths" => Tensor::from_array(([1usize], vec![n as i64])).map_err(backend)?,
            "scales" => Tensor::from_array(([3usize], scales.to_vec())).map_err(backend)?,
        ];
        let outputs = session.run(inputs).map_err(backend)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(backend)?;
        Ok(Speech { samples: to_pcm16(audio), sample_rate: *rate })
    }
}

fn to_pcm16(audio: &[f32]) -> Vec<i16> {
    audio.iter().map(|&s| (s.clamp(-1.0, 1.0) * 32_767.0).round() as i16).collect()
}

impl Tts for OnnxTts {
    fn create(options: &Options) -> Result<Self, Error> {
        let model_path = options.require("model")?;
        let model = match options.get("kind").unwrap_or("kokoro") {
            "kokoro" => {
                let vocab_json = read_json(options.require("vocab")?)?;
                let map = vocab_json.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| Error::backend("vocab.json has no vocab"))?;
                let mut vocab = HashMap::new();
                for (k, v) in map {
                    if let (Some(c), Some(id)) = (k.chars().next(), v.as_i64())
                        && k.chars().count() == 1
                    {
                        vocab.insert(c, id);
                    }
                }
                let style = read_voice(options.require("voices")?, options.get("voice").unwrap_or("jf_alpha"))?;
                let speed = options.get("speed").map_or(Ok(1.0), str::parse).map_err(|_| Error::unsupported("speed must be a number"))?;
                let session = session(options, model_path)?;
                Model::Kokoro { session, vocab, style, speed, espeak_voice: options.get("espeak_voice").map(str::to_owned) }
            }
            "piper" => {
                let config = read_json(options.require("config")?)?;
                let map = config.get("phoneme_id_map").and_then(|v| v.as_object()).ok_or_else(|| Error::backend("no phoneme_id_map"))?;
                let mut ids = HashMap::new();
                for (k, v) in map {
                    let list: Vec<i64> = v.as_array().map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect()).unwrap_or_default();
                    if let Some(c) = k.chars().next()
                        && k.chars().count() == 1
                    {
                        ids.insert(c, list);
                    }
                }
                let f = |key: &str, default: f64| {
                    config.pointer(&format!("/inference/{key}")).and_then(|v| v.as_f64()).unwrap_or(default) as f32
                };
                let scales = [f("noise_scale", 0.667), f("length_scale", 1.0), f("noise_w", 0.8)];
                let espeak_voice = config.pointer("/espeak/voice").and_then(|v| v.as_str()).unwrap_or("en-us").to_owned();
                let rate = config.pointer("/audio/sample_rate").and_then(|v| v.as_u64()).unwrap_or(22_050) as u32;
                Model::Piper { session: session(options, model_path)?, ids, scales, espeak_voice, rate }
            }
            other => return Err(Error::unsupported(format!("kind {other}: kokoro or piper"))),
        };
        Ok(Self { model })
    }

    fn synthesize(&mut self, text: &str, lang: &str) -> Result<Speech, Error> {
        match self.model {
            Model::Kokoro { .. } => self.kokoro(text, lang),
            Model::Piper { .. } => self.piper(text),
        }
    }
}

export_tts!(OnnxTts, "onnx-tts", "0.1");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_arrays_read_and_bad_ones_are_refused() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 2), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend(v.to_le_bytes());
        }
        assert_eq!(read_npy(&b).unwrap(), (vec![2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
        for cut in 0..b.len() {
            assert!(read_npy(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_npy(b"not npy").is_err());
    }

    #[test]
    fn languages_pick_their_phonemizer() {
        assert_eq!(espeak_voice_for("en-GB"), "en-us");
        assert_eq!(espeak_voice_for("es"), "es");
        assert_eq!(kokoro_phonemes("你好", "zh-CN", None).unwrap(), "ni↗xau↓");
        let en = kokoro_phonemes("Teacher, the judge.", "en", None).unwrap();
        assert!(en.contains('ʧ') && en.contains('ʤ') && !en.contains('ɐ'), "{en}");
    }
}
