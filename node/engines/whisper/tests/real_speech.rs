//! The engine on real models and real (synthesised) speech: the ggml files
//! the project's own converter made (`tolk-node models install whisper-base
//! whisper-tiny-en`, run by scripts/setup.sh) load in whisper.cpp and
//! transcribe; Spanish speech is translated to English; silence and very
//! short audio give empty text. Speech comes from eSpeak NG and flite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::PathBuf;
use std::process::Command;

use tolk_engine_sdk::{Asr, Options, SpeechTranslation};
use tolk_engine_whisper::Whisper;

/// The models folder, as `tolk-node models` chooses it.
fn model(id: &str, file: &str) -> String {
    let dir = std::env::var_os("TOLK_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("tolk/models")
    });
    let path = dir.join(id).join(file);
    assert!(path.is_file(), "{} is missing: run scripts/setup.sh (tolk-node models install {id})", path.display());
    path.display().to_string()
}

fn engine(id: &str, file: &str, extra: &[(&str, &str)]) -> Whisper {
    let mut pairs = vec![("model".to_owned(), model(id, file))];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Whisper::create(&Options::from_pairs(pairs)).unwrap()
}

/// `text` spoken by `program` (`espeak-ng` with a voice, or `flite`), as pcm16 and its rate.
fn speak(program: &str, voice: &str, text: &str) -> (Vec<i16>, u32) {
    let dir = std::env::temp_dir().join(format!("tolk-whisper-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join(format!("{:x}.wav", text.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))));
    let status = match program {
        "flite" => Command::new("flite").args(["-voice", voice, "-t", text, "-o"]).arg(&wav).status(),
        _ => Command::new("espeak-ng").args(["-v", voice, "-s", "130", "-w"]).arg(&wav).arg(text).status(),
    };
    assert!(status.unwrap().success(), "{program} failed: run scripts/setup.sh");
    let mut r = hound::WavReader::open(&wav).unwrap();
    let rate = r.spec().sample_rate;
    (r.samples::<i16>().collect::<Result<_, _>>().unwrap(), rate)
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()).filter(|w| !w.is_empty()).collect()
}

#[test]
fn tiny_en_from_our_converter_transcribes_english() {
    let mut w = engine("whisper-tiny-en", "ggml-tiny.en.bin", &[]);
    let (pcm, rate) = speak("flite", "slt", "The weather is nice today.");
    let text = w.transcribe(&pcm, rate, "en-US").unwrap();
    assert_eq!(words(&text), ["the", "weather", "is", "nice", "today"], "{text:?}");
}

#[test]
fn base_transcribes_and_translates_spanish_in_the_jobs_language() {
    let mut w = engine("whisper-base", "ggml-base.bin", &[("languages", "es,en,zh")]);
    // eSpeak NG's Spanish is robotic; these sentences it speaks clearly enough.
    let (pcm, rate) = speak("espeak-ng", "es", "El libro está sobre la mesa.");
    let text = w.transcribe(&pcm, rate, "es-MX").unwrap();
    assert_eq!(words(&text), ["el", "libro", "está", "sobre", "la", "mesa"], "{text:?}");
    let (pcm, rate) = speak("espeak-ng", "es", "¿Dónde está la estación de tren?");
    let english = w.translate_speech(&pcm, rate, "es", "en").unwrap();
    let got = words(&english);
    for w in ["where", "station"] {
        assert!(got.iter().any(|h| h == w), "{w} not in {english:?}");
    }
    // Only English is a translation target; an unlisted language is refused.
    assert!(w.translate_speech(&pcm, rate, "es", "de").is_err());
    assert!(w.transcribe(&pcm, rate, "fr").is_err());
}

#[test]
fn silence_and_very_short_audio_give_empty_text() {
    let mut w = engine("whisper-base", "ggml-base.bin", &[]);
    assert_eq!(w.transcribe(&vec![0; 16_000 * 3], 16_000, "en").unwrap(), "");
    // Quiet hiss (about -60 dBFS): below the silence gate.
    let hiss: Vec<i16> = (0..16_000 * 2).map(|i| (i * 7919 % 61) as i16 - 30).collect();
    assert_eq!(w.transcribe(&hiss, 16_000, "en").unwrap(), "");
    // 150 ms of a loud word: too short to be an utterance.
    let (pcm, rate) = speak("espeak-ng", "en", "Hello there, how are you?");
    let short = &pcm[..(rate as usize * 15 / 100)];
    assert_eq!(w.transcribe(short, rate, "en").unwrap(), "");
    assert_eq!(w.translate_speech(&vec![0; 16_000], 16_000, "zh", "en").unwrap(), "");
}
