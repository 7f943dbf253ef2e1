//! Real speech in real languages, end to end: the dispatcher and a node
//! binary with the neural engines on the installed models (whisper base,
//! Kokoro, piper, Apertium), driven by the SDK.
//!
//! - zh → en: Chinese spoken by Kokoro; `text_asr` within 15 % CER of what
//!   was said, `text_translated` (whisper's translate task) holds the
//!   expected English content words, and the English speech (piper),
//!   transcribed back by whisper tiny.en, within 25 % WER of `text_translated`.
//! - en → es: English spoken by eSpeak NG (the voice PocketSphinx fails on):
//!   `text_asr` within 20 % WER, Apertium's Spanish, Kokoro's Spanish speech.
//! - es → en: Spanish spoken by Kokoro, whisper translate, piper.
//!
//! Every wait is bounded by generous limits; nothing asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use tolk_e2e::neural::{self, cer_chars, char_errors};
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, word_errors, words};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, scratch};
use tolk_sdk::Translation;

/// The three tests run one at a time: each node loads two whisper models,
/// Kokoro and piper, and each test keeps both cores busy on its own.
/// (tokio's Mutex: each test has its own runtime, and a failed test poisons nothing.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Dispatcher settings for slow engines on 2 cores: jobs may wait and run long.
const DISPATCHER: &str = "[core]\nadmission_wait_ms = 300000\njob_timeout_base_ms = 300000\n";

/// Runs `clips` (16 kHz, one utterance each) from `src` to `tgt` through a
/// fresh dispatcher and a neural node; returns the results in order.
async fn translate(name: &str, src: &str, tgt: &str, clips: &[Vec<i16>]) -> Vec<Translation> {
    let dir = scratch(name);
    let dispatcher = DispatcherProcess::start(&dir, DISPATCHER, &[]).await;
    let mut node = NodeProcess::start(&dir, "node", &dispatcher.ws_base(), &NodeSetup::new(Engines::Neural), false);
    node.registered(1).await;
    let mut config = app::config(&dispatcher.session_url());
    // These tests measure the engines on the exact audio: utterances go as
    // pcm16 and speech comes back as wav (its rate is checked below). Opus
    // is measured by tests/examples/opus_bench.rs and tests/tests/opus.rs;
    // at 24 kbit/s whisper base's zh → en translation of "今天天气很好。" said
    // "It's very good today." (its ASR stayed exact), see README.
    config.session.audio_encoding = tolk_sdk::AudioEncoding::Pcm16;
    config.session.tts_format = tolk_sdk::AudioFormat::Wav;
    config.session.src_lang = src.into();
    config.session.tgt_lang = tgt.into();
    config.session.close_timeout_ms = 600_000;
    let mut app = App::start(config);
    let mut at = 0;
    for c in clips {
        app.push_utterance(c, at);
        at += c.len() as u64 * 1000 / u64::from(speech::RATE) + 500;
    }
    app.close(Duration::from_secs(600)).await;
    app.assert_one_result_each_in_order();
    let results: Vec<Translation> = app.results().into_iter().cloned().collect();
    assert_eq!(results.len(), clips.len(), "{}\nnode log:\n{}", app.summary(), node.log());
    results
}

/// The speech of a result as 16-bit samples and rate.
fn wav(t: &Translation) -> (Vec<i16>, u32) {
    let bytes = t.tts_audio.clone().unwrap_or_else(|| panic!("#{} has no speech", t.index));
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let rate = r.spec().sample_rate;
    (r.into_samples::<i16>().collect::<Result<_, _>>().unwrap(), rate)
}

/// Apertium's Spanish for `text`, from the `apertium` program itself.
fn apertium(text: &str) -> String {
    let mut child = Command::new("apertium").args(["-u", "eng-spa"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out.trim().to_owned()
}

/// Checks English speech against `text_translated` (tiny.en transcribes it
/// back); returns (word errors, reference words).
fn english_speech_matches(results: &[Translation]) -> (usize, usize) {
    let tiny = neural::tiny_en();
    let (mut errors, mut total) = (0, 0);
    for t in results {
        let (samples, rate) = wav(t);
        assert_eq!(rate, 22_050, "piper's rate");
        assert!(speech::rms(&samples) > 300.0, "#{}: near silence", t.index);
        let heard = neural::transcribe_wav(&tiny, t.tts_audio.as_deref().unwrap());
        let e = word_errors(&t.text_translated, &heard);
        println!("  speech #{}: {:?} heard as {heard:?} ({e} errors)", t.index, t.text_translated);
        errors += e;
        total += words(&t.text_translated).len();
    }
    (errors, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chinese_speech_comes_back_as_english_text_and_speech() {
    let _one_at_a_time = SERIAL.lock().await;
    // (spoken, expected English content words of whisper's translation)
    let sentences: [(&str, &[&str]); 5] = [
        ("今天天气很好。", &["weather", "today"]),
        ("我想买一张去北京的火车票。", &["beijing"]),
        ("请问火车站在哪里？", &["where"]),
        ("我喜欢喝茶。", &["like", "tea"]),
        ("明天我们去公园。", &["tomorrow", "park"]),
    ];
    let kokoro = neural::kokoro();
    let clips: Vec<Vec<i16>> = sentences.iter().map(|(s, _)| neural::synthesize(&kokoro, s, "zh")).collect();
    let results = translate("zh-en", "zh", "en", &clips).await;
    let (mut char_err, mut chars) = (0, 0);
    for (t, (spoken, content)) in results.iter().zip(sentences) {
        let e = char_errors(spoken, &t.text_asr);
        println!("#{} {spoken} → {:?} ({e} char errors) → {:?}", t.index, t.text_asr, t.text_translated);
        char_err += e;
        chars += cer_chars(spoken).len();
        let english = words(&t.text_translated);
        for w in content {
            assert!(english.iter().any(|x| x.starts_with(w)), "#{}: {w:?} not in {:?}", t.index, t.text_translated);
        }
    }
    let cer = char_err as f64 / chars as f64;
    println!("zh ASR CER {:.1}% ({char_err} of {chars})", cer * 100.0);
    assert!(cer <= 0.15, "CER {:.1}% > 15%", cer * 100.0);
    let (e, n) = english_speech_matches(&results);
    println!("en speech WER {:.1}% ({e} of {n})", 100.0 * e as f64 / n as f64);
    assert!(e as f64 <= 0.25 * n as f64, "speech WER {e}/{n} > 25%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_english_is_recognised_translated_by_apertium_and_spoken_by_kokoro() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = scratch("en-es-speech");
    let texts = [
        "I would like to buy a train ticket to Madrid. Where is the station?",
        "The weather is nice today.",
        "My brother lives in a small house.",
        "Please open the window.",
    ];
    let clips: Vec<Vec<i16>> = texts.iter().map(|t| neural::espeak(&dir, "en", t)).collect();
    let results = translate("en-es", "en", "es", &clips).await;
    let (mut errors, mut total) = (0, 0);
    for (t, text) in results.iter().zip(texts) {
        let e = word_errors(text, &t.text_asr);
        println!("#{} {text:?} → {:?} ({e} errors) → {:?}", t.index, t.text_asr, t.text_translated);
        errors += e;
        total += words(text).len();
        assert_eq!(t.text_translated, apertium(&t.text_asr), "Apertium's Spanish");
        let (samples, rate) = wav(t);
        assert_eq!(rate, 24_000, "Kokoro's rate");
        let secs = samples.len() as f64 / f64::from(rate);
        assert!(secs > 0.5 && speech::rms(&samples) > 300.0, "#{}: {secs:.2} s", t.index);
    }
    println!("en ASR WER {:.1}% ({errors} of {total})", 100.0 * errors as f64 / total as f64);
    assert!(errors as f64 <= 0.2 * total as f64, "WER {errors}/{total} > 20%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spanish_speech_comes_back_as_english_through_whisper_translate_and_piper() {
    let _one_at_a_time = SERIAL.lock().await;
    let sentences: [(&str, &[&str]); 4] = [
        ("¿Dónde está la estación de tren?", &["where", "station"]),
        ("Quiero un vaso de agua, por favor.", &["glass", "water"]),
        ("El libro está sobre la mesa.", &["book", "table"]),
        ("Mi hermano vive en Madrid.", &["brother", "madrid"]),
    ];
    let kokoro = neural::kokoro();
    let clips: Vec<Vec<i16>> = sentences.iter().map(|(s, _)| neural::synthesize(&kokoro, s, "es")).collect();
    let results = translate("es-en", "es", "en", &clips).await;
    for (t, (spoken, content)) in results.iter().zip(sentences) {
        println!("#{} {spoken} → {:?} → {:?}", t.index, t.text_asr, t.text_translated);
        assert!(!t.text_asr.is_empty());
        let english = words(&t.text_translated);
        for w in content {
            assert!(english.iter().any(|x| x.starts_with(w)), "#{}: {w:?} not in {:?}", t.index, t.text_translated);
        }
    }
    let (e, n) = english_speech_matches(&results);
    assert!(e as f64 <= 0.25 * n as f64, "speech WER {e}/{n} > 25%");
}

/// The canary set the project ships (`dispatcher/canaries/`) against the
/// engines it ships: a neural node on probation gets every canary of its
/// three pairs once (en → es, zh → en, es → en: seven) and must pass them
/// all, scored by the dispatcher's own rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_canaries_pass_on_the_shipped_neural_engines() {
    let _serial = SERIAL.lock().await;
    let dir = scratch("canaries-neural");
    let canaries = tolk_e2e::workspace_root().join("dispatcher/canaries/canaries.toml");
    let config = format!("{DISPATCHER}[trust]\ncanaries = \"{}\"\nprobation_canaries = 7\ncanary_rate = 0.0\n", canaries.display());
    let dispatcher = DispatcherProcess::start(&dir, &config, &[]).await;
    let mut node = NodeProcess::start(&dir, "node", &dispatcher.ws_base(), &NodeSetup::new(Engines::Neural), false);
    let node_id = node.registered(1).await;
    let trust = tolk_e2e::eventually("the neural node leaves probation", Duration::from_secs(1200), || async {
        let t = dispatcher.admin_node(&node_id).await.map(|n| n["trust"].clone())?;
        (t["state"] != "probation").then_some(t)
    })
    .await;
    assert_eq!(trust["state"], "trusted", "{trust}\nnode log:\n{}", node.log());
    assert_eq!((trust["canaries_passed"].as_u64(), trust["canaries_failed"].as_u64()), (Some(7), Some(0)), "{trust}");
    node.kill();
}
