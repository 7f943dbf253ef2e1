//! Hostile peers against the dispatcher binary: a client and a node send
//! every class of bad input the protocol names (not JSON, binary, unknown
//! type, wrong field types, out-of-range values, oversized frames, messages
//! for another session, results for jobs they do not hold, another node's
//! id, registration without or with a wrong token). Each gets a clear error
//! (naming the field where there is one); the connection stays usable
//! except where the protocol says it ends. Meanwhile a well-behaved app
//! (the SDK) and a real node go on translating, undisturbed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::wire::{self, Socket};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, scratch};
use tolk_sdk::{ConnectionState, Event};

const NODE_SECRET: &str = "e2e-node-secret";
/// The dispatcher's frame limit in this test; twice this ends a connection.
const MAX_FRAME: usize = 512 * 1024;

/// Sends `text`; the answer must be an `error` with `code`, naming `field`
/// when given. Returns the error.
async fn refused(ws: &mut Socket, text: impl Into<String>, code: &str, field: Option<&str>) -> Value {
    let text: String = text.into();
    let shown: String = text.chars().take(400).collect();
    wire::send_text(ws, text).await;
    let e = wire::recv_within(ws, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no answer to {shown}"));
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{shown} → {e}");
    assert!(!e["message"].as_str().unwrap_or_default().is_empty(), "an error says what is wrong: {e}");
    if let Some(field) = field {
        assert_eq!(e["details"]["field"].as_str(), Some(field), "{shown} → {e}");
    }
    e
}

fn with(mut frame: Value, key: &str, value: Value) -> String {
    frame[key] = value;
    frame.to_string()
}

/// A frame of `bytes` bytes: a session_init padded with an unknown field.
fn padded(bytes: usize) -> String {
    let head = wire::session_init().to_string();
    let pad = bytes.saturating_sub(head.len() + 12);
    with(wire::session_init(), "padding", json!("x".repeat(pad)))
}

fn register(node_id: Option<&str>, node_token: Option<&str>, auth_token: Option<&str>) -> Value {
    json!({
        "type": "node_register", "node_id": node_id, "node_token": node_token, "auth_token": auth_token,
        "version": "hostile-1", "platform": "linux",
        "hardware": {"cpu_cores": 2, "memory_gb": 1.0, "gpus": []},
        // No models and no public jobs: it must never be given real work.
        "installed_models": [], "accept_public_jobs": false,
        "features_supported": {"emotion_detection": false, "voice_style_detection": false, "speech_rate_detection": false},
    })
}

fn heartbeat(node_id: &str) -> Value {
    json!({"type": "node_heartbeat", "node_id": node_id, "timestamp": 1,
           "resource_usage": {"cpu_percent": 10.0, "gpu_percent": null, "gpu_mem_percent": null, "mem_percent": 10.0, "running_jobs": 0}})
}

fn job_result(job_id: &str, node_id: &str, session_id: &str) -> Value {
    json!({"type": "job_result", "job_id": job_id, "node_id": node_id, "session_id": session_id, "utterance_index": 0,
           "success": true, "text_asr": "forged", "text_translated": "falsificado", "tts_audio": null, "tts_format": null,
           "extra": null, "processing_time_ms": 1})
}

/// The well-behaved app: one more utterance.
struct GoodApp {
    app: App,
    clips: Vec<Vec<i16>>,
    sent: usize,
}

impl GoodApp {
    fn speak(&mut self) {
        self.app.push_utterance(&self.clips[self.sent % self.clips.len()], self.sent as u64 * 10_000);
        self.sent += 1;
    }
}

async fn hostile_client(dispatcher: &DispatcherProcess, good: &mut GoodApp, good_sid: &str) {
    let addr = dispatcher.addr;
    let mut ws = wire::connect(addr, "/ws/session").await;
    let init = wire::session_init();

    // Before any session: a message for a session it does not own.
    refused(&mut ws, json!({"type":"client_heartbeat","session_id":"s-nope","timestamp":1}).to_string(), "INVALID_SESSION", None).await;
    // Not JSON, binary, not an object, unknown or missing type.
    refused(&mut ws, "this is not json {", "INVALID_MESSAGE", None).await;
    wire::send_binary(&mut ws, vec![0xde, 0xad, 0xbe, 0xef]).await;
    wire::expect_error(&mut ws, "INVALID_MESSAGE").await;
    refused(&mut ws, "[1, 2, 3]", "INVALID_MESSAGE", None).await;
    refused(&mut ws, r#"{"type":"translate_everything"}"#, "INVALID_MESSAGE", Some("type")).await;
    refused(&mut ws, r#"{"no_type":true}"#, "INVALID_MESSAGE", Some("type")).await;
    good.speak();
    // Wrong field types.
    refused(&mut ws, with(init.clone(), "src_lang", json!(42)), "INVALID_MESSAGE", Some("src_lang")).await;
    refused(&mut ws, with(init.clone(), "features", json!("all")), "INVALID_MESSAGE", Some("features")).await;
    refused(&mut ws, with(init.clone(), "platform", json!(["ios"])), "INVALID_MESSAGE", Some("platform")).await;
    // Values out of range.
    refused(&mut ws, with(init.clone(), "platform", json!("nokia")), "INVALID_MESSAGE", Some("platform")).await;
    refused(&mut ws, with(init.clone(), "src_lang", json!("e")), "INVALID_MESSAGE", Some("src_lang")).await;
    refused(&mut ws, with(init.clone(), "pairing_code", json!("12ab56")), "INVALID_MESSAGE", Some("pairing_code")).await;
    refused(&mut ws, with(init.clone(), "client_version", json!("v".repeat(5000))), "INVALID_MESSAGE", Some("client_version")).await;
    // Oversized, but less than twice the limit: an error, the connection stays.
    let e = refused(&mut ws, padded(MAX_FRAME + 1000), "INVALID_MESSAGE", None).await;
    assert!(e["message"].as_str().unwrap().contains("exceeds"), "{e}");
    good.speak();
    // Messages for another session: the good app's.
    let for_good = json!({"type":"utterance","session_id":good_sid,"utterance_index":999,"manual_cut":false,"src_lang":"en",
                          "tgt_lang":"es","dialect":null,"audio":"AAAA","audio_format":"pcm16","sample_rate":16000});
    refused(&mut ws, for_good.to_string(), "INVALID_SESSION", None).await;
    refused(&mut ws, json!({"type":"client_heartbeat","session_id":good_sid,"timestamp":1}).to_string(), "INVALID_SESSION", None).await;
    let close_good = json!({"type":"session_close","session_id":good_sid,"reason":"user_finished"});
    refused(&mut ws, close_good.to_string(), "INVALID_SESSION", None).await;
    // Taking it over by resuming it needs its token.
    let mut hijack = init.clone();
    hijack["session_id"] = json!(good_sid);
    hijack["resume_token"] = json!("f".repeat(64));
    hijack["last_utterance_index"] = json!(0);
    refused(&mut ws, hijack.to_string(), "INVALID_SESSION", None).await;

    // After all that, the connection still opens a session of its own...
    wire::send(&mut ws, &init).await;
    let ack = wire::recv(&mut ws).await;
    assert_eq!(ack["type"], "session_init_ack", "{ack}");
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    // ...only one.
    refused(&mut ws, init.to_string(), "INVALID_MESSAGE", Some("type")).await;
    // Still not the good app's session.
    refused(&mut ws, for_good.to_string(), "INVALID_SESSION", None).await;
    good.speak();
    // Bad utterances: wrong types and values out of range.
    let utterance = json!({"type":"utterance","session_id":sid,"utterance_index":0,"manual_cut":false,"src_lang":"en",
                           "tgt_lang":"es","dialect":null,"audio":"AAAA","audio_format":"pcm16","sample_rate":16000});
    refused(&mut ws, with(utterance.clone(), "utterance_index", json!("three")), "INVALID_MESSAGE", Some("utterance_index")).await;
    refused(&mut ws, with(utterance.clone(), "utterance_index", json!(-1)), "INVALID_MESSAGE", Some("utterance_index")).await;
    refused(&mut ws, with(utterance.clone(), "sample_rate", json!(12_345)), "INVALID_MESSAGE", Some("sample_rate")).await;
    refused(&mut ws, with(utterance.clone(), "audio_format", json!("mp3")), "INVALID_MESSAGE", Some("audio_format")).await;
    refused(&mut ws, with(utterance.clone(), "audio", json!("")), "INVALID_MESSAGE", Some("audio")).await;
    refused(&mut ws, with(utterance.clone(), "tgt_lang", json!("not a language")), "INVALID_MESSAGE", Some("tgt_lang")).await;
    // Audio that is not base64 is relayed untouched; the node cannot
    // decode it, and the utterance ends in a clear error (its outcome).
    wire::send_text(&mut ws, with(utterance.clone(), "audio", json!("this is *not* base64!"))).await;
    let e = wire::recv(&mut ws).await;
    assert_eq!((e["type"].as_str(), e["details"]["utterance_index"].as_u64()), (Some("error"), Some(0)), "{e}");
    assert_eq!(e["details"]["field"], "audio", "{e}");
    // Its index is answered. Sent again, it is ignored (de-duplicated: the
    // next frame is the heartbeat's answer, no second outcome)...
    wire::send(&mut ws, &utterance).await;
    wire::send(&mut ws, &json!({"type":"client_heartbeat","session_id":sid,"timestamp":1,"last_utterance_index":0})).await;
    let next = wire::recv_any(&mut ws).await;
    assert_eq!(next["type"], "server_heartbeat", "{next}");
    // ...and once the heartbeat confirmed its outcome, refused, not re-run.
    let e = refused(&mut ws, utterance.to_string(), "INVALID_MESSAGE", Some("utterance_index")).await;
    assert_eq!(e["details"]["refused_index"], 0, "{e}");
    good.speak();
    // Twice the limit ends the connection; the server serves on.
    let _ = futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(padded(2 * MAX_FRAME + 1000))).await;
    assert!(wire::closed_by_server(&mut ws).await, "a frame over twice the limit ends the connection");
    let (_ws, ack) = wire::open_session(addr, &init).await;
    assert_eq!(ack["type"], "session_init_ack");
}

async fn hostile_node(dispatcher: &DispatcherProcess, good: &mut GoodApp, good_node: &str, good_sid: &str) {
    let addr = dispatcher.addr;
    // Unregistered: nothing counts before node_register, and bad frames get
    // errors.
    let mut ws = wire::connect(addr, "/ws/node").await;
    refused(&mut ws, heartbeat(good_node).to_string(), "UNAUTHORIZED", None).await;
    refused(&mut ws, job_result("j-forged", good_node, good_sid).to_string(), "UNAUTHORIZED", None).await;
    refused(&mut ws, "{\"type\":", "INVALID_MESSAGE", None).await;
    wire::send_binary(&mut ws, vec![1, 2, 3]).await;
    wire::expect_error(&mut ws, "INVALID_MESSAGE").await;
    refused(&mut ws, r#"{"type":"steal_jobs"}"#, "INVALID_MESSAGE", Some("type")).await;
    // Registration without the secret, with a wrong one, as the good node
    // without its token or with a wrong one: refused, and the connection
    // ends.
    let attempts = [
        register(None, None, None),
        register(None, None, Some("guess")),
        register(Some(good_node), None, Some(NODE_SECRET)),
        register(Some(good_node), Some(&"0".repeat(64)), Some(NODE_SECRET)),
    ];
    for (i, reg) in attempts.iter().enumerate() {
        if i > 0 {
            ws = wire::connect(addr, "/ws/node").await;
        }
        refused(&mut ws, reg.to_string(), "UNAUTHORIZED", None).await;
        assert!(wire::closed_by_server(&mut ws).await, "a refused registration ends the connection: {reg}");
        good.speak();
    }
    let listed = dispatcher.admin_node(good_node).await.expect("the good node is listed");
    assert_eq!(listed["connected"], true, "the good node kept its connection: {listed}");

    // Registered with the secret, the hostile node tries the rest.
    let mut ws = wire::connect(addr, "/ws/node").await;
    wire::send(&mut ws, &register(None, None, Some(NODE_SECRET))).await;
    let ack = wire::recv(&mut ws).await;
    assert_eq!(ack["type"], "node_register_ack", "{ack}");
    let me = ack["node_id"].as_str().unwrap().to_owned();
    refused(&mut ws, register(None, None, Some(NODE_SECRET)).to_string(), "INVALID_MESSAGE", Some("type")).await;
    refused(&mut ws, "not json", "INVALID_MESSAGE", None).await;
    wire::send_binary(&mut ws, vec![0; 16]).await;
    wire::expect_error(&mut ws, "INVALID_MESSAGE").await;
    refused(&mut ws, r#"{"type":"job_assign"}"#, "INVALID_MESSAGE", Some("type")).await;
    // Wrong field types and values out of range.
    let mut hb = heartbeat(&me);
    hb["resource_usage"]["cpu_percent"] = json!("busy");
    refused(&mut ws, hb.to_string(), "INVALID_MESSAGE", Some("resource_usage.cpu_percent")).await;
    hb["resource_usage"]["cpu_percent"] = json!(250.0);
    refused(&mut ws, hb.to_string(), "INVALID_MESSAGE", Some("resource_usage.cpu_percent")).await;
    refused(&mut ws, with(heartbeat(&me), "node_id", json!("bad id!")), "INVALID_MESSAGE", Some("node_id")).await;
    let failed_without_error = with(job_result("j-x", &me, good_sid), "success", json!(false));
    refused(&mut ws, failed_without_error, "INVALID_MESSAGE", Some("error")).await;
    good.speak();
    // Another node's id.
    refused(&mut ws, heartbeat(good_node).to_string(), "INVALID_MESSAGE", Some("node_id")).await;
    refused(&mut ws, job_result("j-forged", good_node, good_sid).to_string(), "INVALID_MESSAGE", Some("node_id")).await;
    let pair = json!({"type":"pairing_code_request","node_id":good_node});
    refused(&mut ws, pair.to_string(), "INVALID_MESSAGE", Some("node_id")).await;
    // Results for jobs it does not hold, one naming the good app's session.
    refused(&mut ws, job_result("j-0123456789abcdef", &me, "s-nope").to_string(), "INVALID_MESSAGE", Some("job_id")).await;
    refused(&mut ws, job_result("j-0123456789abcdef", &me, good_sid).to_string(), "INVALID_MESSAGE", Some("job_id")).await;
    // Oversized: an error; twice the limit: the end.
    let big = with(heartbeat(&me), "padding", json!("x".repeat(MAX_FRAME)));
    let e = refused(&mut ws, big, "INVALID_MESSAGE", None).await;
    assert!(e["message"].as_str().unwrap().contains("exceeds"), "{e}");
    // Still registered and usable: its own requests are served.
    wire::send(&mut ws, &json!({"type":"pairing_code_request","node_id":me})).await;
    let code = wire::recv(&mut ws).await;
    assert_eq!((code["type"].as_str(), code["node_id"].as_str()), (Some("pairing_code"), Some(me.as_str())), "{code}");
    good.speak();
    let huge = with(heartbeat(&me), "padding", json!("x".repeat(2 * MAX_FRAME)));
    let _ = futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(huge)).await;
    assert!(wire::closed_by_server(&mut ws).await, "a frame over twice the limit ends the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_and_nodes_get_clear_errors_while_others_are_served() {
    let dir = scratch("hostile");
    let clips = speech::clips(&dir.join("speech"), &SENTENCES[..4]);
    let config = format!("max_frame_bytes = {MAX_FRAME}\n[core]\nnode_auth_token = \"{NODE_SECRET}\"\nadmission_wait_ms = 60000\n");
    let dispatcher = DispatcherProcess::start(&dir, &config, &[]).await;
    let setup = NodeSetup { auth_token: Some(NODE_SECRET.into()), ..NodeSetup::new(Engines::Quick) };
    let mut node = NodeProcess::start(&dir, "good", &dispatcher.ws_base(), &setup, false);
    let good_node = node.registered(1).await;

    let mut good = GoodApp { app: App::start(app::config(&dispatcher.session_url())), clips, sent: 0 };
    good.speak();
    good.app
        .until("the good app is connected", Duration::from_secs(30), |e| matches!(e, Event::State(ConnectionState::Connected { .. })))
        .await;
    let (good_sid, _) = good.app.connections()[0].clone();

    hostile_client(&dispatcher, &mut good, &good_sid).await;
    hostile_node(&dispatcher, &mut good, &good_node, &good_sid).await;

    // The good app was served all along, on its one connection.
    let sent = good.sent as u64;
    good.app.close(Duration::from_secs(120)).await;
    assert_eq!(good.app.queued(), (0..sent).collect::<Vec<_>>(), "{}", good.app.summary());
    good.app.assert_one_result_each_in_order();
    assert_eq!(good.app.connections(), vec![(good_sid.clone(), false)], "never disconnected");
    assert!(!good.app.events.iter().any(|e| matches!(e, Event::Error(_))), "{}", good.app.summary());
    let listed = dispatcher.admin_node(&good_node).await.expect("the good node is listed");
    assert_eq!(listed["connected"], true, "{listed}");
    assert!(!node.log().contains("connection to the dispatcher lost"), "the good node never lost its connection");
    assert_eq!(node.jobs_done().len() as u64, sent, "the good node ran the app's jobs");
    assert!(node.log().contains("code=INVALID_AUDIO"), "and refused the hostile client's audio itself");

    // Counted for the operator.
    assert_eq!(dispatcher.metric("tolk_unauthorized_total").await, 4.0);
    assert_eq!(dispatcher.metric("tolk_rejected_job_results_total").await, 2.0);
    let bad_session = dispatcher.metric("tolk_bad_frames_total{endpoint=\"session\"}").await;
    let bad_node = dispatcher.metric("tolk_bad_frames_total{endpoint=\"node\"}").await;
    let metrics = wire::http(dispatcher.addr, "GET", "/metrics", None).await.1;
    let shown: Vec<&str> = metrics.lines().filter(|l| l.starts_with("tolk_bad_frames")).collect();
    // Every frame that failed to parse or validate above (19 from the
    // client, 11 from the node) is counted, by endpoint.
    assert!(bad_session >= 19.0 && bad_node >= 11.0, "bad frames counted by endpoint: {shown:?}");
    let (status, body) = wire::http(dispatcher.addr, "GET", "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    println!("{} good utterances translated during the attack", sent);
}
