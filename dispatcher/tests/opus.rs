//! Opus on the wire (extension 12) in the core: valid streams are relayed
//! byte for byte with their length known; bad ones are refused with
//! `INVALID_AUDIO` naming why, and the session goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use harness::*;
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::core::Endpoint;
use tolk_protocol::audio::to_base64;
use tolk_protocol::common::ErrorCode;
use tolk_protocol::ogg_opus;
use tolk_protocol::opus::{OpusSettings, encode};
use tolk_protocol::{AudioFormat, ClientToServer, ServerToClient};

fn speechlike(ms: u32) -> Vec<i16> {
    (0..16 * ms).map(|i| ((f64::from(i) * 0.07).sin() * 6000.0 * (f64::from(i) * 0.0007).sin()) as i16).collect()
}

fn opus_utterance(sid: &str, index: u64, bytes: &[u8]) -> ClientToServer {
    let mut u = utterance(sid, index, "en", "es");
    u.audio = to_base64(bytes).into();
    u.audio_format = AudioFormat::Opus;
    ClientToServer::Utterance(u)
}

fn open_opus_session(sim: &mut Sim) -> (u64, String) {
    let conn = sim.open(Endpoint::Session);
    let ClientToServer::SessionInit(mut init) = init("en", "es", None) else { unreachable!() };
    init.tts_format = Some(AudioFormat::Opus);
    sim.client(conn, ClientToServer::SessionInit(init));
    match sim.take_client(conn).pop() {
        Some(ServerToClient::SessionInitAck(ack)) => (conn, ack.session_id),
        other => panic!("expected session_init_ack, got {other:?}"),
    }
}

#[test]
fn opus_is_relayed_untouched_with_its_length_and_the_sessions_tts_format() {
    let cfg = CoreConfig::default();
    let (base, per_s) = (cfg.job_timeout_base_ms, cfg.job_timeout_per_audio_s_ms);
    let mut sim = Sim::new(cfg);
    let (node, _, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid) = open_opus_session(&mut sim);
    let bytes = encode(&speechlike(3_000), 16_000, OpusSettings::default()).unwrap();
    let ClientToServer::Utterance(u) = opus_utterance(&sid, 0, &bytes) else { unreachable!() };
    let sent = u.audio.as_str().to_owned();
    sim.client(client, ClientToServer::Utterance(u));
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.audio.as_str(), sent, "byte for byte");
    assert_eq!(job.audio_format, AudioFormat::Opus);
    assert_eq!(job.tts_format, Some(AudioFormat::Opus), "the session's tts_format reaches the node");
    // The deadline grows with the length read from the granule position.
    assert_eq!(job.deadline_ms, Some(base + 3_000 * per_s / 1000));
}

#[test]
fn a_session_without_tts_format_sends_none() {
    let mut sim = Sim::new(CoreConfig::default());
    let (node, _, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert_eq!(sim.jobs(node)[0].tts_format, None);
}

#[test]
fn bad_opus_is_refused_naming_why_and_the_session_goes_on() {
    let mut sim = Sim::new(CoreConfig::default());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid) = open_opus_session(&mut sim);
    let good = encode(&speechlike(1_000), 16_000, OpusSettings::default()).unwrap();
    let mut stereo = good.clone();
    // Turn the OpusHead's channel count into 2, with the page's CRC fixed.
    let stereo_stream = restamp_channels(&mut stereo, 2);
    let cases: [(&[u8], &str); 4] = [
        (&good[..good.len() / 2], "truncated"),
        (b"RIFF\x24\0\0\0WAVEfmt not ogg at all", "not an Ogg stream"),
        (stereo_stream, "wrong channel count: 2"),
        (&good[..good.len() - 1], "truncated"),
    ];
    for (i, (bytes, why)) in cases.iter().enumerate() {
        sim.client(client, opus_utterance(&sid, i as u64, bytes));
        let out = sim.take_client(client);
        assert_eq!(out.len(), 1, "case {i}: one outcome at once");
        let err = error_of(&out[0]).unwrap_or_else(|| panic!("case {i}: {:?}", out[0]));
        assert_eq!(err.code, ErrorCode::InvalidAudio, "case {i}");
        assert!(err.message.contains(why), "case {i}: {:?} should say {why:?}", err.message);
        assert_eq!(err.utterance_index(), Some(i as u64));
        assert_eq!(err.details.as_ref().unwrap()["field"], "audio");
    }
    assert!(sim.jobs(node).is_empty(), "no node spent time on bad audio");
    // The next utterance is served.
    sim.client(client, opus_utterance(&sid, 4, &good));
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1);
    sim.succeed(node, &node_id, &jobs[0]);
    let out = sim.take_client(client);
    assert!(matches!(&out[..], [ServerToClient::TranslationResult(r)] if r.utterance_index == 4), "{out:?}");
}

/// Rewrites the channel count in the OpusHead of `bytes` (the first page)
/// and its CRC, so only the channel count is wrong.
fn restamp_channels(bytes: &mut [u8], channels: u8) -> &[u8] {
    let segs = usize::from(bytes[26]);
    let body = 27 + segs;
    bytes[body + 9] = channels;
    let page_len = body + usize::from(bytes[27]);
    bytes[22..26].fill(0);
    let crc = ogg_crc(&bytes[..page_len]);
    bytes[22..26].copy_from_slice(&crc.to_le_bytes());
    assert!(ogg_opus::inspect(bytes).unwrap_err().message.contains("channel"));
    bytes
}

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}
