//! End to end: a real dispatcher (in-process, on 127.0.0.1:0), the real
//! `tolk-node` binary with the shipped engines (pocketsphinx, apertium,
//! espeak-ng), and a session client sending English sentences synthesised
//! with flite as utterances over a WebSocket. Checks the word error rate of
//! `text_asr`, that `text_translated` is Apertium's Spanish, that `tts_audio`
//! is speech; prints WER and per-stage timings (`-- --nocapture`).
//! Also: the node keeps its identity across restarts and registers afresh
//! when a restarted dispatcher no longer knows it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;
use tolk_dispatcher::Config;
use tolk_node::engine::plugin::{Library, PluginEngine};
use tolk_node::engine::{Engine, Request, Response};
use tolk_protocol::{AudioFormat, audio};

const SENTENCES: &[&str] = &[
    "the weather is nice today",
    "where is the train station",
    "i would like a cup of coffee",
    "how much does this cost",
    "please open the window",
    "the children are playing in the park",
    "we are going to the market tomorrow",
    "can you help me find my keys",
    "the book is on the table",
    "thank you very much for your help",
    "i am very happy to see you",
    "my brother lives in a small house",
];

// ------------------------------------------------------------------ helpers

struct Dispatcher {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tolk_dispatcher::Error>>,
}

/// A dispatcher whose RNG (ids, tokens) is seeded with `seed`. Jobs may wait
/// in its queue for two minutes: the test sends every utterance at once.
fn start_dispatcher(listener: std::net::TcpListener, seed: u64) -> Dispatcher {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = Config { admin_token: Some("admin-secret".into()), ..Config::default() };
    config.core.admission_wait_ms = 120_000;
    let task = tokio::spawn(tolk_dispatcher::shell::seeded(config, seed).run(listener, async move {
        let _ = rx.await;
    }));
    Dispatcher { addr, stop: Some(tx), task }
}

impl Dispatcher {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("dispatcher stops").unwrap().unwrap();
    }
}

/// The node binary, killed when dropped.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    fn start(dispatcher: SocketAddr, config: &Path, state_dir: &Path, log: PathBuf) -> Self {
        Self::start_url(&format!("ws://{dispatcher}"), config, state_dir, log)
    }

    fn start_url(url: &str, config: &Path, state_dir: &Path, log: PathBuf) -> Self {
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tolk-node"))
            .arg("--dispatcher")
            .arg(url)
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        // The node colours its log only on a terminal: a log file is plain text.
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` `count` times.
    async fn wait_for(&mut self, needle: &str, count: usize) {
        let started = Instant::now();
        while self.log().matches(needle).count() < count {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tolk-node exited ({status}) before {needle:?}:\n{}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no {needle:?} in 60 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "tolk-node did not exit:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word-level Levenshtein distance.
fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut cur = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(r != h)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[hypothesis.len()]
}

fn apertium(text: &str) -> String {
    let mut child = Command::new("apertium").args(["-u", "eng-spa"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out.trim().to_owned()
}

fn http_post(addr: SocketAddr, path: &str, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Parses `key=123` out of a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|t| t.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok())
}

/// The stored node id. The node logs "registered" before its shell writes
/// the file, so wait (boundedly) for the file rather than trust the log.
fn node_id_in(state_dir: &Path) -> String {
    for _ in 0..200 {
        if let Ok(Some(id)) = tolk_node::identity::load(state_dir) {
            return id.node_id;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no identity stored in {} within 5 s", state_dir.display());
}

fn engine_entry(stage: &str, package: &str, model_id: &str, langs: &str, options: &str) -> String {
    format!(
        "[[engine]]\nstage = \"{stage}\"\nlibrary = \"{}\"\nmodel_id = \"{model_id}\"\n{langs}\n[engine.options]\n{options}\n\n",
        support::plugin(package).display()
    )
}

async fn recv(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next()).await.expect("a frame in time").expect("open").unwrap();
        if let Ws::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] != "server_heartbeat" {
                return v;
            }
        }
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn english_speech_is_recognised_translated_and_spoken_through_a_real_node() {
    // English speech from flite, through the node's own plugin loader.
    let flite = PluginEngine::create(Library::open(&support::plugin("tolk-engine-flite")).unwrap(), &Default::default()).unwrap();
    let started = Instant::now();
    let speech: Vec<(Vec<i16>, u32)> = SENTENCES
        .iter()
        .map(|s| match flite.process(Request::Tts { text: s, lang: "en" }).unwrap() {
            Response::Speech { samples, sample_rate } => (samples, sample_rate),
            other => panic!("{other:?}"),
        })
        .collect();
    let audio_s: f64 = speech.iter().map(|(s, r)| s.len() as f64 / f64::from(*r)).sum();
    eprintln!("flite: {} sentences, {audio_s:.1} s of speech in {} ms", SENTENCES.len(), started.elapsed().as_millis());

    let dir = support::temp_dir("e2e");
    let config = dir.join("node.toml");
    let mut text = String::from("max_jobs = 4\nheartbeat_ms = 1000\n\n");
    text += &engine_entry("asr", "tolk-engine-pocketsphinx", "pocketsphinx-en-us", "src_lang = \"en\"\ninstances = 2", "");
    text += &engine_entry("nmt", "tolk-engine-apertium", "apertium-eng-spa", "src_lang = \"en\"\ntgt_lang = \"es\"", "mode = \"eng-spa\"");
    text += &engine_entry("tts", "tolk-engine-espeak", "espeak-ng-es", "src_lang = \"es\"", "voice = \"es\"");
    text += &engine_entry("tts", "tolk-engine-flite", "flite-slt", "src_lang = \"en\"", "voice = \"slt\"");
    std::fs::write(&config, text).unwrap();

    let dispatcher = start_dispatcher(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), 1);
    let mut node = NodeProcess::start(dispatcher.addr, &config, &dir.join("state"), dir.join("node.log"));
    node.wait_for("registered", 1).await;
    let node_id = node_id_in(&dir.join("state"));

    let (mut phone, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/session", dispatcher.addr)).await.unwrap();
    let init = json!({"type":"session_init","client_version":"test","platform":"web","src_lang":"en","tgt_lang":"es"});
    phone.send(Ws::text(init.to_string())).await.unwrap();
    let ack = recv(&mut phone).await;
    assert_eq!(ack["type"], "session_init_ack", "{ack}");
    let session_id = ack["session_id"].as_str().unwrap().to_owned();

    let sent_at = Instant::now();
    for (i, (samples, rate)) in speech.iter().enumerate() {
        let utt = json!({
            "type": "utterance", "session_id": session_id, "utterance_index": i, "manual_cut": false,
            "src_lang": "en", "tgt_lang": "es", "dialect": null,
            "audio": audio::to_base64(&audio::encode_wav(samples, *rate)), "audio_format": "wav", "sample_rate": rate,
        });
        phone.send(Ws::text(utt.to_string())).await.unwrap();
    }
    let (mut errors, mut ref_words) = (0usize, 0usize);
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let r = recv(&mut phone).await;
        assert_eq!((r["type"].as_str(), r["utterance_index"].as_u64()), (Some("translation_result"), Some(i as u64)), "{r}");
        let asr = r["text_asr"].as_str().unwrap();
        let es = r["text_translated"].as_str().unwrap();
        let (reference, hypothesis) = (words(sentence), words(asr));
        let e = edit_distance(&reference, &hypothesis);
        errors += e;
        ref_words += reference.len();
        eprintln!("#{i:<2} +{:>5} ms  errors {e}  {sentence:?} → {asr:?} → {es:?}", sent_at.elapsed().as_millis());
        // Apertium's Spanish, exactly as the apertium command gives it.
        assert!(!es.is_empty() && es != asr, "{es:?}");
        assert_eq!(es, apertium(asr));
        // Speech: a wav of plausible length, not silence.
        assert_eq!(r["tts_format"], "wav");
        let wav = tolk_protocol::audio::decode_base64(r["tts_audio"].as_str().unwrap(), AudioFormat::Wav, 22_050).unwrap();
        let secs = wav.samples.len() as f64 / 22_050.0;
        let rms = (wav.samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / wav.samples.len() as f64).sqrt();
        let n_words = words(es).len() as f64;
        assert!(secs >= 0.1 * n_words && secs <= 1.5 * n_words + 1.0, "{secs:.2} s for {n_words} words");
        assert!(rms > 300.0, "tts audio is near silence (rms {rms:.0})");
    }
    let wer = errors as f64 / ref_words as f64;
    eprintln!(
        "WER {:.1}% ({errors} errors / {ref_words} words); all {} results in {} ms",
        wer * 100.0,
        SENTENCES.len(),
        sent_at.elapsed().as_millis()
    );

    // Per-stage timings, from the node's log.
    let log = node.log();
    let done: Vec<&str> = log.lines().filter(|l| l.contains("job done")).collect();
    assert_eq!(done.len(), SENTENCES.len(), "{log}");
    for key in ["decode_ms", "asr_ms", "nmt_ms", "tts_ms", "total_ms"] {
        let v: Vec<u64> = done.iter().filter_map(|l| field(l, key)).collect();
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        eprintln!("{key:>9}: mean {mean:>7.1}  min {:>5}  max {:>5}", v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
    }
    assert!(wer <= 0.20, "WER {:.1}% > 20%", wer * 100.0);

    // The dispatcher's shutdown command stops the node cleanly.
    let reply = http_post(dispatcher.addr, &format!("/admin/nodes/{node_id}/shutdown"), "admin-secret");
    assert!(reply.starts_with("HTTP/1.1 2"), "{reply}");
    assert!(node.wait_exit().await.success(), "{}", node.log());
    dispatcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_keeps_its_identity_and_registers_afresh_when_the_dispatcher_forgot_it() {
    let dir = support::temp_dir("identity");
    let config = dir.join("node.toml");
    let echo = engine_entry("nmt", "tolk-test-engine-echo", "echo", "src_lang = \"en\"\ntgt_lang = \"es\"", "");
    std::fs::write(&config, format!("heartbeat_ms = 500\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n\n{echo}")).unwrap();
    let state = dir.join("state");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dispatcher = start_dispatcher(listener, 1);

    let mut node = NodeProcess::start(addr, &config, &state, dir.join("node1.log"));
    node.wait_for("registered", 1).await;
    let first = node_id_in(&state);
    drop(node);

    // A restarted node comes back as itself.
    let mut node = NodeProcess::start(addr, &config, &state, dir.join("node2.log"));
    node.wait_for("registered", 1).await;
    assert!(node.log().contains(&format!("node_id={first}")), "{}", node.log());
    assert_eq!(node_id_in(&state), first);

    // reload_config over the admin API: the node re-reads its engines.
    let reply = http_post(addr, &format!("/admin/nodes/{first}/reload_config"), "admin-secret");
    assert!(reply.starts_with("HTTP/1.1 2"), "{reply}");
    node.wait_for("engines reloaded", 1).await;

    // A restarted dispatcher has forgotten every node: the node is refused,
    // drops its identity, and registers as a new node.
    dispatcher.stop().await;
    let dispatcher = start_dispatcher(std::net::TcpListener::bind(addr).unwrap(), 2);
    node.wait_for("registered", 2).await;
    assert!(node.log().contains("registering afresh"), "{}", node.log());
    let second = node_id_in(&state);
    assert_ne!(first, second);
    drop(node);
    dispatcher.stop().await;
}

/// `wss://`: the node trusts a private certificate given as `tls_ca_file`
/// and registers with a dispatcher serving TLS; without it the certificate
/// is refused (and the node keeps trying, never registering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_speaks_wss_with_a_private_certificate() {
    let dir = support::temp_dir("wss");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = Config { tls_cert: Some(dir.join("cert.pem")), tls_key: Some(dir.join("key.pem")), ..Config::default() };
    let task = tokio::spawn(tolk_dispatcher::shell::seeded(config, 3).run(listener, async move {
        let _ = rx.await;
    }));
    let dispatcher = Dispatcher { addr, stop: Some(tx), task };
    let url = format!("wss://localhost:{}", addr.port());
    let echo = engine_entry("nmt", "tolk-test-engine-echo", "echo", "src_lang = \"en\"\ntgt_lang = \"es\"", "");
    let base = "reconnect_min_ms = 100\nreconnect_max_ms = 400\n";

    // Without the private certificate: refused, retried, never registered.
    let untrusting = dir.join("untrusting.toml");
    std::fs::write(&untrusting, format!("{base}\n{echo}")).unwrap();
    let mut node = NodeProcess::start_url(&url, &untrusting, &dir.join("state1"), dir.join("node1.log"));
    node.wait_for("cannot connect", 2).await;
    assert!(!node.log().contains("registered"), "{}", node.log());
    assert!(node.log().to_lowercase().contains("certificate"), "says why: {}", node.log());
    drop(node);

    // With it: connected over TLS and registered.
    let trusting = dir.join("trusting.toml");
    let ca = dir.join("cert.pem");
    std::fs::write(&trusting, format!("{base}tls_ca_file = {:?}\n\n{echo}", ca.display().to_string())).unwrap();
    let mut node = NodeProcess::start_url(&url, &trusting, &dir.join("state2"), dir.join("node2.log"));
    node.wait_for("registered", 1).await;
    assert!(node.log().contains("connected url=wss://"), "{}", node.log());
    drop(node);
    dispatcher.stop().await;
}

/// `tolk-node status`: what the person running the node sees, from the
/// status file the running node keeps: connected, its id, its pairing code,
/// its models and jobs; then why it is not connected once the dispatcher is
/// gone; then that it is not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolk_node_status_shows_the_running_node() {
    let dir = support::temp_dir("status");
    let config = dir.join("node.toml");
    let echo = engine_entry("nmt", "tolk-test-engine-echo", "echo", "src_lang = \"en\"\ntgt_lang = \"es\"", "");
    std::fs::write(&config, format!("heartbeat_ms = 500\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n\n{echo}")).unwrap();
    let state = dir.join("state");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dispatcher = start_dispatcher(listener, 5);
    let log = dir.join("node.log");
    let child = Command::new(env!("CARGO_BIN_EXE_tolk-node"))
        .args(["--dispatcher", &format!("ws://{addr}"), "--pair", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut node = NodeProcess { child, log };
    node.wait_for("pairing code", 1).await;
    let status = |state: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tolk-node")).arg("status").arg("--state-dir").arg(state).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    // The status file follows the node: wait for the pairing code to show.
    let started = Instant::now();
    let (ok, text) = loop {
        let (ok, text) = status(&state);
        if text.contains("expires in") || started.elapsed() > Duration::from_secs(20) {
            break (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = node_id_in(&state);
    assert!(ok, "exit 0 while serving: {text}");
    for want in [
        format!("connected to ws://{addr}/ws/node"),
        format!("node id:  {id}"),
        "nmt echo en → es".into(),
        "0 running, 0 done, 0 failed".into(),
    ] {
        assert!(text.contains(&want), "{want} in:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("pairing:") && l.contains("expires in")), "{text}");

    // The dispatcher goes away: not connected, and why.
    dispatcher.stop().await;
    let started = Instant::now();
    let (ok, text) = loop {
        let (ok, text) = status(&state);
        if text.contains("not connected") || started.elapsed() > Duration::from_secs(20) {
            break (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!ok && text.contains("not connected") && text.contains("why:"), "{text}");
    // The node is stopped: the file is old news, and says so.
    drop(node);
    let (ok, text) = status(&state);
    assert!(!ok && text.starts_with("not running"), "{text}");
    let json = Command::new(env!("CARGO_BIN_EXE_tolk-node")).arg("status").arg("--json").arg("--state-dir").arg(&state).output().unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["node_id"], id.as_str());
}
