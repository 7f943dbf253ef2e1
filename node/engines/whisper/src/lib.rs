//! `tolk-engine-whisper`: a multilingual Tolk ASR engine over whisper.cpp
//! (through `whisper-rs`), for real use where PocketSphinx's English-only
//! model is not enough.
//!
//! Options: `model` (required: path of a ggml model file, e.g.
//! `ggml-base.bin`), `threads` (default 2), `lang` (optional: restrict the
//! engine to one language; by default every language whisper knows is
//! accepted and the job's `src_lang` primary subtag is passed to whisper).
//!
//! Models are not downloaded by the node or this engine: an operator fetches
//! one (see the README, "Whisper") and names it in the configuration.
//!
//! # Layout
//! - this file: the engine and its resampler.

use tolk_engine_sdk::{Asr, Error, Options, export_asr};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

const WHISPER_RATE: u32 = 16_000;

/// One loaded model and its decoding state.
pub struct Whisper {
    // `state` borrows nothing from `ctx` in whisper-rs 0.14 (it holds an Arc), but keep both.
    _ctx: WhisperContext,
    state: WhisperState,
    threads: i32,
    lang: Option<String>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper").field("threads", &self.threads).field("lang", &self.lang).finish_non_exhaustive()
    }
}

impl Asr for Whisper {
    fn create(options: &Options) -> Result<Self, Error> {
        let model = options.require("model")?;
        if !std::path::Path::new(model).is_file() {
            return Err(Error::backend(format!("whisper model {model} not found (see the README: Whisper)")));
        }
        let threads =
            options.get("threads").map(|t| t.parse::<i32>().map_err(|_| Error::unsupported("threads must be an integer"))).transpose()?;
        let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .map_err(|e| Error::backend(format!("whisper could not load {model}: {e}")))?;
        let state = ctx.create_state().map_err(|e| Error::backend(format!("whisper state: {e}")))?;
        Ok(Self { _ctx: ctx, state, threads: threads.unwrap_or(2), lang: options.get("lang").map(str::to_owned) })
    }

    fn transcribe(&mut self, samples: &[i16], sample_rate: u32, lang: &str) -> Result<String, Error> {
        let primary = lang.split('-').next().unwrap_or(lang).to_ascii_lowercase();
        if let Some(only) = &self.lang
            && !only.eq_ignore_ascii_case(&primary)
        {
            return Err(Error::unsupported(format!("this whisper engine is restricted to {only}, not {lang}")));
        }
        if sample_rate == 0 {
            return Err(Error::invalid_input("sample rate 0"));
        }
        let audio: Vec<f32> = resample(samples, sample_rate, WHISPER_RATE).iter().map(|&s| f32::from(s) / 32_768.0).collect();
        if audio.is_empty() {
            return Ok(String::new());
        }
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_language(Some(&primary));
        params.set_translate(false);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        self.state.full(params, &audio).map_err(|e| Error::backend(format!("whisper failed: {e}")))?;
        let n = self.state.full_n_segments().map_err(|e| Error::backend(format!("whisper segments: {e}")))?;
        let mut text = String::new();
        for i in 0..n {
            let segment = self.state.full_get_segment_text(i).map_err(|e| Error::backend(format!("whisper segment {i}: {e}")))?;
            text.push_str(segment.trim());
            text.push(' ');
        }
        Ok(text.trim().to_owned())
    }
}

/// Linear-interpolation resampling (averaging when downsampling).
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let n_out = (samples.len() as f64 / ratio).floor() as usize;
    let last = samples.len() - 1;
    (0..n_out)
        .map(|i| {
            let pos = i as f64 * ratio;
            let i0 = (pos.floor() as usize).min(last);
            if ratio > 1.0 {
                let end = ((pos + ratio).ceil() as usize).clamp(i0 + 1, samples.len());
                let sum: i64 = samples[i0..end].iter().map(|&s| i64::from(s)).sum();
                (sum / (end - i0) as i64) as i16
            } else {
                let i1 = (i0 + 1).min(last);
                let frac = pos - pos.floor();
                (f64::from(samples[i0]) * (1.0 - frac) + f64::from(samples[i1]) * frac).round() as i16
            }
        })
        .collect()
}

export_asr!(Whisper, "whisper.cpp", "whisper-rs-0.14");
