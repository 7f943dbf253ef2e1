//! Trust end to end, with the shipped canary set
//! (`dispatcher/canaries/canaries.toml`): a real node (PocketSphinx →
//! Apertium → eSpeak NG) starts on probation, answers its canaries and is
//! trusted, then serves an app whose every outcome is its own; a node that
//! answers garbage is quarantined, visible in `/admin/nodes`, `/metrics`,
//! `/admin/explain` and the dispatcher's log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, eventually, scratch, wire, workspace_root};

const LIMIT: Duration = Duration::from_secs(120);

/// A node that registers for en → es and answers every job at once with
/// made-up text: what a job farmer would do.
async fn garbage_node(addr: std::net::SocketAddr) -> (String, tokio::task::JoinHandle<u32>) {
    let mut ws = wire::connect(addr, "/ws/node").await;
    let model = |id: &str, kind: &str, src: &str, tgt: Option<&str>| json!({"model_id": id, "kind": kind, "src_lang": src, "tgt_lang": tgt, "dialect": null, "version": "1"});
    wire::send(
        &mut ws,
        &json!({
            "type": "node_register", "version": "farm-1", "platform": "linux",
            "hardware": {"cpu_cores": 64, "memory_gb": 256.0, "gpus": []},
            "installed_models": [model("asr-en", "asr", "en", None), model("nmt-en-es", "nmt", "en", Some("es")), model("tts-es", "tts", "es", None)],
            "accept_public_jobs": true,
            "features_supported": {"emotion_detection": false, "voice_style_detection": false, "speech_rate_detection": false},
        }),
    )
    .await;
    let ack = wire::recv(&mut ws).await;
    assert_eq!(ack["type"], "node_register_ack", "{ack}");
    let node_id = ack["node_id"].as_str().unwrap().to_owned();
    let me = node_id.clone();
    let task = tokio::spawn(async move {
        let mut answered = 0;
        let mut beat = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = json!({"type": "node_heartbeat", "node_id": me, "timestamp": 1,
                        "resource_usage": {"cpu_percent": 1.0, "gpu_percent": null, "gpu_mem_percent": null, "mem_percent": 1.0, "running_jobs": 0}});
                    wire::send(&mut ws, &hb).await;
                }
                frame = wire::recv_within(&mut ws, Duration::from_secs(600)) => {
                    let Some(frame) = frame else { return answered };
                    if frame["type"] != "job_assign" {
                        continue;
                    }
                    // Slow enough to pass as real work: only the words give it away.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let r = json!({"type": "job_result", "job_id": frame["job_id"], "node_id": me, "session_id": frame["session_id"],
                        "utterance_index": frame["utterance_index"], "success": true, "text_asr": "buy cheap watches online",
                        "text_translated": "compre relojes baratos", "tts_audio": "U".repeat(4000), "tts_format": "pcm16", "tts_sample_rate": 16000});
                    wire::send(&mut ws, &r).await;
                    answered += 1;
                }
            }
        }
    });
    (node_id, task)
}

async fn trust_state(dispatcher: &DispatcherProcess, node_id: &str) -> Value {
    dispatcher.admin_node(node_id).await.map(|n| n["trust"].clone()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_node_earns_trust_and_a_garbage_node_is_quarantined() {
    let dir = scratch("trust");
    let canaries = workspace_root().join("dispatcher/canaries/canaries.toml");
    let config = format!("[trust]\ncanaries = \"{}\"\ncanary_rate = 0.0\n", canaries.display());
    let dispatcher = DispatcherProcess::start(&dir, &config, &[]).await;

    // The farmer comes first: it is on probation and fails its canaries.
    let (farm_id, farm) = garbage_node(dispatcher.addr).await;
    let t = eventually("the garbage node is quarantined", LIMIT, || async {
        let t = trust_state(&dispatcher, &farm_id).await;
        (t["state"] == "quarantined").then_some(t)
    })
    .await;
    assert_eq!(t["canaries_failed"], 2, "{t}");
    assert!(t["last_failure"].as_str().unwrap().starts_with("text:"), "{t}");
    assert!(dispatcher.log().lines().any(|l| l.contains("node quarantined") && l.contains(&farm_id)), "{}", dispatcher.log());
    assert_eq!(dispatcher.metric("tolk_nodes_quarantined_total").await, 1.0);
    assert_eq!(dispatcher.metric("tolk_canary_failures_total{reason=\"text\"}").await, 2.0);

    // The real node: probation, three canaries through its real engines, trusted.
    let mut node = NodeProcess::start(&dir, "honest", &dispatcher.ws_base(), &NodeSetup::new(Engines::Real), false);
    let honest_id = node.registered(1).await;
    let t = eventually("the real node is trusted", LIMIT, || async {
        let t = trust_state(&dispatcher, &honest_id).await;
        (t["state"] == "trusted").then_some(t)
    })
    .await;
    assert_eq!(
        (t["verified"].as_bool(), t["canaries_passed"].as_u64(), t["canaries_failed"].as_u64()),
        (Some(true), Some(3), Some(0)),
        "{t}"
    );
    assert_eq!(dispatcher.metric("tolk_canaries_total{outcome=\"pass\"}").await, 3.0);

    // Explain: the honest node would get an en → es job, the farmer not, and why.
    let e = dispatcher.admin("/admin/explain?src_lang=en&tgt_lang=es").await;
    assert_eq!(e["picked"], honest_id.as_str(), "{e}");
    let farm_row = e["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == farm_id.as_str()).unwrap();
    assert_eq!((farm_row["eligible"].as_bool(), farm_row["reason"].as_str()), (Some(false), Some("untrusted")), "{e}");
    let (status, _) = wire::http(dispatcher.addr, "GET", "/admin/explain?src_lang=en&tgt_lang=es", None).await;
    assert_eq!(status, 401, "explain needs the admin token");
    let (status, _) = wire::http(dispatcher.addr, "GET", "/admin/explain?tgt_lang=es", Some(tolk_e2e::ADMIN_TOKEN)).await;
    assert_eq!(status, 400);

    // An app: every utterance served by the trusted node, nothing else arrives.
    let clips = speech::clips(&dir.join("speech"), &SENTENCES[..2]);
    let mut app = App::start(app::config(&dispatcher.session_url()));
    for (i, clip) in clips.iter().enumerate() {
        app.push_utterance(clip, i as u64 * 10_000);
    }
    app.close(LIMIT).await;
    assert_eq!(app.queued(), vec![0, 1], "{}", app.summary());
    app.assert_one_result_each_in_order();
    assert_eq!(app.outcome_indexes(), vec![0, 1], "the app sees its own outcomes only: {}", app.summary());
    for r in app.results() {
        assert!(!r.text_asr.contains("watches"), "a quarantined node's answer reached a user: {}", app.summary());
    }
    // Phones speak Opus: once most utterances are Opus, so are canaries. 60
    // short Opus utterances move the share; a re-verification then runs on
    // Opus canaries, which the real node passes.
    let (mut ws, ack) = wire::open_session(dispatcher.addr, &wire::session_init()).await;
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    let tone: Vec<i16> = (0..8_000).map(|i| ((i as f32 * 0.05).sin() * 3_000.0) as i16).collect();
    let ogg = tolk_protocol::opus::encode(&tone, 16_000, tolk_protocol::opus::OpusSettings::default()).unwrap();
    let mut answered = 0;
    for i in 0..60u64 {
        let mut u = wire::utterance(&sid, i, &[0; 160]);
        u["audio_format"] = json!("opus");
        u["audio"] = json!(tolk_protocol::audio::to_base64(&ogg));
        wire::send(&mut ws, &u).await;
        // One at a time: the node serves them as they come.
        while answered <= i {
            if wire::outcome_index(&wire::recv(&mut ws).await).is_some() {
                answered += 1;
            }
        }
    }
    let (status, _) =
        wire::http(dispatcher.addr, "POST", &format!("/admin/nodes/{honest_id}/probation"), Some(tolk_e2e::ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let t = eventually("the real node is trusted again, on Opus canaries", LIMIT, || async {
        let t = trust_state(&dispatcher, &honest_id).await;
        (t["state"] == "trusted").then_some(t)
    })
    .await;
    assert_eq!((t["canaries_passed"].as_u64(), t["canaries_failed"].as_u64()), (Some(6), Some(0)), "{t}");
    assert!(dispatcher.metric("tolk_canaries_opus_total").await >= 1.0, "the re-verification's canaries were Opus (most of them)");

    let answered = farm.is_finished();
    assert!(!answered, "the farmer is still connected, just never used");
    farm.abort();
    node.kill();
}
