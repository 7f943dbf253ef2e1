//! Plugins in a running dispatcher, over real sockets: the policy file is
//! swapped while sessions send; a hostile policy cannot stop the service;
//! detectors fill `extra` for features the node lacks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message as Ws;
use tolk_dispatcher::Config;
use tolk_dispatcher::plugins::PluginsConfig;

type Log = Arc<Mutex<Vec<(String, String, u64)>>>;

fn built() -> PathBuf {
    tolk_plugin_build::build_shipped().expect("plugins build from source");
    tolk_plugin_build::repo_root().join("target/plugins")
}

fn plugin_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tolk-live-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn install(built: &Path, dir: &Path, from: &str, to: &str) {
    let tmp = dir.join(format!("{to}.partial"));
    let src = [built.join(format!("{from}.wasm")), built.join(format!("testing/{from}.wasm"))].into_iter().find(|p| p.exists()).unwrap();
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{to}.wasm"))).unwrap();
}

fn config(dir: &Path, settings: &[(&str, &str)]) -> Config {
    let mut plugins = PluginsConfig { dir: Some(dir.to_owned()), poll_ms: 100, ..PluginsConfig::default() };
    for (stem, t) in settings {
        plugins.settings.insert((*stem).to_owned(), toml::from_str(t).unwrap());
    }
    Config { admin_token: Some("t".into()), plugins, ..Config::default() }
}

/// A node that answers every job at once, logging (node, session, index).
async fn answering_node(server: &Server, log: Log) -> String {
    let (mut ws, node_id) = example_node(server).await;
    let id = node_id.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Ws::Text(text) = msg else { continue };
            let job: Value = serde_json::from_str(text.as_str()).unwrap();
            if job["type"] != "job_assign" {
                continue;
            }
            log.lock().unwrap().push((
                id.clone(),
                job["session_id"].as_str().unwrap().to_owned(),
                job["utterance_index"].as_u64().unwrap(),
            ));
            let mut result = fixture("node/job_result_success.json");
            result["job_id"] = job["job_id"].clone();
            result["node_id"] = json!(id);
            result["session_id"] = job["session_id"].clone();
            result["utterance_index"] = job["utterance_index"].clone();
            result["extra"] = json!({"emotion": null, "speech_rate": null, "voice_style": null});
            send(&mut ws, &result).await;
        }
    });
    node_id
}

async fn open_session(server: &Server, features: Option<Value>) -> (Socket, Value) {
    let mut phone = server.connect("/ws/session").await;
    let mut init = fixture("session/session_init.json");
    if let Some(f) = features {
        init["features"] = f;
    }
    send(&mut phone, &init).await;
    let ack = recv(&mut phone).await;
    assert_eq!(ack["type"], "session_init_ack", "{ack}");
    let sid = ack["session_id"].clone();
    (phone, sid)
}

fn utterance(sid: &Value, index: u64, audio: &str) -> Value {
    let mut u = fixture("session/utterance.json");
    u["session_id"] = sid.clone();
    u["utterance_index"] = json!(index);
    u["audio"] = json!(audio);
    // The example carries per-utterance features; use the session's.
    u["features"] = Value::Null;
    u
}

async fn active_scheduler(server: &Server) -> Option<String> {
    let list: Value = serde_json::from_str(&http_get(server.addr, "/admin/plugins", Some("t")).await).ok()?;
    list.as_array()?.iter().find(|p| p["kind"] == "scheduler" && p["active"] == true).map(|p| p["name"].as_str().unwrap_or("").to_owned())
}

async fn wait_for_scheduler(server: &Server, name: &str) {
    for _ in 0..200 {
        if active_scheduler(server).await.as_deref() == Some(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("scheduler {name} never took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_policy_file_under_load_loses_nothing_and_switches_decisions() {
    let built = built();
    let dir = plugin_dir("swap");
    install(&built, &dir, "sticky-session", "scheduler");
    let server = start(config(&dir, &[])).await;
    wait_for_scheduler(&server, "sticky-session").await;
    let log: Log = Arc::default();
    answering_node(&server, log.clone()).await;
    answering_node(&server, log.clone()).await;

    const SESSIONS: usize = 4;
    const PER_SESSION: u64 = 40;
    let swapped_at = Arc::new(Mutex::new(None::<usize>));
    let mut clients = Vec::new();
    for s in 0..SESSIONS {
        let (mut phone, sid) = open_session(&server, None).await;
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..PER_SESSION {
                send(&mut phone, &utterance(&sid, i, "AAAA")).await;
                outcomes.push(recv(&mut phone).await);
                tokio::time::sleep(Duration::from_millis(10 + s as u64)).await;
            }
            (sid.as_str().unwrap().to_owned(), outcomes)
        }));
    }
    // Mid-stream, the operator replaces the policy file.
    tokio::time::sleep(Duration::from_millis(150)).await;
    *swapped_at.lock().unwrap() = Some(log.lock().unwrap().len());
    install(&built, &dir, "round-robin", "scheduler");
    wait_for_scheduler(&server, "round-robin").await;
    let effective_at = log.lock().unwrap().len();

    for c in clients {
        let (sid, outcomes) = c.await.unwrap();
        let indexes: Vec<u64> = outcomes.iter().map(|o| o["utterance_index"].as_u64().unwrap()).collect();
        assert_eq!(indexes, (0..PER_SESSION).collect::<Vec<_>>(), "{sid}: every utterance answered, in order");
        assert!(outcomes.iter().all(|o| o["type"] == "translation_result"), "{sid}: no utterance failed");
    }
    let log = log.lock().unwrap().clone();
    let before = &log[..swapped_at.lock().unwrap().unwrap()];
    let after = &log[effective_at..];
    let nodes_per_session = |part: &[(String, String, u64)]| {
        let mut m: std::collections::HashMap<&str, std::collections::HashSet<&str>> = Default::default();
        for (node, session, _) in part {
            m.entry(session).or_default().insert(node);
        }
        m.values().map(|s| s.len()).max().unwrap_or(0)
    };
    assert_eq!(nodes_per_session(before), 1, "sticky-session: a session stays on one node");
    assert_eq!(nodes_per_session(after), 2, "round-robin: sessions spread over both nodes");
    let on_first = after.iter().filter(|(n, _, _)| *n == after[0].0).count();
    assert!(on_first.abs_diff(after.len() - on_first) <= 2, "round-robin alternates: {on_first} of {}", after.len());
    eprintln!("swap under load: {} jobs before the swap, {} after it took effect; no failures", before.len(), after.len());
    let metrics = http_get(server.addr, "/metrics", None).await;
    assert!(metrics.contains("tolk_plugin_calls_total{plugin=\"round-robin\""), "per-plugin metrics");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_policy_cannot_stop_the_service() {
    let built = built();
    let dir = plugin_dir("hostile");
    install(&built, &dir, "hostile", "scheduler");
    let server = start(config(&dir, &[("scheduler", "mode = \"loop\"")])).await;
    wait_for_scheduler(&server, "hostile").await;
    let log: Log = Arc::default();
    answering_node(&server, log.clone()).await;
    let (mut phone, sid) = open_session(&server, None).await;
    let started = std::time::Instant::now();
    for i in 0..10 {
        send(&mut phone, &utterance(&sid, i, "AAAA")).await;
        let out = recv(&mut phone).await;
        assert_eq!((out["type"].as_str(), out["utterance_index"].as_u64()), (Some("translation_result"), Some(i)));
    }
    eprintln!("10 utterances through an infinitely looping policy: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    let metrics = http_get(server.addr, "/metrics", None).await;
    assert!(metrics.contains("reason=\"timeout\""), "timeouts counted with the plugin's name");
    assert!(metrics.contains("tolk_policy_fallbacks_total"), "{metrics}");
    assert_eq!(http_get(server.addr, "/healthz", None).await, "ok");
    server.shutdown().await;
}

fn espeak_pcm16_base64(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("tolk-live-{}.wav", std::process::id()));
    let ok = std::process::Command::new("espeak-ng").args(["-w"]).arg(&path).arg(text).status().expect("espeak-ng (scripts/setup.sh)");
    assert!(ok.success());
    let out = std::process::Command::new("sox")
        .arg(&path)
        .args(["-r", "16000", "-t", "raw", "-e", "signed", "-b", "16", "-"])
        .output()
        .expect("sox");
    assert!(out.status.success());
    tolk_protocol::audio::to_base64(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detectors_fill_features_the_node_lacks() {
    let built = built();
    let dir = plugin_dir("detect");
    install(&built, &dir, "speech-rate", "speech-rate");
    install(&built, &dir, "emotion", "emotion");
    let server = start(config(&dir, &[])).await;
    for _ in 0..200 {
        if http_get(server.addr, "/admin/plugins", Some("t")).await.matches("detector").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log: Log = Arc::default();
    answering_node(&server, log).await; // supports speech rate, not emotion (the fixture)
    let features = json!({"emotion_detection": true, "voice_style_detection": false, "speech_rate_detection": true});
    let (mut phone, sid) = open_session(&server, Some(features)).await;
    let audio = espeak_pcm16_base64("The weather is nice today and we are going to the beach.");
    send(&mut phone, &utterance(&sid, 0, &audio)).await;
    let out = recv(&mut phone).await;
    assert_eq!(out["type"], "translation_result", "{out}");
    let emotion = out["extra"]["emotion"].as_str().expect("the dispatcher's emotion detector filled it");
    assert!(["calm", "neutral", "excited"].contains(&emotion));
    let rate = out["extra"]["speech_rate"].as_f64().expect("filled by the dispatcher's detector (the node left it null)");
    assert!((2.0..9.0).contains(&rate), "plausible syllables per second: {rate}");
    // Audio a detector cannot read still gets its result, features null.
    send(&mut phone, &utterance(&sid, 1, "AAAA")).await;
    let out = recv(&mut phone).await;
    assert_eq!((out["type"].as_str(), out["extra"]["emotion"].as_str()), (Some("translation_result"), None));
    server.shutdown().await;
}
