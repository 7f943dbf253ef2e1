//! End to end: engine failures cost only their jobs. A real dispatcher
//! (in process, on 127.0.0.1:0), the real `tolk-node` binary running its
//! engines in child processes (the default), and raw session clients. The
//! `faulty` test engine is the ASR for English (it hears text spelled in the
//! samples, and segfaults, aborts or hangs on the word), a second `faulty`
//! engine the ASR for German, `echo` translates, eSpeak NG speaks Spanish.
//!
//! A segfault, then an abort, then a hang each cost exactly the utterance
//! that caused them; the node answers those jobs `INFERENCE_BACKEND_ERROR`
//! (the hang at its deadline), reports the engine broken (`node_error`, the
//! dispatcher takes the model out of routing) and back (a heartbeat); it
//! stays registered as itself throughout; German keeps being served while
//! English restarts or hangs; the back-off grows; the next English utterance
//! after each failure is served by the restarted engine. Killing the node
//! leaves no engine process behind. The same configuration in process still
//! serves.

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
use tolk_protocol::audio;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Dispatcher {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tolk_dispatcher::Error>>,
}

/// A dispatcher that gives a job 3 s (so a hang is cut off soon) and keeps
/// a job no node can take for 1.5 s before answering it.
fn start_dispatcher() -> Dispatcher {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = tolk_dispatcher::Config { admin_token: Some("admin-secret".into()), ..tolk_dispatcher::Config::default() };
    config.core.admission_wait_ms = 1_500;
    config.core.job_timeout_base_ms = 3_000;
    config.core.job_timeout_per_audio_s_ms = 0;
    let task = tokio::spawn(tolk_dispatcher::shell::seeded(config, 7).run(listener, async move {
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

    fn http_get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer admin-secret\r\nConnection: close\r\n\r\n", self.addr).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    }

    /// The models the dispatcher routes to on the one node (enabled ones).
    fn routed_models(&self) -> Vec<String> {
        let nodes: Value = serde_json::from_str(&self.http_get("/admin/nodes")).unwrap_or(Value::Null);
        nodes[0]["models"].as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        self.http_get("/metrics")
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// The node binary, killed when dropped.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    fn start(dispatcher: SocketAddr, config: &Path, dir: &Path) -> Self {
        let log = dir.join("node.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tolk-node"))
            .arg("--dispatcher")
            .arg(format!("ws://{dispatcher}"))
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for(&mut self, needle: &str, count: usize) {
        let started = Instant::now();
        while self.log().matches(needle).count() < count {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tolk-node exited ({status}) before {needle:?}:\n{}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no {count}× {needle:?} in 60 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's child processes (its engines).
    fn children(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        out
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn engine(stage: &str, package: &str, model_id: &str, langs: &str, options: &str) -> String {
    format!(
        "[[engine]]\nstage = \"{stage}\"\nlibrary = \"{}\"\nmodel_id = \"{model_id}\"\n{langs}\n[engine.options]\n{options}\n\n",
        support::plugin(package).display()
    )
}

fn config(isolation: &str) -> String {
    let mut t = format!(
        "engine_isolation = \"{isolation}\"\nengine_restart_min_ms = 200\nmax_jobs = 4\nheartbeat_ms = 500\nreconnect_min_ms = 100\nreconnect_max_ms = 400\n\n"
    );
    t += &engine("asr", "tolk-test-engine-faulty", "faulty-en", "src_lang = \"en\"", "");
    t += &engine("asr", "tolk-test-engine-faulty", "faulty-de", "src_lang = \"de\"", "");
    t += &engine("nmt", "tolk-test-engine-echo", "echo-en-es", "src_lang = \"en\"\ntgt_lang = \"es\"", "");
    t += &engine("nmt", "tolk-test-engine-echo", "echo-de-es", "src_lang = \"de\"\ntgt_lang = \"es\"", "");
    t += &engine("tts", "tolk-engine-espeak", "espeak-ng-es", "src_lang = \"es\"", "voice = \"es\"");
    t
}

/// A session `src` → `es`.
struct Phone {
    ws: Socket,
    session_id: String,
    src: &'static str,
}

impl Phone {
    async fn open(addr: SocketAddr, src: &'static str) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/session")).await.unwrap();
        let init = json!({"type":"session_init","client_version":"test","platform":"web","src_lang":src,"tgt_lang":"es"});
        ws.send(Ws::text(init.to_string())).await.unwrap();
        let ack = recv(&mut ws).await;
        assert_eq!(ack["type"], "session_init_ack", "{ack}");
        Self { ws, session_id: ack["session_id"].as_str().unwrap().to_owned(), src }
    }

    /// Sends `text` spelled in samples (what the faulty engine hears) as utterance `index`.
    async fn say(&mut self, index: u64, text: &str) {
        let mut samples: Vec<i16> = text.chars().map(|c| c as u32 as u16 as i16).collect();
        samples.resize(8_000, 0);
        let utt = json!({
            "type": "utterance", "session_id": self.session_id, "utterance_index": index, "manual_cut": false,
            "src_lang": self.src, "tgt_lang": "es", "dialect": null,
            "audio": audio::to_base64(&audio::encode_wav(&samples, 16_000)), "audio_format": "wav", "sample_rate": 16_000,
        });
        self.ws.send(Ws::text(utt.to_string())).await.unwrap();
    }

    /// The next outcome, which must be for `index`.
    async fn outcome(&mut self, index: u64) -> Value {
        let o = recv(&mut self.ws).await;
        let got = o["utterance_index"].as_u64().or(o["details"]["utterance_index"].as_u64());
        assert_eq!(got, Some(index), "{o}");
        o
    }

    async fn served(&mut self, index: u64, text: &str) {
        let o = self.outcome(index).await;
        assert_eq!((o["type"].as_str(), o["text_asr"].as_str()), (Some("translation_result"), Some(text)), "{o}");
        assert_eq!(o["text_translated"].as_str(), Some(format!("[{}→es] {text}", self.src).as_str()), "{o}");
    }
}

async fn recv(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.expect("a frame in time").expect("open").unwrap();
        if let Ws::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] != "server_heartbeat" {
                return v;
            }
        }
    }
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(30), "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's "job failed" lines with `code=INFERENCE_BACKEND_ERROR` saying `why`.
fn backend_errors(log: &str, why: &str) -> usize {
    log.lines().filter(|l| l.contains("job failed") && l.contains("code=INFERENCE_BACKEND_ERROR") && l.contains(why)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_crash_abort_or_hang_costs_only_its_job_and_the_node_keeps_serving() {
    let dir = support::temp_dir("engine-failures");
    let path = dir.join("node.toml");
    std::fs::write(&path, config("process")).unwrap();
    let dispatcher = start_dispatcher();
    let mut node = NodeProcess::start(dispatcher.addr, &path, &dir);
    node.wait_for("registered", 1).await;
    let engines = node.children();
    assert_eq!(engines.len(), 5, "one child per engine instance: {engines:?}");

    let mut en = Phone::open(dispatcher.addr, "en").await;
    let mut de = Phone::open(dispatcher.addr, "de").await;
    en.say(0, "hello before").await;
    en.served(0, "hello before").await;

    // A segfault: that job is answered INFERENCE_BACKEND_ERROR; the dispatcher
    // has no other node for it and answers the utterance with an error.
    en.say(1, "segfault").await;
    node.wait_for("engine failed; restarting it after a back-off", 1).await;
    assert_eq!(backend_errors(&node.log(), "SIGSEGV"), 1, "{}", node.log());
    assert!(node.log().contains("faulty: writing through a null pointer"), "the child's stderr is in the log");
    // German is served meanwhile, by its own engine process.
    de.say(0, "guten tag").await;
    de.served(0, "guten tag").await;
    let e = en.outcome(1).await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(dispatcher.metric("tolk_models_disabled_by_errors") >= 1.0, "the node reported the engine broken");
    // Restarted, reported enabled again: routing resumes and the next utterance is served.
    node.wait_for("engine running again", 1).await;
    eventually("faulty-en routed again", || dispatcher.routed_models().contains(&"faulty-en".to_owned())).await;
    en.say(2, "hello after the crash").await;
    en.served(2, "hello after the crash").await;

    // An abort, soon after: the back-off has doubled.
    en.say(3, "abort").await;
    en.outcome(3).await;
    node.wait_for("engine running again", 2).await;
    let log = node.log();
    let downs: Vec<&str> = log.lines().filter(|l| l.contains("engine failed;")).collect();
    assert!(downs[0].contains("restart_in_ms=200") && downs[1].contains("restart_in_ms=400"), "{downs:?}");
    assert!(downs[1].contains("SIGABRT"), "{downs:?}");
    eventually("faulty-en routed again", || dispatcher.routed_models().contains(&"faulty-en".to_owned())).await;

    // A hang: killed at the job's deadline (3 s), answered INFERENCE_BACKEND_ERROR;
    // German is served while English hangs.
    en.say(4, "hang").await;
    node.wait_for("faulty: hanging", 1).await;
    de.say(1, "noch da").await;
    de.served(1, "noch da").await;
    assert_eq!(backend_errors(&node.log(), "hung"), 0, "German came back while the hang was still held");
    en.outcome(4).await;
    assert_eq!(backend_errors(&node.log(), "the engine hung: killed at the job's deadline"), 1, "{}", node.log());
    node.wait_for("engine running again", 3).await;
    eventually("faulty-en routed again", || dispatcher.routed_models().contains(&"faulty-en".to_owned())).await;
    en.say(5, "hello after the hang").await;
    en.served(5, "hello after the hang").await;

    // Registered once, as itself, throughout; no TIMEOUT from the core.
    let log = node.log();
    assert_eq!(log.matches("registered node_id=").count(), 1, "{log}");
    assert!(!log.contains("passed its deadline"), "the engine was stopped before the core gave up: {log}");

    // The owner sees it: `tolk-node status` names the engine's failures.
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_tolk-node")).arg("status").arg("--state-dir").arg(dir.join("state")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let want = "asr faulty-en en (running (failed 3× since the node started; last: the engine hung";
    eventually("the status shows the engine's failures", || status().contains(want)).await;
    assert!(status().contains("asr faulty-de de\n"), "the other engine never failed:\n{}", status());

    // Killing the node (SIGKILL) takes its engine processes with it.
    let engines = node.children();
    assert_eq!(engines.len(), 5, "{engines:?}");
    drop(node);
    eventually("no engine process outlives the node", || engines.iter().all(|&p| !alive(p))).await;
    dispatcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_loaded_in_process_still_serve() {
    let dir = support::temp_dir("engines-in-process");
    let path = dir.join("node.toml");
    std::fs::write(&path, config("in-process")).unwrap();
    let dispatcher = start_dispatcher();
    let mut node = NodeProcess::start(dispatcher.addr, &path, &dir);
    node.wait_for("registered", 1).await;
    assert!(node.children().is_empty(), "no engine processes in process mode");
    let mut en = Phone::open(dispatcher.addr, "en").await;
    en.say(0, "hello in process").await;
    en.served(0, "hello in process").await;
    drop(node);
    dispatcher.stop().await;
}
