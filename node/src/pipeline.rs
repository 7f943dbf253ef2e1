//! One job, start to end, in plain synchronous code: decode the audio, then
//! ASR → NMT → TTS through the [`EngineSet`], timing each stage. An `nmt`
//! model whose engine reads speech (speech translation, e.g. whisper's
//! translate task) is given the job's audio instead of the recognised text;
//! it runs only when the recognised text is not empty, like any NMT. Runs on a
//! blocking thread; checks `cancel` between stages so an abandoned job stops
//! at the next boundary (an engine call itself cannot be interrupted).
//!
//! Opus input (extension 12) is decoded at its capture rate (or the next
//! rate Opus has) and each engine resamples to its model's rate, as for
//! pcm16; speech goes out as Opus when `job_assign.tts_format` asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tolk_protocol::node::JobAssign;
use tolk_protocol::{AudioFormat, JobErrorCode, ModelKind, audio, opus};

use crate::engine::{EngineError, EngineErrorKind, EngineSet, Request, Response};

/// How long each stage took, in milliseconds (0 when it did not run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub decode_ms: u64,
    pub asr_ms: u64,
    pub nmt_ms: u64,
    pub tts_ms: u64,
    pub total_ms: u64,
}

/// A finished job's texts and speech.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub text_asr: Option<String>,
    pub text_translated: Option<String>,
    /// The synthesized speech, in the format the job asked for.
    pub tts: Option<Speech>,
}

/// Synthesized speech, encoded for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    pub bytes: Vec<u8>,
    pub format: AudioFormat,
    /// The rate to decode at (`tts_sample_rate`); `None` for wav, which
    /// carries its own.
    pub sample_rate: Option<u32>,
}

/// Bitrate and complexity of the speech the node encodes as Opus: 24 kbit/s
/// keeps synthetic speech intelligible at a tenth of pcm16; complexity 10,
/// the best, since encoding costs a node little next to its engines.
pub const TTS_OPUS: opus::OpusSettings = opus::OpusSettings { bitrate_bps: 24_000, complexity: 10 };

/// Encodes `samples` as `format` asks: Opus (extension 12), pcm16, or wav
/// (the default: it carries its rate).
pub fn encode_speech(samples: &[i16], sample_rate: u32, format: Option<AudioFormat>) -> Result<Speech, Failure> {
    match format {
        Some(AudioFormat::Opus) => {
            let bytes = opus::encode(samples, sample_rate, TTS_OPUS)
                .map_err(|e| Failure::new(JobErrorCode::InferenceBackendError, format!("opus encoding failed: {}", e.message)))?;
            Ok(Speech { bytes, format: AudioFormat::Opus, sample_rate: Some(opus::coding_rate(sample_rate)) })
        }
        Some(AudioFormat::Pcm16) => {
            Ok(Speech { bytes: audio::encode_pcm16(samples), format: AudioFormat::Pcm16, sample_rate: Some(sample_rate) })
        }
        Some(AudioFormat::Wav) | None => {
            Ok(Speech { bytes: audio::encode_wav(samples, sample_rate), format: AudioFormat::Wav, sample_rate: None })
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: JobErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What running a job gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Output, Failure>,
    pub timings: Timings,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Maps an engine error of `stage` to a job failure.
fn engine_failure(stage: &str, model_id: &str, e: EngineError) -> Failure {
    let code = match e.kind {
        EngineErrorKind::InvalidInput if stage == "asr" => JobErrorCode::InvalidAudio,
        EngineErrorKind::Unsupported => JobErrorCode::ModelNotAvailable,
        _ => JobErrorCode::InferenceBackendError,
    };
    Failure::new(code, format!("{stage} ({model_id}): {}", e.message))
}

fn cancelled(cancel: &AtomicBool) -> Result<(), Failure> {
    if cancel.load(Ordering::Relaxed) { Err(Failure::new(JobErrorCode::Timeout, "abandoned")) } else { Ok(()) }
}

/// When engine calls must have ended: a little before the job's deadline
/// (`deadline_ms`, which the core fills in), so that an engine in a child
/// process is stopped and the job answered `INFERENCE_BACKEND_ERROR` before
/// the core gives up on it with `TIMEOUT`.
fn engine_deadline(start: Instant, job: &JobAssign) -> Option<Instant> {
    job.deadline_ms.map(|ms| start + Duration::from_millis(ms - (ms / 20).min(500)))
}

/// Runs `job` with `engines`.
pub fn run(engines: &EngineSet, job: &JobAssign, cancel: &AtomicBool) -> Outcome {
    let start = Instant::now();
    let mut timings = Timings::default();
    let result = stages(engines, job, cancel, engine_deadline(start, job), &mut timings);
    timings.total_ms = ms(start);
    Outcome { result, timings }
}

fn stages(
    engines: &EngineSet,
    job: &JobAssign,
    cancel: &AtomicBool,
    deadline: Option<Instant>,
    t: &mut Timings,
) -> Result<Output, Failure> {
    let p = job.pipeline;
    let mut out = Output::default();
    let mut pcm = None;
    if p.use_asr {
        let started = Instant::now();
        let decoded = audio::decode_base64(&job.audio, job.audio_format, job.sample_rate)
            .map_err(|e| Failure::new(JobErrorCode::InvalidAudio, e.message))?;
        t.decode_ms = ms(started);
        let pcm = pcm.insert(decoded);
        let asr = engines
            .find(&ModelKind::Asr, &job.src_lang, None, job.dialect.as_deref())
            .ok_or_else(|| Failure::new(JobErrorCode::ModelNotAvailable, format!("no asr model for {}", job.src_lang)))?;
        let started = Instant::now();
        let request = Request::Asr { samples: &pcm.samples, sample_rate: pcm.sample_rate, lang: &job.src_lang };
        let text = match asr.engine.process_until(request, deadline).map_err(|e| engine_failure("asr", &asr.model.model_id, e))? {
            Response::Text(text) => text,
            Response::Speech { .. } => return Err(Failure::new(JobErrorCode::InferenceBackendError, "asr engine returned audio")),
        };
        t.asr_ms = ms(started);
        out.text_asr = Some(text);
    }
    cancelled(cancel)?;
    let source = out.text_asr.clone().unwrap_or_default();
    if p.use_nmt {
        let nmt = engines.find(&ModelKind::Nmt, &job.src_lang, Some(&job.tgt_lang), None).ok_or_else(|| {
            Failure::new(JobErrorCode::ModelNotAvailable, format!("no nmt model for {} → {}", job.src_lang, job.tgt_lang))
        })?;
        let text = if source.trim().is_empty() {
            String::new()
        } else {
            let started = Instant::now();
            let request = match (&pcm, nmt.speech_input) {
                (Some(pcm), true) => Request::SpeechTranslation {
                    samples: &pcm.samples,
                    sample_rate: pcm.sample_rate,
                    src_lang: &job.src_lang,
                    tgt_lang: &job.tgt_lang,
                },
                (None, true) => {
                    let message = format!("{} translates speech and this job has none", nmt.model.model_id);
                    return Err(Failure::new(JobErrorCode::ModelNotAvailable, message));
                }
                (_, false) => Request::Nmt { text: &source, src_lang: &job.src_lang, tgt_lang: &job.tgt_lang },
            };
            let text = match nmt.engine.process_until(request, deadline).map_err(|e| engine_failure("nmt", &nmt.model.model_id, e))? {
                Response::Text(text) => text,
                Response::Speech { .. } => return Err(Failure::new(JobErrorCode::InferenceBackendError, "nmt engine returned audio")),
            };
            t.nmt_ms = ms(started);
            text
        };
        out.text_translated = Some(text);
    }
    cancelled(cancel)?;
    if p.use_tts {
        let tts = engines
            .find(&ModelKind::Tts, &job.tgt_lang, None, None)
            .ok_or_else(|| Failure::new(JobErrorCode::ModelNotAvailable, format!("no tts model for {}", job.tgt_lang)))?;
        // Speak the translation; without NMT, the recognised text.
        let text = out.text_translated.clone().unwrap_or(source);
        if !text.trim().is_empty() {
            let started = Instant::now();
            let request = Request::Tts { text: &text, lang: &job.tgt_lang };
            match tts.engine.process_until(request, deadline).map_err(|e| engine_failure("tts", &tts.model.model_id, e))? {
                Response::Speech { samples, sample_rate } if sample_rate > 0 => {
                    out.tts = Some(encode_speech(&samples, sample_rate, job.tts_format)?);
                }
                Response::Speech { .. } => {
                    return Err(Failure::new(JobErrorCode::InferenceBackendError, "tts engine returned sample rate 0"));
                }
                Response::Text(_) => return Err(Failure::new(JobErrorCode::InferenceBackendError, "tts engine returned text")),
            }
            t.tts_ms = ms(started);
        }
    }
    Ok(out)
}
