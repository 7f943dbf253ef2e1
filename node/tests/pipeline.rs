//! One job through fake engines (test doubles behind the same `Engine`
//! trait the plugins implement): stage order, error codes, cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tolk_node::engine::{Engine, EngineError, EngineErrorKind, EngineSet, LoadedEngine, Request, Response};
use tolk_node::pipeline::run;
use tolk_protocol::node::{InstalledModel, JobAssign, Pipeline};
use tolk_protocol::{AudioFormat, Features, JobErrorCode, ModelKind, audio};

/// Answers from a script; can flip a cancel flag when called.
#[derive(Debug)]
struct Fake {
    answer: Result<Response, EngineError>,
    cancel_after: Option<Arc<AtomicBool>>,
}

impl Engine for Fake {
    fn process(&self, request: Request<'_>) -> Result<Response, EngineError> {
        if let Some(c) = &self.cancel_after {
            c.store(true, Ordering::Relaxed);
        }
        match (&self.answer, request) {
            // NMT echoes its input so the test sees what reached it.
            (Ok(Response::Text(t)), Request::Nmt { text, .. }) if t == "echo" => Ok(Response::Text(format!("<{text}>"))),
            // Speech translation shows what audio reached it.
            (Ok(Response::Text(t)), Request::SpeechTranslation { samples, sample_rate, src_lang, tgt_lang }) if t == "echo" => {
                Ok(Response::Text(format!("<{} samples at {sample_rate} {src_lang}→{tgt_lang}>", samples.len())))
            }
            (answer, _) => answer.clone(),
        }
    }
}

fn loaded(kind: ModelKind, src: &str, tgt: Option<&str>, answer: Result<Response, EngineError>) -> LoadedEngine {
    let model = InstalledModel {
        model_id: format!("fake-{kind}"),
        kind,
        src_lang: Some(src.into()),
        tgt_lang: tgt.map(Into::into),
        dialect: None,
        version: "1".into(),
        enabled: None,
    };
    LoadedEngine { model, engine: Arc::new(Fake { answer, cancel_after: None }), speech_input: false }
}

fn text(t: &str) -> Result<Response, EngineError> {
    Ok(Response::Text(t.into()))
}

fn speech() -> Result<Response, EngineError> {
    Ok(Response::Speech { samples: vec![100, -100, 100], sample_rate: 22_050 })
}

fn err(kind: EngineErrorKind) -> Result<Response, EngineError> {
    Err(EngineError::new(kind, "boom"))
}

fn engines(asr: Result<Response, EngineError>, nmt: Result<Response, EngineError>, tts: Result<Response, EngineError>) -> EngineSet {
    EngineSet::new(vec![
        loaded(ModelKind::Asr, "en", None, asr),
        loaded(ModelKind::Nmt, "en", Some("es"), nmt),
        loaded(ModelKind::Tts, "es", None, tts),
    ])
}

fn job() -> JobAssign {
    JobAssign {
        job_id: "j".into(),
        session_id: "s".into(),
        utterance_index: 0,
        src_lang: "en-US".into(),
        tgt_lang: "es".into(),
        dialect: None,
        features: Features::default(),
        pipeline: Pipeline::default(),
        audio: audio::to_base64(&audio::encode_pcm16(&[0, 1, 2, 3])).into(),
        audio_format: AudioFormat::Pcm16,
        sample_rate: 16_000,
        deadline_ms: None,
        tts_format: None,
    }
}

fn go(set: &EngineSet, job: &JobAssign) -> Result<tolk_node::pipeline::Output, (JobErrorCode, String)> {
    run(set, job, &AtomicBool::new(false)).result.map_err(|f| (f.code, f.message))
}

#[test]
fn the_stages_run_in_order_and_speech_comes_back_as_wav() {
    let out = go(&engines(text("hello"), text("echo"), speech()), &job()).unwrap();
    assert_eq!((out.text_asr.as_deref(), out.text_translated.as_deref()), (Some("hello"), Some("<hello>")));
    let tts = out.tts.unwrap();
    assert_eq!((tts.format, tts.sample_rate), (AudioFormat::Wav, None));
    let pcm = audio::decode_bytes(&tts.bytes, AudioFormat::Wav, 22_050).unwrap();
    assert_eq!(pcm.samples, [100, -100, 100]);
}

#[test]
fn a_speech_translation_model_gets_the_audio_not_the_text() {
    let st = LoadedEngine { speech_input: true, ..loaded(ModelKind::Nmt, "zh", Some("en"), text("echo")) };
    let set =
        EngineSet::new(vec![loaded(ModelKind::Asr, "zh", None, text("今天天气不错")), st, loaded(ModelKind::Tts, "en", None, speech())]);
    let zh_en = JobAssign { src_lang: "zh".into(), tgt_lang: "en".into(), ..job() };
    let out = go(&set, &zh_en).unwrap();
    assert_eq!(out.text_asr.as_deref(), Some("今天天气不错"));
    assert_eq!(out.text_translated.as_deref(), Some("<4 samples at 16000 zh→en>"));
    assert!(out.tts.is_some());
    // Nothing recognised: nothing translated, as with text NMT.
    let quiet = EngineSet::new(vec![
        loaded(ModelKind::Asr, "zh", None, text("")),
        LoadedEngine { speech_input: true, ..loaded(ModelKind::Nmt, "zh", Some("en"), text("echo")) },
    ]);
    let out = go(&quiet, &JobAssign { pipeline: Pipeline { use_tts: false, ..Pipeline::default() }, ..zh_en }).unwrap();
    assert_eq!(out.text_translated.as_deref(), Some(""));
}

#[test]
fn silence_skips_translation_and_speech() {
    let out = go(&engines(text("  "), err(EngineErrorKind::Backend), err(EngineErrorKind::Backend)), &job()).unwrap();
    assert_eq!((out.text_asr.as_deref(), out.text_translated.as_deref(), out.tts), (Some("  "), Some(""), None));
}

#[test]
fn stages_can_be_switched_off() {
    let mut j = job();
    j.pipeline = Pipeline { use_asr: true, use_nmt: false, use_tts: true };
    j.tgt_lang = "en".into();
    let set = EngineSet::new(vec![loaded(ModelKind::Asr, "en", None, text("hi")), loaded(ModelKind::Tts, "en", None, speech())]);
    let out = go(&set, &j).unwrap();
    assert_eq!((out.text_asr.as_deref(), out.text_translated, out.tts.is_some()), (Some("hi"), None, true), "speaks the recognised text");
}

#[test]
fn failures_carry_the_protocol_codes() {
    let set = engines(text("hello"), text("echo"), speech());
    let mut bad = job();
    bad.audio = "%%%".into();
    assert_eq!(go(&set, &bad).unwrap_err().0, JobErrorCode::InvalidAudio);
    bad.audio = audio::to_base64(&[1, 2, 3]).into();
    assert_eq!(go(&set, &bad).unwrap_err().0, JobErrorCode::InvalidAudio, "odd pcm16 length");
    bad.audio_format = AudioFormat::Opus;
    let (code, message) = go(&set, &bad).unwrap_err();
    assert_eq!(code, JobErrorCode::InvalidAudio, "three bytes are no Ogg Opus stream");
    assert!(message.contains("not an Ogg stream"), "{message}");

    let mut zh = job();
    zh.tgt_lang = "zh".into();
    assert_eq!(go(&set, &zh).unwrap_err(), (JobErrorCode::ModelNotAvailable, "no nmt model for en-US → zh".into()));

    let cases = [
        (engines(err(EngineErrorKind::InvalidInput), text("echo"), speech()), JobErrorCode::InvalidAudio, "asr (fake-asr): boom"),
        (engines(err(EngineErrorKind::Backend), text("echo"), speech()), JobErrorCode::InferenceBackendError, "asr (fake-asr): boom"),
        (engines(text("hi"), err(EngineErrorKind::Unsupported), speech()), JobErrorCode::ModelNotAvailable, "nmt (fake-nmt): boom"),
        (engines(text("hi"), err(EngineErrorKind::InvalidInput), speech()), JobErrorCode::InferenceBackendError, "nmt (fake-nmt): boom"),
        (engines(text("hi"), text("echo"), err(EngineErrorKind::Panic)), JobErrorCode::InferenceBackendError, "tts (fake-tts): boom"),
        (engines(text("hi"), text("echo"), text("not audio")), JobErrorCode::InferenceBackendError, "tts engine returned text"),
    ];
    for (set, code, message) in cases {
        assert_eq!(go(&set, &job()).unwrap_err(), (code, message.to_owned()));
    }
}

#[test]
fn a_cancelled_job_stops_at_the_next_stage_boundary() {
    // The ASR engine's call returns after the job was abandoned (it flips the flag).
    let cancel = Arc::new(AtomicBool::new(false));
    let asr = LoadedEngine {
        engine: Arc::new(Fake { answer: text("hello"), cancel_after: Some(cancel.clone()) }),
        ..loaded(ModelKind::Asr, "en", None, text("unused"))
    };
    let set =
        EngineSet::new(vec![asr, loaded(ModelKind::Nmt, "en", Some("es"), text("echo")), loaded(ModelKind::Tts, "es", None, speech())]);
    let outcome = run(&set, &job(), &cancel);
    assert_eq!(outcome.result.unwrap_err().code, JobErrorCode::Timeout);
    assert_eq!((outcome.timings.nmt_ms, outcome.timings.tts_ms), (0, 0), "no stage ran after the abandon");
}

fn tone(rate: u32, ms: u32) -> Vec<i16> {
    (0..rate * ms / 1000).map(|i| ((f64::from(i) * 0.05).sin() * 6000.0) as i16).collect()
}

#[test]
fn opus_in_is_decoded_at_its_rate_and_speech_goes_out_as_opus_when_asked() {
    let st = LoadedEngine { speech_input: true, ..loaded(ModelKind::Nmt, "en", Some("es"), text("echo")) };
    let tts = Ok(Response::Speech { samples: tone(22_050, 1_000), sample_rate: 22_050 });
    let set = EngineSet::new(vec![loaded(ModelKind::Asr, "en", None, text("hello")), st, loaded(ModelKind::Tts, "es", None, tts)]);
    for rate in [16_000, 48_000] {
        let opus = tolk_protocol::opus::encode(&tone(rate, 1_500), rate, Default::default()).unwrap();
        let j = JobAssign {
            src_lang: "en".into(),
            audio: audio::to_base64(&opus).into(),
            audio_format: AudioFormat::Opus,
            sample_rate: rate,
            tts_format: Some(AudioFormat::Opus),
            ..job()
        };
        let out = go(&set, &j).unwrap();
        // The engine got every sample, at the capture rate.
        assert_eq!(out.text_translated.as_deref(), Some(format!("<{} samples at {rate} en→es>", rate * 3 / 2).as_str()));
        let tts = out.tts.unwrap();
        assert_eq!((tts.format, tts.sample_rate), (AudioFormat::Opus, Some(24_000)), "22.05 kHz speech is coded at 24 kHz");
        let info = tolk_protocol::ogg_opus::inspect(&tts.bytes).unwrap();
        assert_eq!((info.head.input_sample_rate, info.duration_ms()), (22_050, 1_000));
        assert!(tts.bytes.len() < 4_000, "24 kbit/s: {} bytes for a second", tts.bytes.len());
    }
    // pcm16 asked: pcm16 with its rate.
    let j = JobAssign { tts_format: Some(AudioFormat::Pcm16), ..job() };
    let tts = go(&engines(text("hello"), text("echo"), speech()), &j).unwrap().tts.unwrap();
    assert_eq!((tts.format, tts.sample_rate, tts.bytes.len()), (AudioFormat::Pcm16, Some(22_050), 6));
}
