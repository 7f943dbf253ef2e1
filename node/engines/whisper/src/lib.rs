//! `tolk-engine-whisper`: a Tolk engine over whisper.cpp (through
//! `whisper-rs`): speech recognition in the job's language and (ABI 2)
//! speech translation to English through whisper's `translate` task. One
//! multilingual model (e.g. `ggml-base.bin` from `tolk-node models install
//! whisper-base`) serves every configured language.
//!
//! The language always comes from the job (`src_lang`'s primary subtag:
//! `zh-sichuan` → `zh`), never detected. Silence and very short audio give
//! an empty text, not whisper's invented "Thank you.": audio shorter than
//! `min_speech_ms` or quieter than `silence_dbfs` is not decoded, and a
//! segment whose no-speech probability is above `no_speech_threshold` is
//! dropped ([`Gate`], tested without a model).
//!
//! Options: `model` (required: a ggml file), `threads` (default 2),
//! `languages` (optional comma list restricting the engine, e.g. `zh,en,es`),
//! `no_speech_threshold` (default 0.6), `min_speech_ms` (default 300),
//! `silence_dbfs` (default -50), `audio_ctx` (default 0: whisper's full 30 s
//! window; smaller is faster on short utterances at some cost in accuracy),
//! `prompt_LANG` (an initial prompt when transcribing LANG; `zh` defaults to a
//! simplified-Chinese sentence, so that whisper writes simplified characters).
//!
//! # Layout
//! - this file: the engine, [`Gate`], the resampler.

use tolk_engine_sdk::{Asr, Error, Options, SpeechTranslation, export_asr_and_speech_translation};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

const WHISPER_RATE: u32 = 16_000;
/// "What follows are Mandarin sentences. This is a passage in simplified Chinese."
const ZH_PROMPT: &str = "以下是普通话的句子。这是一段简体中文的话。";

/// When audio is not worth decoding, and which decoded segments to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub no_speech_threshold: f32,
    pub min_speech_ms: u32,
    pub silence_dbfs: f64,
}

impl Default for Gate {
    fn default() -> Self {
        Self { no_speech_threshold: 0.6, min_speech_ms: 300, silence_dbfs: -50.0 }
    }
}

impl Gate {
    /// Whether 16 kHz `audio` (in −1..1) may hold speech: long enough and not silent.
    pub fn may_hold_speech(&self, audio: &[f32]) -> bool {
        let min = (u64::from(self.min_speech_ms) * u64::from(WHISPER_RATE) / 1000) as usize;
        if audio.len() < min.max(1) {
            return false;
        }
        let mean_square = audio.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / audio.len() as f64;
        let dbfs = 10.0 * mean_square.max(1e-20).log10();
        dbfs >= self.silence_dbfs
    }

    /// Whether a segment is kept.
    pub fn keeps(&self, no_speech_probability: f32, text: &str) -> bool {
        no_speech_probability <= self.no_speech_threshold && !text.trim().is_empty()
    }
}

/// One loaded model and its decoding state.
pub struct Whisper {
    // The state holds the context alive (whisper-rs keeps an Arc), keep both anyway.
    _ctx: WhisperContext,
    state: WhisperState,
    threads: i32,
    languages: Option<Vec<String>>,
    gate: Gate,
    audio_ctx: i32,
    /// (language, initial prompt) for transcription.
    prompts: Vec<(String, String)>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper").field("threads", &self.threads).field("languages", &self.languages).finish_non_exhaustive()
    }
}

fn parse<T: std::str::FromStr>(options: &Options, key: &str, default: T) -> Result<T, Error> {
    options.get(key).map_or(Ok(default), |v| v.trim().parse().map_err(|_| Error::unsupported(format!("option {key}: bad value {v:?}"))))
}

/// `zh-sichuan` → `zh`: whisper's language codes are primary subtags.
pub fn whisper_language(tag: &str) -> String {
    tag.split(['-', '_']).next().unwrap_or(tag).to_ascii_lowercase()
}

impl Whisper {
    fn language(&self, tag: &str) -> Result<String, Error> {
        let lang = whisper_language(tag);
        if whisper_rs::get_lang_id(&lang).is_none() {
            return Err(Error::unsupported(format!("whisper does not know the language {tag}")));
        }
        if let Some(only) = &self.languages
            && !only.contains(&lang)
        {
            return Err(Error::unsupported(format!("this whisper engine serves {}, not {tag}", only.join(", "))));
        }
        Ok(lang)
    }

    /// Runs whisper on the audio: transcription in `lang`, or translation to English.
    fn run(&mut self, samples: &[i16], sample_rate: u32, lang: &str, translate: bool) -> Result<String, Error> {
        if sample_rate == 0 {
            return Err(Error::invalid_input("sample rate 0"));
        }
        let audio: Vec<f32> = resample(samples, sample_rate, WHISPER_RATE).iter().map(|&s| f32::from(s) / 32_768.0).collect();
        if !self.gate.may_hold_speech(&audio) {
            return Ok(String::new());
        }
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_language(Some(lang));
        params.set_detect_language(false);
        params.set_translate(translate);
        params.set_no_context(true);
        params.set_suppress_nst(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        if self.audio_ctx > 0 {
            params.set_audio_ctx(self.audio_ctx);
        }
        // A prompt in the script wanted: whisper writes Chinese in either
        // script, a simplified-Chinese prompt makes it write simplified.
        let prompt = if translate { None } else { self.prompts.iter().find(|(l, _)| l == lang).map(|(_, p)| p.as_str()) };
        if let Some(p) = prompt {
            params.set_initial_prompt(p);
        }
        self.state.full(params, &audio).map_err(|e| Error::backend(format!("whisper failed: {e}")))?;
        let mut text = String::new();
        for i in 0..self.state.full_n_segments() {
            let Some(segment) = self.state.get_segment(i) else { continue };
            let piece = segment.to_str_lossy().map_err(|e| Error::backend(format!("whisper segment {i}: {e}")))?;
            if self.gate.keeps(segment.no_speech_probability(), &piece) {
                text.push_str(piece.trim());
                text.push(' ');
            }
        }
        Ok(text.trim().to_owned())
    }
}

impl Asr for Whisper {
    fn create(options: &Options) -> Result<Self, Error> {
        let model = options.require("model")?;
        if !std::path::Path::new(model).is_file() {
            return Err(Error::backend(format!("whisper model {model} not found (tolk-node models install whisper-base)")));
        }
        let threads = parse(options, "threads", 2i32)?;
        let gate = Gate {
            no_speech_threshold: parse(options, "no_speech_threshold", Gate::default().no_speech_threshold)?,
            min_speech_ms: parse(options, "min_speech_ms", Gate::default().min_speech_ms)?,
            silence_dbfs: parse(options, "silence_dbfs", Gate::default().silence_dbfs)?,
        };
        let audio_ctx = parse(options, "audio_ctx", 0i32)?;
        let languages =
            options.get("languages").map(|l| l.split(',').map(|x| whisper_language(x.trim())).filter(|x| !x.is_empty()).collect());
        // whisper.cpp's own log lines go nowhere (no log backend): the node logs what matters.
        whisper_rs::install_logging_hooks();
        let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .map_err(|e| Error::backend(format!("whisper could not load {model}: {e}")))?;
        let state = ctx.create_state().map_err(|e| Error::backend(format!("whisper state: {e}")))?;
        let mut prompts: Vec<(String, String)> = vec![("zh".into(), ZH_PROMPT.into())];
        for (k, v) in options.iter() {
            if let Some(lang) = k.strip_prefix("prompt_") {
                prompts.retain(|(l, _)| l != lang);
                prompts.push((lang.to_owned(), v.to_owned()));
            }
        }
        Ok(Self { _ctx: ctx, state, threads, languages, gate, audio_ctx, prompts })
    }

    fn transcribe(&mut self, samples: &[i16], sample_rate: u32, lang: &str) -> Result<String, Error> {
        let lang = self.language(lang)?;
        self.run(samples, sample_rate, &lang, false)
    }
}

impl SpeechTranslation for Whisper {
    fn translate_speech(&mut self, samples: &[i16], sample_rate: u32, src_lang: &str, tgt_lang: &str) -> Result<String, Error> {
        if whisper_language(tgt_lang) != "en" {
            return Err(Error::unsupported(format!("whisper translates speech to English only, not to {tgt_lang}")));
        }
        let lang = self.language(src_lang)?;
        self.run(samples, sample_rate, &lang, true)
    }
}

/// Linear-interpolation resampling (averaging when downsampling).
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
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

export_asr_and_speech_translation!(Whisper, "whisper.cpp", "whisper-rs-0.16");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_very_short_audio_are_not_decoded() {
        let g = Gate::default();
        assert!(!g.may_hold_speech(&[]));
        assert!(!g.may_hold_speech(&vec![0.0; 16_000 * 2]), "digital silence");
        assert!(!g.may_hold_speech(&vec![0.001; 16_000 * 2]), "-60 dBFS hiss");
        assert!(!g.may_hold_speech(&vec![0.3; 16_000 / 10]), "100 ms, however loud");
        assert!(g.may_hold_speech(&vec![0.05; 16_000]), "-26 dBFS for a second");
        assert!(g.keeps(0.1, " Hello.") && !g.keeps(0.9, "Thank you.") && !g.keeps(0.0, "  "));
    }

    #[test]
    fn languages_are_primary_subtags() {
        assert_eq!(whisper_language("zh-sichuan"), "zh");
        assert_eq!(whisper_language("en-US"), "en");
        assert_eq!(whisper_language("ES"), "es");
    }

    #[test]
    fn resampling_keeps_duration() {
        assert_eq!(resample(&[0; 48_000], 48_000, 16_000).len(), 16_000);
        assert_eq!(resample(&[0; 8_000], 8_000, 16_000).len(), 16_000);
    }
}
