//! A test double of a node: registers on `/ws/node` of a real dispatcher and
//! answers every `job_assign` with a `job_result` that *measures* the audio it
//! got (decoded from the job's base64, as a real node would): `text_asr` is
//! "N ms of audio", `text_translated` is "utterance I: N ms". No inference;
//! the dispatcher, the sockets and the audio are real.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by tests and examples; a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

/// How the fake node behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer each job after this long...
    pub delay_ms: u64,
    /// ...plus this much times (2 - index % 3): later utterances often finish
    /// first, so the dispatcher's reordering is exercised.
    pub stagger_ms: u64,
}

/// A running fake node.
#[derive(Debug)]
pub struct FakeNode {
    pub node_id: String,
    /// Jobs answered so far.
    pub answered: Arc<AtomicU64>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Languages the fake node serves: English speech to German.
pub const SRC: &str = "en";
pub const TGT: &str = "de";

/// Registers a node at `base` (`ws://HOST:PORT`) and serves jobs until the
/// connection ends.
pub async fn start(base: &str, behaviour: Behaviour) -> FakeNode {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{base}/ws/node")).await.expect("node connects");
    let (mut sink, mut stream) = ws.split();
    let register = json!({
        "type": "node_register", "node_id": null, "version": "fake-1", "platform": "linux",
        "hardware": {"cpu_cores": 2, "memory_gb": 4, "gpus": []},
        "installed_models": [
            {"model_id":"asr-en","kind":"asr","src_lang":SRC,"tgt_lang":null,"dialect":null,"version":"1"},
            {"model_id":"nmt-en-de","kind":"nmt","src_lang":SRC,"tgt_lang":TGT,"dialect":null,"version":"1"},
            {"model_id":"tts-de","kind":"tts","src_lang":TGT,"tgt_lang":null,"dialect":null,"version":"1"}
        ],
        "features_supported": {"emotion_detection": false, "voice_style_detection": false, "speech_rate_detection": false},
        "accept_public_jobs": true
    });
    sink.send(Ws::text(register.to_string())).await.expect("register");
    let ack = loop {
        match stream.next().await.expect("ack").expect("ack") {
            Ws::Text(t) => break serde_json::from_str::<Value>(t.as_str()).expect("json"),
            _ => continue,
        }
    };
    assert_eq!(ack["type"], "node_register_ack", "{ack}");
    let node_id = ack["node_id"].as_str().expect("node_id").to_owned();
    let answered = Arc::new(AtomicU64::new(0));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let id = node_id.clone();
    let count = answered.clone();
    let task = tokio::spawn(async move {
        let writer = tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink.send(Ws::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let hb_tx = tx.clone();
        let hb_id = id.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let hb = json!({"type":"node_heartbeat","node_id":hb_id,"timestamp":0,
                    "resource_usage":{"cpu_percent":1.0,"gpu_percent":null,"gpu_mem_percent":null,"mem_percent":1.0,"running_jobs":0}});
                if hb_tx.send(hb.to_string()).is_err() {
                    break;
                }
            }
        });
        while let Some(Ok(msg)) = stream.next().await {
            let Ws::Text(text) = msg else { continue };
            let Ok(job) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            if job["type"] != "job_assign" {
                continue;
            }
            let (tx, id, behaviour, count) = (tx.clone(), id.clone(), behaviour.clone(), count.clone());
            tokio::spawn(async move {
                let index = job["utterance_index"].as_u64().unwrap_or(0);
                let wait = behaviour.delay_ms + behaviour.stagger_ms * (2 - index % 3);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let _ = tx.send(answer(&id, &job).to_string());
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
        heartbeat.abort();
        writer.abort();
    });
    FakeNode { node_id, answered, task }
}

/// The `job_result` for `job`: measures its audio.
fn answer(node_id: &str, job: &Value) -> Value {
    let format = match job["audio_format"].as_str() {
        Some("wav") => tolk_protocol::AudioFormat::Wav,
        Some("opus") => tolk_protocol::AudioFormat::Opus,
        _ => tolk_protocol::AudioFormat::Pcm16,
    };
    let rate = job["sample_rate"].as_u64().unwrap_or(16_000) as u32;
    let index = job["utterance_index"].as_u64().unwrap_or(0);
    let base = json!({"type":"job_result","job_id":job["job_id"],"node_id":node_id,"session_id":job["session_id"],"utterance_index":index});
    let mut result = base;
    match tolk_protocol::audio::decode_base64(job["audio"].as_str().unwrap_or(""), format, rate) {
        Ok(pcm) => {
            let ms = pcm.duration_ms();
            result["success"] = json!(true);
            result["text_asr"] = json!(format!("{ms} ms of audio"));
            result["text_translated"] = json!(format!("utterance {index}: {ms} ms"));
            // A short beep of "speech" so the TTS path is exercised: 4
            // samples of pcm16, or 100 ms of Opus when the job asks for it.
            if job["tts_format"].as_str() == Some("opus") {
                let beep: Vec<i16> = (0..1600).map(|i| if i % 16 < 8 { 1000 } else { -1000 }).collect();
                let opus = tolk_protocol::opus::encode(&beep, 16_000, Default::default()).unwrap_or_default();
                result["tts_audio"] = json!(tolk_protocol::audio::to_base64(&opus));
                result["tts_format"] = json!("opus");
            } else {
                result["tts_audio"] = json!(tolk_protocol::audio::to_base64(&tolk_protocol::audio::encode_pcm16(&[0, 1000, 0, -1000])));
                result["tts_format"] = json!("pcm16");
            }
            result["tts_sample_rate"] = json!(16_000);
            result["processing_time_ms"] = json!(1);
        }
        Err(e) => {
            result["success"] = json!(false);
            result["error"] = json!({"code":"INVALID_AUDIO","message":e.message});
        }
    }
    result
}
