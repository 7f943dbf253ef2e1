//! Opus on the wire (extension 12), end to end: a real dispatcher and a real
//! node (PocketSphinx → Apertium → eSpeak NG). Utterances go up as Ogg Opus
//! and speech comes back as Ogg Opus; bad Opus is refused with
//! `INVALID_AUDIO` naming why, and the session loses nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::wire::{self, Socket};
use tolk_e2e::{DispatcherProcess, NodeProcess, NodeSetup, scratch};
use tolk_protocol::audio::to_base64;
use tolk_protocol::ogg_opus;
use tolk_protocol::opus::{self, OpusSettings};

fn opus_utterance(session_id: &str, index: u64, bytes: &[u8]) -> Value {
    json!({
        "type": "utterance", "session_id": session_id, "utterance_index": index, "manual_cut": true,
        "src_lang": "en", "tgt_lang": "es", "dialect": null,
        "audio": to_base64(bytes), "audio_format": "opus", "sample_rate": speech::RATE,
    })
}

/// The next outcome frame (result or error) on `ws`.
async fn outcome(ws: &mut Socket) -> Value {
    loop {
        let f = wire::recv(ws).await;
        if wire::outcome_index(&f).is_some() {
            return f;
        }
    }
}

/// A served utterance: recognised (PocketSphinx on the decoded Opus), and
/// its speech Ogg Opus that decodes to speech.
fn assert_served(f: &Value, index: u64, text: &str) {
    assert_eq!((f["type"].as_str(), f["utterance_index"].as_u64()), (Some("translation_result"), Some(index)), "{f}");
    let heard = f["text_asr"].as_str().unwrap();
    let errors = speech::word_errors(text, heard);
    println!("#{index}: {text:?} heard as {heard:?} ({errors} errors) → {:?}", f["text_translated"]);
    assert!(errors * 4 <= speech::words(text).len(), "#{index}: {heard:?} for {text:?}");
    assert!(!f["text_translated"].as_str().unwrap().is_empty());
    assert_eq!(f["tts_format"], "opus", "the speech the session asked for: {f}");
    assert_eq!(f["tts_sample_rate"], 24_000, "eSpeak's 22.05 kHz, coded at 24 kHz");
    let bytes = tolk_protocol::audio::from_base64(f["tts_audio"].as_str().unwrap()).unwrap();
    let info = ogg_opus::inspect(&bytes).unwrap();
    assert_eq!(info.head.input_sample_rate, 22_050);
    let pcm = opus::decode(&bytes, 24_000).unwrap();
    let secs = pcm.samples.len() as f64 / 24_000.0;
    assert!(secs > 0.5 && secs < 10.0, "#{index}: {secs:.2} s of speech");
    assert!(speech::rms(&pcm.samples) > 300.0, "#{index}: the speech is near silence");
    // 24 kbit/s: a tenth of the pcm16 it replaces (plus container framing).
    assert!((bytes.len() as f64) < secs * 3_600.0, "#{index}: {} bytes for {secs:.2} s", bytes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_both_ways_through_a_real_node_and_bad_opus_is_refused_naming_why() {
    let dir = scratch("opus");
    let texts = &SENTENCES[..3];
    let clips = speech::clips(&dir.join("speech"), texts);
    let dispatcher = DispatcherProcess::start(&dir, "", &[]).await;
    let mut node = NodeProcess::start(&dir, "node", &dispatcher.ws_base(), &NodeSetup::new(Engines::Real), false);
    node.registered(1).await;

    let mut init = wire::session_init();
    init["tts_format"] = json!("opus");
    let (mut ws, ack) = wire::open_session(dispatcher.addr, &init).await;
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    let encoded: Vec<Vec<u8>> = clips.iter().map(|c| opus::encode(c, speech::RATE, OpusSettings::default()).unwrap()).collect();

    // 0: served.
    wire::send(&mut ws, &opus_utterance(&sid, 0, &encoded[0])).await;
    assert_served(&outcome(&mut ws).await, 0, texts[0]);

    // 1–4: bad Opus, each refused naming why; 5: packets that pass the
    // container checks but that libopus cannot decode (only the node sees it).
    let good = &encoded[1];
    let mut stereo = good.clone();
    set_channels(&mut stereo, 2);
    let mut undecodable = Vec::new();
    let head = ogg_opus::OpusHead { pre_skip: 0, input_sample_rate: 16_000, output_gain: 0 };
    undecodable.extend(ogg_opus::mux(&head, &[vec![(31 << 3) | 3, 0x41, 0xff, 0xff]], 960));
    let bad: [(&[u8], &str); 5] = [
        (&good[..good.len() / 2], "truncated"),
        (b"ID3\x03\0\0\0\0\0\0 an mp3, not ogg", "not an Ogg stream"),
        (&stereo, "wrong channel count: 2"),
        (&good[..good.len() - 10], "truncated"),
        (&undecodable, "does not decode"),
    ];
    for (i, (bytes, why)) in bad.iter().enumerate() {
        let index = 1 + i as u64;
        wire::send(&mut ws, &opus_utterance(&sid, index, bytes)).await;
        let f = outcome(&mut ws).await;
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("INVALID_AUDIO")), "#{index}: {f}");
        assert_eq!(f["details"]["utterance_index"], index, "{f}");
        assert_eq!(f["details"]["field"], "audio", "{f}");
        assert!(f["message"].as_str().unwrap().contains(why), "#{index}: {:?} should say {why:?}", f["message"]);
    }
    // Nothing else in the session is lost: the next utterances are served, in order.
    wire::send(&mut ws, &opus_utterance(&sid, 6, &encoded[1])).await;
    wire::send(&mut ws, &opus_utterance(&sid, 7, &encoded[2])).await;
    assert_served(&outcome(&mut ws).await, 6, texts[1]);
    assert_served(&outcome(&mut ws).await, 7, texts[2]);
    assert!(wire::recv_within(&mut ws, Duration::from_millis(300)).await.is_none(), "one outcome each");
    // The node ran the good ones and the undecodable one; the rest never reached it.
    assert_eq!(node.jobs_done().len(), 3, "{}", node.log());
    assert!(node.log().contains("code=INVALID_AUDIO"), "the node refused the undecodable packets itself");
}

/// Sets the OpusHead's channel count (first page) and re-stamps that page's
/// CRC, so only the channel count is wrong.
fn set_channels(bytes: &mut [u8], channels: u8) {
    let body = 27 + usize::from(bytes[26]);
    bytes[body + 9] = channels;
    let page_len = body + usize::from(bytes[27]);
    bytes[22..26].fill(0);
    let mut crc = 0u32;
    for &b in &bytes[..page_len] {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    bytes[22..26].copy_from_slice(&crc.to_le_bytes());
}
