//! Streams a WAV file to a dispatcher in real time, as a microphone would,
//! and prints every event: each utterance the VAD cuts, each result (in
//! order), connection changes and errors.
//!
//! ```bash
//! # against a running dispatcher (with a node that serves en → de):
//! cargo run -p tolk-sdk --example stream_wav -- --url ws://127.0.0.1:8080/ws/session --src en --tgt de speech.wav
//! # self-contained: an in-process dispatcher plus the test suite's fake node
//! # (it answers with the length of the audio it got, not a translation):
//! espeak-ng -w /tmp/hello.wav "Hello there. How are you today?" && sox /tmp/hello.wav -r 16000 /tmp/hello16k.wav
//! cargo run -p tolk-sdk --example stream_wav -- --local /tmp/hello16k.wav
//! ```
//!
//! The file must be 16-bit PCM at 8, 16, 32 or 48 kHz (stereo is mixed
//! down); `--speed 4` streams four times faster than real time; `--out DIR`
//! writes each result's synthesised speech to `DIR/utterance-N.wav`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example: fail loudly

#[path = "../tests/support/fake_node.rs"]
mod fake_node;

use std::time::{Duration, Instant};

use tolk_sdk::{Client, ClientConfig, ConnectionState, Event};

struct Args {
    url: Option<String>,
    src: String,
    tgt: String,
    speed: f64,
    local: bool,
    wav: String,
    out: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!("usage: stream_wav [--url ws://HOST:PORT/ws/session | --local] [--src en] [--tgt de] [--speed 1.0] [--out DIR] FILE.wav");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args { url: None, src: "en".into(), tgt: "de".into(), speed: 1.0, local: false, wav: String::new(), out: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => args.url = Some(it.next().unwrap_or_else(|| usage())),
            "--src" => args.src = it.next().unwrap_or_else(|| usage()),
            "--tgt" => args.tgt = it.next().unwrap_or_else(|| usage()),
            "--speed" => args.speed = it.next().and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or_else(|| usage()),
            "--local" => args.local = true,
            "--out" => args.out = Some(it.next().unwrap_or_else(|| usage()).into()),
            "-h" | "--help" => usage(),
            _ if args.wav.is_empty() && !a.starts_with("--") => args.wav = a,
            _ => usage(),
        }
    }
    if args.wav.is_empty() || (args.url.is_none() && !args.local) {
        usage();
    }
    args
}

fn read_wav(path: &str) -> (Vec<i16>, u32) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let spec = reader.spec();
    assert!(spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 16, "{path}: want 16-bit PCM");
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<i16> = reader.into_samples::<i16>().collect::<Result<_, _>>().expect("read samples");
    let mono =
        interleaved.chunks_exact(channels).map(|f| (f.iter().map(|&s| i32::from(s)).sum::<i32>() / channels as i32) as i16).collect();
    (mono, spec.sample_rate)
}

/// Writes a result's speech as a playable wav (pcm16 is wrapped in a header).
fn save_speech(dir: &std::path::Path, r: &tolk_sdk::Translation) {
    let Some(audio) = &r.tts_audio else { return };
    let wav = match (r.tts_format, r.tts_sample_rate) {
        (Some(tolk_protocol::AudioFormat::Pcm16), Some(rate)) => {
            let samples: Vec<i16> = audio.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
            tolk_protocol::audio::encode_wav(&samples, rate)
        }
        (Some(tolk_protocol::AudioFormat::Wav), _) => audio.clone(),
        _ => return,
    };
    let path = dir.join(format!("utterance-{}.wav", r.index));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, wav)) {
        Ok(()) => println!("         speech written to {}", path.display()),
        Err(e) => println!("         cannot write {}: {e}", path.display()),
    }
}

fn print_event(start: Instant, event: &Event) {
    let t = start.elapsed().as_secs_f64();
    match event {
        Event::State(s) => println!("[{t:6.2}s] state: {s:?}"),
        Event::Queued(q) => {
            println!(
                "[{t:6.2}s] utterance #{} cut: {:.2}–{:.2} s{}",
                q.index,
                q.start_ms as f64 / 1e3,
                q.end_ms as f64 / 1e3,
                if q.manual_cut { " (manual)" } else { "" }
            )
        }
        Event::Result(r) => {
            let tts = r.tts_audio.as_ref().map_or(String::new(), |a| format!(" [+{} bytes of speech]", a.len()));
            println!("[{t:6.2}s] result #{}: {:?} → {:?}{tts}", r.index, r.text_asr, r.text_translated);
        }
        Event::Failed(f) => println!("[{t:6.2}s] failed #{}: {} {}", f.index, f.code, f.message),
        Event::Error(e) => println!("[{t:6.2}s] error: {e}"),
    }
}

fn main() {
    let args = parse_args();
    let (samples, rate) = read_wav(&args.wav);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = match &args.url {
        Some(url) => url.clone(),
        None => runtime.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(
                tolk_dispatcher::shell::Dispatcher::new(tolk_dispatcher::Config::default())
                    .expect("the default configuration")
                    .run(listener, std::future::pending()),
            );
            let node = fake_node::start(&format!("ws://{addr}"), fake_node::Behaviour { delay_ms: 100, stagger_ms: 0 }).await;
            println!("local dispatcher on {addr}, fake node {}", node.node_id);
            std::mem::forget(node);
            format!("ws://{addr}/ws/session")
        }),
    };

    let mut config = ClientConfig::new(url);
    config.session.src_lang = args.src.clone();
    config.session.tgt_lang = args.tgt.clone();
    config.chunker.sample_rate = rate;
    // Neural engines on a small CPU take seconds per utterance: wait for them.
    config.session.close_timeout_ms = 120_000;
    let start = Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let out = args.out.clone();
    let client = Client::start(config, move |event: Event| {
        print_event(start, &event);
        if let (Event::Result(r), Some(dir)) = (&event, &out) {
            save_speech(dir, r);
        }
        if matches!(event, Event::State(ConnectionState::Closed { .. })) {
            let _ = done_tx.send(());
        }
    })
    .unwrap_or_else(|e| panic!("cannot start the client: {e}"));

    // 20 ms pieces, paced to (a multiple of) real time.
    let piece = rate as usize / 50;
    for (i, chunk) in samples.chunks(piece).enumerate() {
        let due = Duration::from_secs_f64((i * piece) as f64 / f64::from(rate) / args.speed);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if let Err(e) = client.push_audio(chunk) {
            println!("push failed: {e}");
            break;
        }
    }
    println!("[{:6.2}s] end of file: closing (waits for the outstanding results)", start.elapsed().as_secs_f64());
    client.close().expect("close");
    let _ = done_rx.recv_timeout(Duration::from_secs(60));
    client.wait_closed(Duration::from_secs(5));
}
