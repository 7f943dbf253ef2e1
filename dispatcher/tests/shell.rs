//! The shell over real sockets: a dispatcher on 127.0.0.1:0, tokio-tungstenite
//! clients playing phones and nodes, the original documents' exact examples.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tolk_dispatcher::Config;

#[tokio::test]
async fn the_original_examples_flow_end_to_end() {
    let server = start(Config::default()).await;
    let (mut node, node_id) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let ack = recv(&mut phone).await;
    assert_eq!((ack["type"].as_str(), ack["assigned_node_id"].as_null()), (Some("session_init_ack"), Some(())));
    let session_id = ack["session_id"].as_str().unwrap().to_owned();

    let mut utt = fixture("session/utterance.json");
    utt["session_id"] = json!(session_id);
    send(&mut phone, &utt).await;
    let job = recv(&mut node).await;
    assert_eq!(job["type"], "job_assign");
    assert_eq!(job["audio"], utt["audio"], "audio passes through unchanged");
    assert_eq!(job["utterance_index"], 4);

    let mut result = fixture("node/job_result_success.json");
    result["job_id"] = job["job_id"].clone();
    result["node_id"] = json!(node_id);
    result["session_id"] = json!(session_id);
    send(&mut node, &result).await;
    let out = recv(&mut phone).await;
    assert_eq!(out["type"], "translation_result");
    assert_eq!(out["text_translated"], "The weather is nice today.");
    assert_eq!(out["utterance_index"], 4);
    assert_eq!(out["extra"]["speech_rate"], 1.2);

    let mut hb = fixture("session/client_heartbeat.json");
    hb["session_id"] = json!(session_id);
    send(&mut phone, &hb).await;
    assert_eq!(recv(&mut phone).await["type"], "server_heartbeat");

    let mut nhb = fixture("node/node_heartbeat.json");
    nhb["node_id"] = json!(node_id);
    send(&mut node, &nhb).await;
    let mut nerr = fixture("node/node_error.json");
    nerr["node_id"] = json!(node_id);
    send(&mut node, &nerr).await;
    // A round trip on the node's connection: everything before it is processed.
    send(&mut node, &json!({"type":"pairing_code_request","node_id":node_id})).await;
    let code = recv(&mut node).await;
    assert_eq!(code["type"], "pairing_code");
    assert_eq!(code["code"].as_str().unwrap().len(), 6);

    let mut close = fixture("session/session_close.json");
    close["session_id"] = json!(session_id);
    send(&mut phone, &close).await;
    let ack = recv(&mut phone).await;
    assert_eq!((ack["type"].as_str(), ack["session_id"].as_str()), (Some("session_close_ack"), Some(session_id.as_str())));

    let metrics = http_get(server.addr, "/metrics", None).await;
    assert!(metrics.contains("tolk_outcomes_total{outcome=\"result\"} 1"), "{metrics}");
    assert!(metrics.contains("tolk_node_errors_total 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let config = Config { max_frame_bytes: 64 * 1024, ..Config::default() };
    let server = start(config).await;
    let mut phone = server.connect("/ws/session").await;
    phone.send(Ws::binary(vec![1, 2, 3])).await.unwrap();
    let e = recv(&mut phone).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("INVALID_MESSAGE")));
    phone.send(Ws::text("{\"type\":\"session_init\",\"platform\":\"nokia\"}")).await.unwrap();
    let e = recv(&mut phone).await;
    assert_eq!(e["details"]["field"], "platform");
    phone.send(Ws::text(format!("{{\"type\":\"utterance\",\"audio\":\"{}\"}}", "A".repeat(100 * 1024)))).await.unwrap();
    let e = recv(&mut phone).await;
    assert!(e["message"].as_str().unwrap().contains("exceeds"), "{e}");
    // Still usable.
    send(&mut phone, &fixture("session/session_init.json")).await;
    assert_eq!(recv(&mut phone).await["type"], "session_init_ack");
    // A frame far beyond the limit ends the connection, and the server serves on.
    let _ = phone.send(Ws::text("A".repeat(200 * 1024))).await;
    let end = tokio::time::timeout(Duration::from_secs(5), phone.next()).await.unwrap();
    assert!(matches!(end, None | Some(Err(_)) | Some(Ok(Ws::Close(_)))), "{end:?}");
    let mut other = server.connect("/ws/session").await;
    send(&mut other, &fixture("session/session_init.json")).await;
    assert_eq!(recv(&mut other).await["type"], "session_init_ack");
    assert_eq!(http_get(server.addr, "/healthz", None).await, "ok");
    server.shutdown().await;
}

#[tokio::test]
async fn a_thirty_second_utterance_fits_the_default_frame_limit() {
    let server = start(Config::default()).await;
    let (mut node, _) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let sid = recv(&mut phone).await["session_id"].clone();
    let audio = tolk_protocol::audio::to_base64(&vec![0u8; 30 * 16_000 * 2]);
    let utt = json!({"type":"utterance","session_id":sid,"utterance_index":0,"manual_cut":false,"src_lang":"zh","tgt_lang":"en","dialect":null,"audio":audio,"audio_format":"pcm16","sample_rate":16000});
    send(&mut phone, &utt).await;
    let job = recv(&mut node).await;
    assert_eq!(job["audio"].as_str().unwrap().len(), audio.len());
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_disconnected() {
    let config = Config { outbound_queue: 4, ..Config::default() };
    let server = start(config).await;
    let (mut node, node_id) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let sid = recv(&mut phone).await["session_id"].clone();
    // The phone sends utterances and never reads; the node answers each with
    // 1 MB of speech. Socket buffers fill, then the outbound queue, then the
    // server cuts the phone off instead of buffering without bound.
    let tts = "A".repeat(1 << 20);
    let mut cut = false;
    for i in 0..60u64 {
        let mut utt = fixture("session/utterance.json");
        utt["session_id"] = sid.clone();
        utt["utterance_index"] = json!(i);
        if phone.send(Ws::text(utt.to_string())).await.is_err() {
            cut = true;
            break;
        }
        // Once the phone is cut off its utterances are no longer read.
        let Ok(job) = tokio::time::timeout(Duration::from_secs(3), recv(&mut node)).await else {
            cut = true;
            break;
        };
        let mut result = fixture("node/job_result_success.json");
        result["job_id"] = job["job_id"].clone();
        result["node_id"] = json!(node_id);
        result["session_id"] = sid.clone();
        result["utterance_index"] = json!(i);
        result["tts_audio"] = json!(tts);
        send(&mut node, &result).await;
        if i % 5 == 4 && http_get(server.addr, "/metrics", None).await.contains("tolk_slow_peers_total 1") {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow peer was not disconnected");
    assert!(http_get(server.addr, "/metrics", None).await.contains("tolk_slow_peers_total 1"));
    // Its socket is closed: reading drains what was in flight, then ends.
    let ended = tokio::time::timeout(Duration::from_secs(20), async { while let Some(Ok(_)) = phone.next().await {} }).await;
    assert!(ended.is_ok(), "the slow peer's socket stayed open");
    server.shutdown().await;
}

#[tokio::test]
async fn admin_api_needs_the_bearer_token_and_drains_nodes() {
    let config = Config { admin_token: Some("adm1n".into()), ..Config::default() };
    let server = start(config).await;
    let (mut node, node_id) = example_node(&server).await;
    assert!(http_get(server.addr, "/admin/nodes", None).await.starts_with("ERROR 401"));
    assert!(http_get(server.addr, "/admin/nodes", Some("wrong")).await.starts_with("ERROR 401"));
    let nodes: Value = serde_json::from_str(&http_get(server.addr, "/admin/nodes", Some("adm1n")).await).unwrap();
    assert_eq!(nodes[0]["node_id"], node_id.as_str());
    let sessions: Value = serde_json::from_str(&http_get(server.addr, "/admin/sessions", Some("adm1n")).await).unwrap();
    assert_eq!(sessions, json!([]));
    let r = http_post(server.addr, &format!("/admin/nodes/{node_id}/drain"), "adm1n").await;
    assert_eq!(r, "sent");
    let ctl = recv(&mut node).await;
    assert_eq!((ctl["type"].as_str(), ctl["command"].as_str()), (Some("node_control"), Some("drain")));
    assert!(http_post(server.addr, "/admin/nodes/n-nope/shutdown", "adm1n").await.starts_with("ERROR 404"));
    server.shutdown().await;
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let server = start(Config::default()).await;
    assert!(http_get(server.addr, "/admin/nodes", Some("anything")).await.starts_with("ERROR 404"));
    assert_eq!(http_get(server.addr, "/readyz", None).await, "ready");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_running_jobs_then_closes_everyone() {
    let server = start(Config { shutdown_grace_ms: 5_000, ..Config::default() }).await;
    let (mut node, node_id) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let sid = recv(&mut phone).await["session_id"].clone();
    let mut utt = fixture("session/utterance.json");
    utt["session_id"] = sid.clone();
    send(&mut phone, &utt).await;
    let job = recv(&mut node).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "waits for the running job");
    // New connections are refused while stopping.
    assert!(tokio_tungstenite::connect_async(format!("ws://{addr}/ws/session")).await.is_err());
    let mut result = fixture("node/job_result_success.json");
    result["job_id"] = job["job_id"].clone();
    result["node_id"] = json!(node_id);
    result["session_id"] = sid;
    send(&mut node, &result).await;
    assert_eq!(recv(&mut phone).await["type"], "translation_result", "the running job's result still arrives");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn timeouts_run_on_paused_time() {
    let server = start(Config::default()).await;
    let (mut node, _) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let sid = recv(&mut phone).await["session_id"].clone();
    let mut utt = fixture("session/utterance.json");
    utt["session_id"] = sid;
    send(&mut phone, &utt).await;
    assert_eq!(recv(&mut node).await["type"], "job_assign");
    // The node never answers nor heartbeats. A minute passes on the paused
    // clock (real sockets need the clock running again to read): the node is
    // declared dead, the job finds no other node, and the phone gets
    // NODE_UNAVAILABLE for index 4.
    tokio::time::pause();
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::resume();
    let e = recv(&mut phone).await;
    assert_eq!((e["code"].as_str(), e["details"]["utterance_index"].as_u64()), (Some("NODE_UNAVAILABLE"), Some(4)));
    server.shutdown().await;
}

#[tokio::test]
async fn tls_serves_wss_with_a_generated_certificate() {
    let dir = std::env::temp_dir().join(format!("tolk-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let config = Config { tls_cert: Some(dir.join("cert.pem")), tls_key: Some(dir.join("key.pem")), ..Config::default() };
    let server = start(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/ws/session", server.addr.port()), tls).await.unwrap();
    ws.send(Ws::text(fixture("session/session_init.json").to_string())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "session_init_ack");
    // Plain ws to a TLS port fails.
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/ws/session", server.addr)).await.is_err());
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Extension 7 over a real socket: a heartbeat entry with only `model_id`
/// and `enabled:false` switches that model off; `enabled:true` back on.
#[tokio::test]
async fn heartbeat_model_updates_switch_a_model_off_and_on() {
    let mut config = Config::default();
    config.core.admission_wait_ms = 300;
    let server = start(config).await;
    let (mut node, node_id) = example_node(&server).await;
    let heartbeat = |enabled: bool| {
        json!({"type":"node_heartbeat","node_id":node_id,"timestamp":1,
               "resource_usage":{"cpu_percent":1.0,"mem_percent":1.0,"running_jobs":0},
               "installed_models":[{"model_id":"mdl-nmt-zh-en-base-v1","enabled":enabled}]})
    };
    send(&mut node, &heartbeat(false)).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let session_id = recv(&mut phone).await["session_id"].as_str().unwrap().to_owned();
    let mut utt = fixture("session/utterance.json");
    utt["session_id"] = json!(session_id);
    send(&mut phone, &utt).await;
    let err = recv(&mut phone).await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("NODE_UNAVAILABLE")), "{err}");
    assert_eq!(err["details"]["utterance_index"], 4);
    assert_eq!(err["details"]["reasons"], json!({"no_model": 1}), "why: the node's nmt model is off");
    send(&mut node, &heartbeat(true)).await;
    utt["utterance_index"] = json!(5);
    send(&mut phone, &utt).await;
    let job = recv(&mut node).await;
    assert_eq!((job["type"].as_str(), job["utterance_index"].as_u64()), (Some("job_assign"), Some(5)), "{job}");
    let metrics = http_get(server.addr, "/metrics", None).await;
    for name in ["tolk_unavailable_total{reason=\"no_model\"} 1", "tolk_dispatch_seconds_bucket", "tolk_core_lock_held_seconds_total"] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    server.shutdown().await;
}

/// Overload over real sockets (bounded in count and time): a node with two
/// slots, ten phones sending twenty utterances each at once. Every
/// utterance ends in exactly one of a result, a `NODE_UNAVAILABLE` outcome
/// or a `RATE_LIMITED` refusal, each at once and with `retry_after_ms`; the
/// node stays alive and the dispatcher serves normally afterwards.
#[tokio::test]
async fn overload_is_answered_at_once_and_nothing_is_lost() {
    let server = start(Config::default()).await;
    let (mut node, node_id) = example_node(&server).await;
    // The node: two jobs at a time, each answered 50 ms after it arrives.
    let node_task = tokio::spawn(async move {
        let mut answered = 0u32;
        let mut held: std::collections::VecDeque<(tokio::time::Instant, Value)> = Default::default();
        loop {
            let next = held.front().map(|(at, _)| *at);
            tokio::select! {
                msg = recv_opt(&mut node) => {
                    let Some(job) = msg else { return answered };
                    if job["type"] == "job_assign" {
                        held.push_back((tokio::time::Instant::now() + Duration::from_millis(50), job));
                    }
                }
                () = async { match next { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    let (_, job) = held.pop_front().unwrap();
                    let mut r = fixture("node/job_result_success.json");
                    for k in ["job_id", "session_id", "utterance_index"] {
                        r[k] = job[k].clone();
                    }
                    r["node_id"] = json!(node_id);
                    send(&mut node, &r).await;
                    answered += 1;
                }
            }
        }
    });
    let mut phones = Vec::new();
    for _ in 0..10 {
        let mut phone = server.connect("/ws/session").await;
        send(&mut phone, &fixture("session/session_init.json")).await;
        let id = recv(&mut phone).await["session_id"].as_str().unwrap().to_owned();
        phones.push((phone, id));
    }
    for (phone, id) in &mut phones {
        for i in 0..20 {
            let mut utt = fixture("session/utterance.json");
            utt["session_id"] = json!(id);
            utt["utterance_index"] = json!(i);
            send(phone, &utt).await;
        }
    }
    let (mut results, mut unavailable, mut refused) = (0, 0, 0);
    for (phone, _) in &mut phones {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 20 {
            let m = tokio::time::timeout(Duration::from_secs(20), recv(phone)).await.expect("every utterance is answered in time");
            let index = match m["type"].as_str() {
                Some("translation_result") => {
                    results += 1;
                    m["utterance_index"].as_u64()
                }
                Some("error") => {
                    assert!(m["details"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{m}");
                    match m["code"].as_str() {
                        Some("NODE_UNAVAILABLE") => {
                            unavailable += 1;
                            m["details"]["utterance_index"].as_u64()
                        }
                        Some("RATE_LIMITED") => {
                            refused += 1;
                            m["details"]["refused_index"].as_u64()
                        }
                        _ => panic!("unexpected {m}"),
                    }
                }
                _ => continue,
            };
            assert!(seen.insert(index.unwrap()), "one answer per utterance: {m}");
        }
    }
    assert_eq!(results + unavailable + refused, 200);
    assert!(results >= 2 && unavailable + refused > 0, "results {results}, unavailable {unavailable}, refused {refused}");
    let nodes = http_get(server.addr, "/metrics", None).await;
    assert!(nodes.contains("tolk_nodes_dead_total 0") && nodes.contains("tolk_nodes_live 1"), "{nodes}");
    // Back to normal: a new utterance is served at once.
    let (phone, id) = &mut phones[0];
    let mut utt = fixture("session/utterance.json");
    utt["session_id"] = json!(id);
    utt["utterance_index"] = json!(100);
    send(phone, &utt).await;
    let m = tokio::time::timeout(Duration::from_secs(5), recv(phone)).await.unwrap();
    assert_eq!((m["type"].as_str(), m["utterance_index"].as_u64()), (Some("translation_result"), Some(100)), "{m}");
    drop(phones);
    server.shutdown().await;
    let _ = node_task.await;
}

/// The core's histograms reach `/metrics` with cumulative buckets ending in
/// the total count, as Prometheus expects.
#[tokio::test]
async fn metrics_histograms_are_cumulative() {
    let server = start(Config::default()).await;
    let (mut node, node_id) = example_node(&server).await;
    let mut phone = server.connect("/ws/session").await;
    send(&mut phone, &fixture("session/session_init.json")).await;
    let session_id = recv(&mut phone).await["session_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let mut utt = fixture("session/utterance.json");
        utt["session_id"] = json!(session_id);
        utt["utterance_index"] = json!(i);
        send(&mut phone, &utt).await;
        let job = recv(&mut node).await;
        let mut r = fixture("node/job_result_success.json");
        for k in ["job_id", "session_id", "utterance_index"] {
            r[k] = job[k].clone();
        }
        r["node_id"] = json!(node_id);
        send(&mut node, &r).await;
        assert_eq!(recv(&mut phone).await["type"], "translation_result");
    }
    let metrics = http_get(server.addr, "/metrics", None).await;
    let buckets: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("tolk_job_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative: {buckets:?}");
    assert_eq!(buckets.last(), Some(&3), "+Inf holds every observation: {metrics}");
    assert!(metrics.contains("tolk_job_seconds_count 3"), "{metrics}");
    server.shutdown().await;
}
