//! Opus on the wire, measured: bytes per second of speech in each
//! direction, ASR word error rate through the node's real engines, and the
//! SDK's encode/decode CPU, for pcm16 and Ogg Opus at 16, 24 and 32 kbit/s.
//!
//! ```text
//! cargo run -p tolk-e2e --example opus_bench            # all of it
//! TOLK_BENCH_WHISPER=0 cargo run -p tolk-e2e --example opus_bench   # PocketSphinx only
//! TOLK_BENCH_ASR=24,32 cargo run -p tolk-e2e --example opus_bench    # ASR only for these (pcm16,16,24,32)
//! ```
//!
//! Whisper base takes about 10 s of CPU per utterance on this machine's
//! debug build: the whole run is about 45 minutes; progress goes to stderr.
//!
//! Speech: 16 English sentences spoken by three flite voices (slt, rms,
//! awb; 16 kHz), 48 utterances. Each condition encodes every utterance as
//! the SDK does (`tolk_protocol::opus::encode`, complexity 5, the SDK's
//! default), decodes it as the node does (`audio::decode_bytes`), and
//! feeds the samples to the node's engine plugins, loaded with the node's
//! own loader: PocketSphinx (en-us) and whisper base (the `tolk-node
//! models` install). Downstream: the Spanish of each sentence (Apertium)
//! spoken by the eSpeak NG plugin, carried in `translation_result` frames as
//! wav (the node's default before Opus) and as Opus.
//!
//! Bytes are whole JSON frames (built with `tolk-protocol`), per second of
//! the audio they carry. CPU is the benchmark thread's own CPU time
//! (`/proc/thread-self/schedstat`), per second of audio.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use tolk_e2e::{build, node, scratch, speech};
use tolk_engine_sdk::Options;
use tolk_node::engine::plugin::{Library, PluginEngine};
use tolk_node::engine::{Engine, Request, Response};
use tolk_protocol::opus::{self, OpusSettings};
use tolk_protocol::session::{TranslationResult, Utterance};
use tolk_protocol::{AudioFormat, ClientToServer, Message as _, ServerToClient, audio};

const TEXTS: &[&str] = &[
    "the weather is nice today",
    "where is the train station",
    "i would like a cup of coffee",
    "how much does this cost",
    "please open the window",
    "the book is on the table",
    "thank you very much for your help",
    "my brother lives in a small house",
    "we are going to the market tomorrow morning",
    "can you tell me the way to the hospital",
    "the children are playing in the garden",
    "i need to buy a ticket for the next bus",
    "she has been working here for three years",
    "the restaurant opens at seven in the evening",
    "do you know where i can find a pharmacy",
    "it is very cold outside so take a warm coat",
];
const VOICES: &[&str] = &["slt", "rms", "awb"];
const RATE: u32 = 16_000;
/// The conditions: `None` is pcm16.
const BITRATES: [Option<u32>; 4] = [None, Some(16_000), Some(24_000), Some(32_000)];
/// The SDK's default complexity.
const COMPLEXITY: u8 = 5;

fn flite(dir: &Path, voice: &str, text: &str) -> Vec<i16> {
    let name: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let wav = dir.join(format!("{voice}-{name}.wav"));
    let ok = Command::new("flite").args(["-voice", voice, "-t", text, "-o"]).arg(&wav).status().unwrap().success();
    assert!(ok, "flite failed");
    let mut r = hound::WavReader::open(&wav).unwrap();
    let rate = r.spec().sample_rate;
    let samples: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>().unwrap();
    opus::resample(&samples, rate, RATE)
}

fn apertium(text: &str) -> String {
    let mut child = Command::new("apertium").args(["-u", "eng-spa"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out.trim().to_owned()
}

fn plugin(package: &str, options: &[(&str, String)]) -> PluginEngine {
    let lib = Library::open(&build::engine(package)).unwrap();
    let options = Options::from_pairs(options.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    PluginEngine::create(lib, &options).unwrap()
}

fn asr(engine: &PluginEngine, samples: &[i16], rate: u32) -> String {
    match engine.process(Request::Asr { samples, sample_rate: rate, lang: "en" }).unwrap() {
        Response::Text(t) => t,
        Response::Speech { .. } => panic!("asr returned speech"),
    }
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn label(bitrate: Option<u32>) -> String {
    bitrate.map_or("pcm16".to_owned(), |b| format!("opus {} kbit/s", b / 1000))
}

/// The wire bytes of `samples` as the SDK sends them, and what the node decodes.
fn wire(samples: &[i16], bitrate: Option<u32>) -> (Vec<u8>, AudioFormat, Vec<i16>, u32) {
    match bitrate {
        None => (audio::encode_pcm16(samples), AudioFormat::Pcm16, samples.to_vec(), RATE),
        Some(b) => {
            let bytes = opus::encode(samples, RATE, OpusSettings { bitrate_bps: b, complexity: COMPLEXITY }).unwrap();
            let pcm = audio::decode_bytes(&bytes, AudioFormat::Opus, RATE).unwrap();
            (bytes, AudioFormat::Opus, pcm.samples, pcm.sample_rate)
        }
    }
}

fn utterance_frame(bytes: &[u8], format: AudioFormat) -> usize {
    let u = Utterance {
        session_id: format!("s-{}", "0".repeat(32)),
        utterance_index: 17,
        manual_cut: false,
        src_lang: "en".into(),
        tgt_lang: "es".into(),
        dialect: None,
        features: None,
        audio: audio::to_base64(bytes).into(),
        audio_format: format,
        sample_rate: RATE,
    };
    ClientToServer::Utterance(u).to_json().len()
}

fn result_frame(text: &str, bytes: &[u8], format: AudioFormat, rate: Option<u32>) -> usize {
    let r = TranslationResult {
        session_id: format!("s-{}", "0".repeat(32)),
        utterance_index: 17,
        job_id: format!("j-{}", "0".repeat(32)),
        text_asr: text.into(),
        text_translated: text.into(),
        tts_audio: Some(audio::to_base64(bytes).into()),
        tts_format: Some(format),
        tts_sample_rate: rate,
        extra: None,
    };
    ServerToClient::TranslationResult(r).to_json().len()
}

fn main() {
    let dir = scratch("opus-bench");
    let with_whisper = std::env::var("TOLK_BENCH_WHISPER").map_or(true, |v| v != "0");
    let asr_for = std::env::var("TOLK_BENCH_ASR").unwrap_or_else(|_| "pcm16,16,24,32".into());
    let run_asr = |bitrate: Option<u32>| {
        let name = bitrate.map_or("pcm16".to_owned(), |b| (b / 1000).to_string());
        asr_for.split(',').any(|c| c.trim() == name)
    };
    let mut clips = Vec::new();
    for voice in VOICES {
        for text in TEXTS {
            clips.push((*text, flite(&dir, voice, text)));
        }
    }
    let speech_s: f64 = clips.iter().map(|(_, c)| c.len() as f64 / f64::from(RATE)).sum();
    let words: usize = clips.iter().map(|(t, _)| speech::words(t).len()).sum();
    println!("speech: {} utterances, {speech_s:.1} s, {words} words (flite {VOICES:?}, 16 kHz)\n", clips.len());

    // --- Upstream bytes and ASR word error rate ---
    let sphinx = plugin("tolk-engine-pocketsphinx", &[]);
    let whisper = with_whisper.then(|| {
        let model = node::model_file("whisper-base", "ggml-base.bin");
        plugin("tolk-engine-whisper", &[("model", model), ("threads", "2".into())])
    });
    println!("| utterances (phone → dispatcher) | bytes/s of speech | vs pcm16 | PocketSphinx WER | whisper base WER |");
    println!("|---|---:|---:|---:|---:|");
    let mut pcm_up = 0.0;
    for bitrate in BITRATES {
        let (mut bytes, mut sphinx_errors, mut whisper_errors) = (0usize, 0usize, 0usize);
        let asr_here = run_asr(bitrate);
        for (i, (text, clip)) in clips.iter().enumerate() {
            let (wire_bytes, format, decoded, rate) = wire(clip, bitrate);
            bytes += utterance_frame(&wire_bytes, format);
            if !asr_here {
                continue;
            }
            sphinx_errors += speech::word_errors(text, &asr(&sphinx, &decoded, rate));
            if let Some(w) = &whisper {
                whisper_errors += speech::word_errors(text, &asr(w, &decoded, rate));
            }
            eprintln!("{}: {}/{}", label(bitrate), i + 1, clips.len());
        }
        let per_s = bytes as f64 / speech_s;
        if bitrate.is_none() {
            pcm_up = per_s;
        }
        let wer = |e: usize| if asr_here { format!("{:.1} %", e as f64 * 100.0 / words as f64) } else { "(not run)".into() };
        let whisper_wer = if whisper.is_some() { wer(whisper_errors) } else { "–".into() };
        println!(
            "| {} | {per_s:.0} ({:.1} kbit/s) | {:.1} % | {} | {whisper_wer} |",
            label(bitrate),
            per_s * 8.0 / 1000.0,
            per_s * 100.0 / pcm_up,
            wer(sphinx_errors)
        );
    }

    // --- Downstream bytes: the node's speech in translation_result ---
    let espeak = plugin("tolk-engine-espeak", &[("voice", "es".into())]);
    let mut spoken = Vec::new();
    for text in TEXTS {
        let es = apertium(text);
        match espeak.process(Request::Tts { text: &es, lang: "es" }).unwrap() {
            Response::Speech { samples, sample_rate } => spoken.push((es, samples, sample_rate)),
            Response::Text(_) => panic!("tts returned text"),
        }
    }
    let tts_s: f64 = spoken.iter().map(|(_, s, r)| s.len() as f64 / f64::from(*r)).sum();
    println!("\nspeech back: {} results, {tts_s:.1} s (eSpeak NG es, {} Hz)\n", spoken.len(), spoken[0].2);
    println!("| results (dispatcher → phone) | bytes/s of speech | vs wav |");
    println!("|---|---:|---:|");
    let mut wav_down = 0.0;
    for bitrate in BITRATES {
        let mut bytes = 0usize;
        for (text, samples, rate) in &spoken {
            bytes += match bitrate {
                None => result_frame(text, &audio::encode_wav(samples, *rate), AudioFormat::Wav, None),
                Some(b) => {
                    let opus = opus::encode(samples, *rate, OpusSettings { bitrate_bps: b, complexity: 10 }).unwrap();
                    result_frame(text, &opus, AudioFormat::Opus, Some(opus::coding_rate(*rate)))
                }
            };
        }
        let per_s = bytes as f64 / tts_s;
        if bitrate.is_none() {
            wav_down = per_s;
        }
        let name = if bitrate.is_none() { "wav (pcm16)".to_owned() } else { label(bitrate) };
        println!("| {name} | {per_s:.0} ({:.1} kbit/s) | {:.1} % |", per_s * 8.0 / 1000.0, per_s * 100.0 / wav_down);
    }

    // --- SDK CPU per second of audio ---
    println!("\n| SDK CPU per second of 16 kHz speech | complexity 0 | complexity 5 (default) | complexity 10 |");
    println!("|---|---:|---:|---:|");
    let reps = 3;
    for b in [16_000, 24_000, 32_000] {
        let mut cells = Vec::new();
        for complexity in [0u8, 5, 10] {
            let settings = OpusSettings { bitrate_bps: b, complexity };
            let t0 = thread_cpu_ns();
            for _ in 0..reps {
                for (_, clip) in &clips {
                    std::hint::black_box(opus::encode(clip, RATE, settings).unwrap());
                }
            }
            let ns = thread_cpu_ns() - t0;
            cells.push(format!("{:.2} ms", ns as f64 / 1e6 / (speech_s * f64::from(reps))));
        }
        println!("| encode, opus {} kbit/s | {} |", b / 1000, cells.join(" | "));
    }
    for b in [16_000, 24_000, 32_000] {
        let encoded: Vec<Vec<u8>> =
            clips.iter().map(|(_, c)| opus::encode(c, RATE, OpusSettings { bitrate_bps: b, complexity: COMPLEXITY }).unwrap()).collect();
        let t0 = thread_cpu_ns();
        for _ in 0..reps {
            for e in &encoded {
                std::hint::black_box(opus::decode(e, RATE).unwrap());
            }
        }
        let ns = thread_cpu_ns() - t0;
        println!("| decode, opus {} kbit/s (any complexity) | {:.2} ms | | |", b / 1000, ns as f64 / 1e6 / (speech_s * f64::from(reps)));
    }
    println!(
        "\n(libopus {}; CPU of one thread, this machine: {} cores)",
        opus_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn opus_version() -> String {
    Command::new("pkg-config")
        .args(["--modversion", "opus"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
