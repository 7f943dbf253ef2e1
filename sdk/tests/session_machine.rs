//! The session state machine, driven by hand: no sockets, no clock. Each test
//! plays the server (frames in), the network (connected / lost) and time
//! (`advance`), and checks the frames sent and the events delivered.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use serde_json::{Value, json};
use tolk_sdk::session::{Action, ConnectionState, Event, Input, Millis, Session, SessionConfig, UtteranceFailure, failure};
use tolk_sdk::{AudioEncoding, SdkError, Utterance};

const SID: &str = "s-1";
const TOKEN: &str = "tok-1";

fn config() -> SessionConfig {
    SessionConfig { src_lang: "zh".into(), tgt_lang: "en".into(), ..SessionConfig::default() }
}

struct H {
    s: Session,
    now: Millis,
    sent: Vec<Value>,
    events: Vec<Event>,
    connects: usize,
    disconnects: usize,
}

impl H {
    fn new(cfg: SessionConfig) -> Self {
        let s = Session::new(cfg, 7, 1_700_000_000_000, 0).unwrap();
        let mut h = Self { s, now: 0, sent: vec![], events: vec![], connects: 0, disconnects: 0 };
        h.run();
        h
    }

    fn run(&mut self) {
        for a in self.s.take_actions() {
            match a {
                Action::Connect => self.connects += 1,
                Action::Disconnect => self.disconnects += 1,
                Action::Send(text) => self.sent.push(serde_json::from_str(&text).unwrap()),
                Action::Deliver(e) => self.events.push(e),
            }
        }
    }

    fn input(&mut self, i: Input<'_>) {
        self.s.handle(self.now, i);
        self.run();
    }

    fn frame(&mut self, v: Value) {
        let text = v.to_string();
        self.input(Input::Frame(&text));
    }

    /// Moves time forward by `ms`, firing every timer on the way.
    fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(d) = self.s.next_deadline().filter(|&d| d <= end) {
            self.now = self.now.max(d);
            self.s.on_timeout(self.now);
            self.run();
        }
        self.now = end;
    }

    /// Connected, then the ack (new or resumed session).
    fn open(&mut self, sid: &str, token: &str) {
        self.input(Input::Connected);
        self.frame(json!({"type":"session_init_ack","session_id":sid,"assigned_node_id":null,"message":"ok","resume_token":token}));
    }

    fn sent(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.sent)
    }

    fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn sent_indexes(&mut self) -> Vec<u64> {
        self.sent().iter().filter(|f| f["type"] == "utterance").map(|f| f["utterance_index"].as_u64().unwrap()).collect()
    }

    fn push(&mut self, ms: u64) {
        self.input(Input::Utterance(utt(ms)));
    }

    fn result(&mut self, index: u64) {
        self.frame(result(SID, index));
    }
}

fn utt(ms: u64) -> Utterance {
    let n = (ms * 16) as usize;
    Utterance {
        samples: (0..n).map(|i| ((i % 100) as i16 - 50) * 100).collect(),
        sample_rate: 16_000,
        start_ms: 0,
        speech_start_ms: 0,
        speech_end_ms: ms,
        end_ms: ms,
        manual_cut: false,
        forced: false,
    }
}

fn result(sid: &str, index: u64) -> Value {
    json!({"type":"translation_result","session_id":sid,"utterance_index":index,"job_id":format!("j-{index}"),
           "text_asr":format!("asr {index}"),"text_translated":format!("tr {index}"),"tts_audio":null,"tts_format":null,"extra":null})
}

/// The outcomes delivered, as (index, "ok" | failure code).
fn outcomes(events: &[Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Result(t) => Some((t.index, "ok".to_owned())),
            Event::Failed(UtteranceFailure { index, code, .. }) => Some((*index, code.clone())),
            _ => None,
        })
        .collect()
}

fn ok(indexes: impl IntoIterator<Item = u64>) -> Vec<(u64, String)> {
    indexes.into_iter().map(|i| (i, "ok".to_owned())).collect()
}

fn states(events: &[Event]) -> Vec<ConnectionState> {
    events.iter().filter_map(|e| if let Event::State(s) = e { Some(s.clone()) } else { None }).collect()
}

#[test]
fn opens_a_session_with_the_configured_fields() {
    let cfg = SessionConfig {
        dialect: Some("zh-sichuan".into()),
        pairing_code: Some("123456".into()),
        features: tolk_sdk::Features { speech_rate_detection: true, ..Default::default() },
        ..config()
    };
    let mut h = H::new(cfg);
    assert_eq!(h.connects, 1);
    assert_eq!(states(&h.events()), [ConnectionState::Connecting { attempt: 0 }]);
    h.input(Input::Connected);
    let init = &h.sent()[0];
    assert_eq!(init["type"], "session_init");
    assert_eq!(
        (init["src_lang"].as_str(), init["tgt_lang"].as_str(), init["dialect"].as_str()),
        (Some("zh"), Some("en"), Some("zh-sichuan"))
    );
    assert_eq!(init["pairing_code"], "123456");
    assert_eq!(init["features"]["speech_rate_detection"], true);
    assert_eq!(init["platform"], "android");
    assert!(init.get("session_id").is_none() && init.get("resume_token").is_none());
    h.frame(json!({"type":"session_init_ack","session_id":SID,"assigned_node_id":"node-1","message":"ok","resume_token":TOKEN}));
    let expected = ConnectionState::Connected { session_id: SID.into(), resumed: false, assigned_node_id: Some("node-1".into()) };
    assert_eq!(states(&h.events()), [expected]);
}

#[test]
fn invalid_settings_are_refused_up_front() {
    let bad = |cfg: SessionConfig| Session::new(cfg, 0, 0, 0).unwrap_err();
    assert!(
        matches!(bad(SessionConfig { src_lang: "not a tag".into(), ..config() }), SdkError::InvalidClientConfig { field, .. } if field == "src_lang")
    );
    assert!(
        matches!(bad(SessionConfig { pairing_code: Some("12ab".into()), ..config() }), SdkError::InvalidClientConfig { field, .. } if field == "pairing_code")
    );
    assert!(
        matches!(bad(SessionConfig { dead_after_ms: 1000, ..config() }), SdkError::InvalidClientConfig { field, .. } if field == "dead_after_ms")
    );
    assert!(
        matches!(bad(SessionConfig { max_in_flight: 0, ..config() }), SdkError::InvalidClientConfig { field, .. } if field == "max_in_flight")
    );
}

#[test]
fn utterances_get_increasing_indexes_and_wait_for_the_session() {
    let mut h = H::new(SessionConfig { audio_encoding: AudioEncoding::Pcm16, ..config() });
    h.push(500);
    h.push(700);
    let queued: Vec<u64> = h.events().iter().filter_map(|e| if let Event::Queued(q) = e { Some(q.index) } else { None }).collect();
    assert_eq!(queued, [0, 1]);
    assert!(h.sent().is_empty(), "nothing is sent before the ack");
    h.open(SID, TOKEN);
    let sent = h.sent();
    assert_eq!(sent[0]["type"], "session_init");
    let u = &sent[1];
    assert_eq!((u["type"].as_str(), u["session_id"].as_str(), u["utterance_index"].as_u64()), (Some("utterance"), Some(SID), Some(0)));
    assert_eq!((u["audio_format"].as_str(), u["sample_rate"].as_u64(), u["src_lang"].as_str()), (Some("pcm16"), Some(16000), Some("zh")));
    let audio = tolk_protocol::audio::decode_base64(u["audio"].as_str().unwrap(), tolk_protocol::AudioFormat::Pcm16, 16_000).unwrap();
    assert_eq!(audio.samples, utt(500).samples);
    assert_eq!(sent[2]["utterance_index"], 1);
    h.push(300);
    assert_eq!(h.sent_indexes(), [2], "sent at once on a live session");
}

#[test]
fn wav_encoding_sends_a_wav_file() {
    let mut h = H::new(SessionConfig { audio_encoding: AudioEncoding::Wav, ..config() });
    h.open(SID, TOKEN);
    h.push(200);
    let sent = h.sent();
    let u = sent.iter().find(|f| f["type"] == "utterance").unwrap();
    assert_eq!(u["audio_format"], "wav");
    let pcm = tolk_protocol::audio::decode_base64(u["audio"].as_str().unwrap(), tolk_protocol::AudioFormat::Wav, 16_000).unwrap();
    assert_eq!(pcm.samples, utt(200).samples);
}

#[test]
fn opus_is_the_default_both_ways() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(1_000);
    let sent = h.sent();
    assert_eq!(sent[0]["tts_format"], "opus", "results' speech asked for as Opus");
    let u = sent.iter().find(|f| f["type"] == "utterance").unwrap();
    assert_eq!((u["audio_format"].as_str(), u["sample_rate"].as_u64()), (Some("opus"), Some(16_000)));
    let b64 = u["audio"].as_str().unwrap();
    let pcm = tolk_protocol::audio::decode_base64(b64, tolk_protocol::AudioFormat::Opus, 16_000).unwrap();
    assert_eq!(pcm.samples.len(), utt(1_000).samples.len(), "the whole utterance, no more");
    assert!(b64.len() < 32_000 / 10, "{} base64 bytes for a second: a tenth of pcm16", b64.len());
    // An Opus result reaches the app as pcm16.
    let speech: Vec<i16> = (0..4_800).map(|i| ((f64::from(i) * 0.1).sin() * 5000.0) as i16).collect();
    let opus = tolk_protocol::opus::encode(&speech, 24_000, Default::default()).unwrap();
    h.frame(json!({"type":"translation_result","session_id":SID,"utterance_index":0,"job_id":"j-0","text_translated":"hi",
                   "tts_audio":tolk_protocol::audio::to_base64(&opus),"tts_format":"opus","tts_sample_rate":24000}));
    let t = h.events().into_iter().find_map(|e| if let Event::Result(t) = e { Some(t) } else { None }).unwrap();
    assert_eq!((t.tts_format, t.tts_sample_rate), (Some(tolk_sdk::AudioFormat::Pcm16), Some(24_000)));
    assert_eq!(t.tts_audio.map(|a| a.len()), Some(4_800 * 2));
    // Bad Opus speech: the texts still arrive, with an error event naming why.
    h.push(100);
    h.frame(json!({"type":"translation_result","session_id":SID,"utterance_index":1,"job_id":"j-1","text_translated":"hey",
                   "tts_audio":tolk_protocol::audio::to_base64(&opus[..opus.len() / 2]),"tts_format":"opus","tts_sample_rate":24000}));
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::Audio(m)) if m.contains("truncated"))), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, Event::Result(t) if t.index == 1 && t.text_translated == "hey" && t.tts_audio.is_none())));
    // Opus settings are checked up front.
    let bad = SessionConfig { audio_encoding: AudioEncoding::Opus { bitrate_bps: 24_000, complexity: 11 }, ..config() };
    assert!(matches!(Session::new(bad, 0, 0, 0).unwrap_err(), SdkError::InvalidClientConfig { field, .. } if field == "complexity"));
}

#[test]
fn outcomes_are_delivered_in_index_order_whatever_the_server_does() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    for _ in 0..5 {
        h.push(100);
    }
    h.events();
    h.result(3);
    h.result(1);
    assert!(outcomes(&h.events()).is_empty(), "held behind index 0");
    h.result(0);
    assert_eq!(outcomes(&h.events()), ok([0, 1]));
    // Duplicates, an unknown index, another session's result: dropped.
    h.result(1);
    h.result(3);
    h.result(99);
    h.frame(result("s-other", 2));
    assert!(outcomes(&h.events()).is_empty());
    // An error outcome releases what is behind it, like a result.
    h.frame(json!({"type":"error","code":"NODE_UNAVAILABLE","message":"no node","details":{"utterance_index":2}}));
    assert_eq!(outcomes(&h.events()), [(2, "NODE_UNAVAILABLE".into()), (3, "ok".into())]);
    // An outcome is never replaced.
    h.result(4);
    h.frame(json!({"type":"error","code":"NODE_UNAVAILABLE","message":"late","details":{"utterance_index":4}}));
    assert_eq!(outcomes(&h.events()), ok([4]));
    assert_eq!(h.s.unanswered(), 0);
}

#[test]
fn results_carry_text_extras_and_decoded_speech() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.frame(json!({"type":"translation_result","session_id":SID,"utterance_index":0,"job_id":"j-0","text_asr":"你好","text_translated":"hello",
                   "tts_audio":tolk_protocol::audio::to_base64(&[1,2,3,4]),"tts_format":"pcm16","tts_sample_rate":22050,"extra":{"emotion":"happy","speech_rate":1.5,"voice_style":null}}));
    let t = h.events().into_iter().find_map(|e| if let Event::Result(t) = e { Some(t) } else { None }).unwrap();
    assert_eq!((t.text_asr.as_str(), t.text_translated.as_str(), t.job_id.as_str()), ("你好", "hello", "j-0"));
    assert_eq!(t.tts_audio.as_deref(), Some(&[1u8, 2, 3, 4][..]));
    assert_eq!(t.tts_sample_rate, Some(22_050));
    assert_eq!((t.emotion.as_deref(), t.speech_rate, t.voice_style), (Some("happy"), Some(1.5), None));
    // Bad base64 speech: the text still arrives, with an error event.
    h.push(100);
    h.frame(json!({"type":"translation_result","session_id":SID,"utterance_index":1,"job_id":"j-1","tts_audio":"***"}));
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::BadFrame(_)))));
    assert!(ev.iter().any(|e| matches!(e, Event::Result(t) if t.index == 1 && t.tts_audio.is_none())));
}

#[test]
fn heartbeats_report_the_last_index_the_app_has() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.sent();
    h.push(100);
    h.push(100);
    h.result(1);
    h.sent();
    h.advance(5_000);
    let hb = h.sent();
    assert_eq!(hb.len(), 1);
    assert_eq!((hb[0]["type"].as_str(), hb[0]["session_id"].as_str()), (Some("client_heartbeat"), Some(SID)));
    assert!(hb[0].get("last_utterance_index").is_none(), "index 0 has no outcome yet, so nothing is confirmed");
    assert_eq!(hb[0]["timestamp"], 1_700_000_005_000u64);
    h.frame(json!({"type":"server_heartbeat","session_id":SID,"timestamp":1}));
    h.result(0);
    h.advance(5_000);
    assert_eq!(h.sent()[0]["last_utterance_index"], 1);
}

#[test]
fn a_silent_connection_is_dropped_and_the_session_resumed() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    for _ in 0..4 {
        h.push(100);
    }
    h.result(0);
    h.result(2); // held behind 1
    h.sent();
    h.events();
    // The server answers heartbeats for a while, then goes silent.
    h.advance(5_000);
    h.frame(json!({"type":"server_heartbeat","session_id":SID,"timestamp":1}));
    h.advance(14_999);
    assert_eq!(h.disconnects, 0);
    h.advance(1);
    assert_eq!(h.disconnects, 1);
    let st = states(&h.events());
    let ConnectionState::Disconnected { retry_in_ms, reason } = &st[0] else { panic!("{st:?}") };
    assert!((250..=500).contains(retry_in_ms), "first retry after 250–500 ms, got {retry_in_ms}");
    assert!(reason.contains("no frame"), "{reason}");
    h.advance(*retry_in_ms);
    assert_eq!(h.connects, 2);
    h.sent();
    h.input(Input::Connected);
    let init = &h.sent()[0];
    assert_eq!((init["session_id"].as_str(), init["resume_token"].as_str()), (Some(SID), Some(TOKEN)));
    assert_eq!(init["last_utterance_index"], 0, "the app has everything up to 0");
    h.frame(json!({"type":"session_init_ack","session_id":SID,"assigned_node_id":null,"message":"session resumed","resume_token":TOKEN}));
    assert_eq!(
        states(&h.events()).last(),
        Some(&ConnectionState::Connected { session_id: SID.into(), resumed: true, assigned_node_id: None })
    );
    assert_eq!(h.sent_indexes(), [1, 3], "every utterance without an outcome is sent again, in order");
    // The server re-delivers 2 (a duplicate here) and answers the others.
    h.result(2);
    h.result(1);
    h.result(3);
    assert_eq!(outcomes(&h.events()), ok([1, 2, 3]));
}

#[test]
fn back_off_doubles_with_jitter_up_to_the_cap() {
    let cfg = SessionConfig { reconnect_min_ms: 100, reconnect_max_ms: 1_000, ..config() };
    let mut h = H::new(cfg);
    h.events();
    let mut delays = vec![];
    for _ in 0..7 {
        h.input(Input::ConnectFailed("refused".into()));
        let ev = h.events();
        let Some(ConnectionState::Disconnected { retry_in_ms, .. }) = states(&ev).first().cloned() else { panic!("{ev:?}") };
        delays.push(retry_in_ms);
        h.advance(retry_in_ms);
        assert!(matches!(states(&h.events())[..], [ConnectionState::Connecting { .. }]));
    }
    for (n, d) in delays.iter().enumerate() {
        let full = (100u64 << n).min(1_000);
        assert!((full / 2..=full).contains(d), "attempt {n}: {d} not in [{}, {full}] ({delays:?})", full / 2);
    }
    assert_eq!(h.connects, 8);
    // Success resets the back-off.
    h.open(SID, TOKEN);
    h.input(Input::ConnectionLost("reset".into()));
    let Some(ConnectionState::Disconnected { retry_in_ms, .. }) = states(&h.events()).last().cloned() else { panic!() };
    assert!((50..=100).contains(&retry_in_ms), "{retry_in_ms}");
}

#[test]
fn no_ack_in_time_is_a_failed_attempt() {
    let mut h = H::new(config());
    h.events();
    h.input(Input::Connected);
    h.advance(9_999);
    assert_eq!(h.disconnects, 0);
    h.advance(1);
    assert_eq!(h.disconnects, 1);
    let ev = h.events();
    assert!(matches!(&states(&ev)[..], [ConnectionState::Disconnected { reason, .. }] if reason.contains("session_init_ack")), "{ev:?}");
    // Connecting that never completes times out the same way.
    h.advance(1_000);
    assert_eq!(h.connects, 2);
    h.advance(10_000);
    assert_eq!(h.disconnects, 2);
}

#[test]
fn a_refused_resume_starts_a_new_session_and_resends_under_the_same_indexes() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    h.push(100);
    h.result(0);
    h.input(Input::ConnectionLost("reset".into()));
    h.advance(1_000);
    h.sent();
    h.events();
    h.input(Input::Connected);
    assert_eq!(h.sent()[0]["session_id"], SID);
    h.frame(json!({"type":"error","code":"INVALID_SESSION","message":"unknown or expired session; start a new one"}));
    let init = &h.sent()[0];
    assert_eq!(init["type"], "session_init");
    assert!(init.get("session_id").is_none(), "a fresh session on the same connection: {init}");
    h.frame(json!({"type":"session_init_ack","session_id":"s-2","assigned_node_id":null,"message":"ok","resume_token":"tok-2"}));
    assert_eq!(states(&h.events()), [ConnectionState::Connected { session_id: "s-2".into(), resumed: false, assigned_node_id: None }]);
    let sent = h.sent();
    let idx: Vec<_> = sent.iter().map(|f| (f["session_id"].as_str().unwrap(), f["utterance_index"].as_u64().unwrap())).collect();
    assert_eq!(idx, [("s-2", 1), ("s-2", 2)]);
    h.frame(result("s-2", 2));
    h.frame(result(SID, 1)); // the old session's: ignored
    h.frame(result("s-2", 1));
    assert_eq!(outcomes(&h.events()), ok([1, 2]));
}

#[test]
fn a_session_that_expires_while_live_is_replaced() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.events();
    h.frame(json!({"type":"error","code":"INVALID_SESSION","message":"session expired after inactivity"}));
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::Server { code, .. }) if code == "INVALID_SESSION")));
    assert_eq!(h.disconnects, 1);
    h.advance(1_000);
    h.sent();
    h.input(Input::Connected);
    assert!(h.sent()[0].get("session_id").is_none(), "no resume of a session the server ended");
    h.open("s-2", "tok-2");
    assert_eq!(h.sent_indexes(), [0]);
}

#[test]
fn rate_limited_utterances_are_sent_again_later_in_order() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    for _ in 0..4 {
        h.push(100);
    }
    assert_eq!(h.sent_indexes(), [0, 1, 2, 3]);
    // The server took 0 and 1, refused 2 and 3.
    for i in [2, 3] {
        h.frame(json!({"type":"error","code":"RATE_LIMITED","message":"later","details":{"field":"utterance_index","refused_index":i}}));
    }
    assert!(outcomes(&h.events()).is_empty(), "a refusal is not an outcome");
    h.push(100);
    assert!(h.sent_indexes().is_empty(), "paused after a refusal");
    h.advance(999);
    assert!(h.sent_indexes().is_empty());
    h.advance(1);
    // Resumed with a window of 2 (what the server had taken): 0 and 1 are
    // still in flight, so nothing more goes yet.
    assert!(h.sent_indexes().is_empty());
    h.result(0);
    assert_eq!(h.sent_indexes(), [2, 3], "an outcome frees room (the window grows by one)");
    h.result(1);
    assert_eq!(h.sent_indexes(), [4]);
    for i in 2..5 {
        h.result(i);
    }
    assert_eq!(outcomes(&h.events()), ok(0..5));
}

#[test]
fn a_refusal_with_retry_after_ms_waits_that_long() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    assert_eq!(h.sent_indexes(), [0, 1]);
    let refusal = |i: u64, ms: u64| {
        json!({"type":"error","code":"RATE_LIMITED","message":"over its share",
               "details":{"field":"utterance_index","refused_index":i,"retry_after_ms":ms}})
    };
    h.frame(refusal(0, 2_500));
    h.frame(refusal(1, 2_500));
    h.advance(2_499);
    assert!(h.sent_indexes().is_empty(), "the server asked for 2.5 s, not the default 1 s");
    h.advance(1);
    assert_eq!(h.sent_indexes(), [0], "sent again at retry_after_ms (window of one: nothing was accepted)");
    h.result(0);
    assert_eq!(h.sent_indexes(), [1]);
    h.result(1);
    assert_eq!(outcomes(&h.events()), ok(0..2), "nothing lost");
}

#[test]
fn after_a_refusal_the_window_stays_cut_for_retry_after_ms() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    for _ in 0..3 {
        h.push(100);
    }
    assert_eq!(h.sent_indexes(), [0, 1, 2]);
    // The server took 0 and 1 and refused 2: this session holds its share.
    h.frame(json!({"type":"error","code":"RATE_LIMITED","message":"over its share",
                   "details":{"field":"utterance_index","refused_index":2,"retry_after_ms":500}}));
    h.push(100);
    assert!(h.sent_indexes().is_empty(), "paused");
    h.advance(100);
    h.result(0);
    assert_eq!(h.sent_indexes(), [2], "an outcome ends the pause, in a window of two");
    for at in [200, 300, 400] {
        h.advance(100);
        h.push(100);
        h.result(at / 100 - 1);
        assert_eq!(h.sent_indexes().len(), 1, "at {at} ms one goes out per outcome: the window stays at two");
    }
    h.advance(100);
    h.push(100);
    h.push(100);
    h.result(4);
    assert_eq!(h.sent_indexes(), [6, 7], "retry_after_ms has passed: the window grows by one per outcome again");
    for i in 5..8 {
        h.result(i);
    }
    assert_eq!(outcomes(&h.events()), ok(0..8), "nothing lost");
}

#[test]
fn a_refusal_that_names_another_code_is_the_outcome() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    h.frame(json!({"type":"error","code":"INVALID_MESSAGE","message":"too late","details":{"field":"utterance_index","refused_index":0}}));
    h.result(1);
    assert_eq!(outcomes(&h.events()), [(0, "INVALID_MESSAGE".into()), (1, "ok".into())]);
}

#[test]
fn an_anonymous_refusal_is_reported_and_the_outcome_timeout_ends_the_wait() {
    let cfg = SessionConfig { outcome_timeout_ms: 60_000, ..config() };
    let mut h = H::new(cfg);
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    h.frame(json!({"type":"error","code":"INVALID_MESSAGE","message":"utterance_index 0 is at or below one already answered","details":{"field":"utterance_index"}}));
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::Server { field: Some(f), .. }) if f == "utterance_index")));
    h.result(1);
    // Keep the connection alive meanwhile.
    for _ in 0..11 {
        h.advance(5_000);
        h.frame(json!({"type":"server_heartbeat","session_id":SID,"timestamp":1}));
    }
    assert!(outcomes(&h.events()).is_empty());
    h.advance(5_000);
    assert_eq!(outcomes(&h.events()), [(0, failure::NO_OUTCOME.into()), (1, "ok".into())]);
    // A late result for 0 changes nothing.
    h.result(0);
    assert!(outcomes(&h.events()).is_empty());
}

#[test]
fn the_outcome_clock_runs_only_while_connected() {
    let cfg = SessionConfig { outcome_timeout_ms: 20_000, reconnect_max_ms: 1_000, ..config() };
    let mut h = H::new(cfg);
    h.open(SID, TOKEN);
    h.push(100);
    h.input(Input::ConnectionLost("reset".into()));
    // Offline for a minute: connection attempts fail, nothing times out.
    for _ in 0..60 {
        h.advance(1_000);
        if h.s.next_deadline().is_some() {
            h.input(Input::ConnectFailed("unreachable".into()));
        }
    }
    assert!(outcomes(&h.events()).is_empty());
    assert_eq!(h.s.unanswered(), 1);
}

#[test]
fn a_full_buffer_refuses_new_utterances_without_losing_old_ones() {
    let cfg = SessionConfig { max_unanswered: 3, ..config() };
    let mut h = H::new(cfg);
    for _ in 0..4 {
        h.push(100);
    }
    let ev = h.events();
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Queued(_))).count(), 3);
    assert!(matches!(ev.last(), Some(Event::Error(SdkError::BufferFull(_)))));
    // Byte bound too.
    let mut h = H::new(SessionConfig { max_buffered_bytes: 10_000, audio_encoding: AudioEncoding::Pcm16, ..config() });
    h.push(200); // 6400 bytes of pcm16 → 8536 of base64
    h.push(200);
    let ev = h.events();
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Queued(_))).count(), 1);
    assert!(matches!(ev.last(), Some(Event::Error(SdkError::BufferFull(_)))));
    h.open(SID, TOKEN);
    h.result(0);
    h.push(200);
    assert!(matches!(h.events().last(), Some(Event::Queued(q)) if q.index == 1), "room again once delivered");
}

#[test]
fn the_send_window_bounds_what_is_in_flight() {
    let cfg = SessionConfig { max_in_flight: 2, ..config() };
    let mut h = H::new(cfg);
    h.open(SID, TOKEN);
    for _ in 0..4 {
        h.push(100);
    }
    assert_eq!(h.sent_indexes(), [0, 1]);
    h.result(1);
    assert_eq!(h.sent_indexes(), [2], "an outcome frees a slot, even ahead of order");
    h.result(0);
    assert_eq!(h.sent_indexes(), [3]);
}

#[test]
fn close_waits_for_outcomes_then_closes_the_session() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    h.sent();
    h.input(Input::Close);
    assert!(h.sent().is_empty(), "waits for the outcomes first");
    h.push(100);
    assert!(matches!(h.events().last(), Some(Event::Error(SdkError::Closed))), "no new utterance once closing");
    h.result(0);
    h.result(1);
    let sent = h.sent();
    assert_eq!((sent[0]["type"].as_str(), sent[0]["reason"].as_str()), (Some("session_close"), Some("user_finished")));
    assert!(!h.s.is_closed());
    h.frame(json!({"type":"session_close_ack","session_id":SID}));
    assert!(h.s.is_closed());
    let ev = h.events();
    assert_eq!(outcomes(&ev), ok([0, 1]));
    assert!(matches!(ev.last(), Some(Event::State(ConnectionState::Closed { .. }))));
    assert_eq!(h.disconnects, 1);
    assert_eq!(h.s.next_deadline(), None);
}

#[test]
fn close_gives_up_at_its_deadline_and_fails_what_is_left_in_order() {
    let mut h = H::new(SessionConfig { close_timeout_ms: 3_000, ..config() });
    h.open(SID, TOKEN);
    for _ in 0..3 {
        h.push(100);
    }
    h.result(1);
    h.input(Input::Close);
    h.advance(2_999);
    assert!(!h.s.is_closed());
    h.advance(1);
    assert!(h.s.is_closed());
    let ev = h.events();
    assert_eq!(outcomes(&ev), [(0, failure::CLOSED.into()), (1, "ok".into()), (2, failure::CLOSED.into())]);
    assert!(h.sent().iter().any(|f| f["type"] == "session_close"));
    assert!(matches!(ev.last(), Some(Event::State(ConnectionState::Closed { .. }))));
}

#[test]
fn close_while_offline_keeps_trying_until_the_deadline() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.input(Input::ConnectionLost("reset".into()));
    h.input(Input::Close);
    h.advance(1_000);
    h.sent();
    h.open(SID, TOKEN); // resumed
    assert_eq!(h.sent_indexes(), [0]);
    h.result(0);
    assert!(h.sent().iter().any(|f| f["type"] == "session_close"));
    // The connection drops before the ack: closed anyway (the server drops
    // the session with it).
    h.input(Input::ConnectionLost("reset".into()));
    assert!(h.s.is_closed());
    assert_eq!(outcomes(&h.events()), ok([0]));
}

#[test]
fn close_with_nothing_pending_and_no_session_stops_at_once() {
    let mut h = H::new(config());
    h.input(Input::Close);
    assert!(h.s.is_closed());
    assert!(matches!(h.events().last(), Some(Event::State(ConnectionState::Closed { .. }))));
    h.push(100);
    assert!(matches!(h.events().last(), Some(Event::Error(SdkError::Closed))));
}

#[test]
fn abort_fails_everything_at_once() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.push(100);
    h.push(100);
    h.input(Input::Abort);
    assert!(h.s.is_closed());
    assert_eq!(outcomes(&h.events()), [(0, failure::CLOSED.into()), (1, failure::CLOSED.into())]);
    assert_eq!(h.sent().last().unwrap()["reason"], "app_exit");
}

#[test]
fn a_refused_session_is_fatal() {
    for code in ["INVALID_PAIRING_CODE", "UNSUPPORTED_FEATURE", "RATE_LIMITED", "UNAUTHORIZED", "INVALID_MESSAGE"] {
        let mut h = H::new(config());
        h.push(100);
        h.input(Input::Connected);
        h.frame(json!({"type":"error","code":code,"message":"no"}));
        assert!(h.s.is_closed(), "{code}");
        let ev = h.events();
        assert_eq!(outcomes(&ev), [(0, code.to_owned())]);
        assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::SessionRefused { code: c, .. }) if c == code)));
        assert!(matches!(ev.last(), Some(Event::State(ConnectionState::Closed { .. }))));
    }
}

#[test]
fn a_full_server_is_retried_with_back_off() {
    let mut h = H::new(config());
    h.input(Input::Connected);
    h.events();
    h.frame(json!({"type":"error","code":"INTERNAL_ERROR","message":"the server is at capacity; try again later"}));
    assert!(!h.s.is_closed());
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e, Event::Error(SdkError::Server { code, .. }) if code == "INTERNAL_ERROR")));
    assert!(matches!(states(&ev)[..], [ConnectionState::Disconnected { .. }]));
    h.advance(1_000);
    assert_eq!(h.connects, 2);
}

#[test]
fn bad_frames_are_reported_and_ignored() {
    let mut h = H::new(config());
    h.open(SID, TOKEN);
    h.input(Input::Frame("not json"));
    h.input(Input::Frame(r#"{"type":"mystery"}"#));
    let ev = h.events();
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Error(SdkError::BadFrame(_)))).count(), 2);
    h.push(100);
    h.result(0);
    assert_eq!(outcomes(&h.events()), ok([0]));
    assert_eq!(h.disconnects, 0);
}

/// Deterministic xorshift for the randomized test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A hostile network and server, at random: connections drop, results come
/// out of order, twice, for unknown indexes, as errors; sessions expire;
/// resumes are refused. Whatever happens, every utterance taken gets exactly
/// one outcome, outcomes come in index order, and `Closed` comes last.
#[test]
fn randomized_every_utterance_gets_exactly_one_outcome_in_order() {
    for seed in 1..=300u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let cfg = SessionConfig { max_in_flight: 1 + r.below(8) as usize, close_timeout_ms: 30_000, ..config() };
        let mut h = H::new(cfg);
        let mut all = vec![];
        let mut session = 0u32;
        let mut live = false;
        // Utterances the fake server has seen on the current session.
        let mut seen: Vec<u64> = vec![];
        let steps = 200 + r.below(200);
        for step in 0..steps {
            if step == steps - 50 {
                h.input(Input::Close);
            }
            for f in h.sent() {
                match f["type"].as_str() {
                    Some("utterance") => seen.push(f["utterance_index"].as_u64().unwrap()),
                    Some("session_init") if r.below(8) == 0 => {
                        h.frame(json!({"type":"error","code":"INVALID_SESSION","message":"expired"}));
                    }
                    Some("session_init") => {
                        session += 1;
                        let sid = format!("s-{session}");
                        seen.clear();
                        h.frame(json!({"type":"session_init_ack","session_id":sid,"message":"ok","resume_token":"t"}));
                        live = true;
                    }
                    Some("session_close") => h.frame(json!({"type":"session_close_ack","session_id":format!("s-{session}")})),
                    _ => {}
                }
            }
            let sid = format!("s-{session}");
            match r.below(12) {
                0 => {
                    h.push(50);
                }
                1 | 2 if live && !seen.is_empty() => {
                    let i = seen[r.below(seen.len() as u64) as usize];
                    h.frame(result(&sid, i));
                }
                3 if live && !seen.is_empty() => {
                    let i = seen[r.below(seen.len() as u64) as usize];
                    h.frame(json!({"type":"error","code":"NODE_UNAVAILABLE","message":"x","details":{"utterance_index":i}}));
                }
                4 if live => h.frame(result(&sid, r.below(1000))),
                5 if live && r.below(4) == 0 => {
                    live = false;
                    h.input(Input::ConnectionLost("drop".into()));
                }
                6 if live && !seen.is_empty() && r.below(3) == 0 => {
                    let i = seen[r.below(seen.len() as u64) as usize];
                    h.frame(
                        json!({"type":"error","code":"RATE_LIMITED","message":"x","details":{"field":"utterance_index","refused_index":i}}),
                    );
                }
                7 if live && r.below(10) == 0 => {
                    live = false;
                    h.frame(json!({"type":"error","code":"INVALID_SESSION","message":"expired"}));
                }
                _ => {
                    h.advance(r.below(3_000));
                    if live {
                        h.frame(json!({"type":"server_heartbeat","session_id":sid,"timestamp":1}));
                    }
                }
            }
            if h.connects > h.disconnects && !live && r.below(2) == 0 {
                // The pending connection attempt completes.
                h.input(Input::Connected);
            }
            all.extend(h.events());
            if h.s.is_closed() {
                break;
            }
        }
        h.advance(1_000_000);
        all.extend(h.events());
        assert!(h.s.is_closed(), "seed {seed}: closes by its deadline");
        let queued: Vec<u64> = all.iter().filter_map(|e| if let Event::Queued(q) = e { Some(q.index) } else { None }).collect();
        let got: Vec<u64> = outcomes(&all).iter().map(|(i, _)| *i).collect();
        assert_eq!(queued, (0..queued.len() as u64).collect::<Vec<_>>(), "seed {seed}");
        assert_eq!(got, queued, "seed {seed}: exactly one outcome each, in order");
        let closed = all.iter().position(|e| matches!(e, Event::State(ConnectionState::Closed { .. }))).expect("Closed");
        assert!(all[closed + 1..].iter().all(|e| matches!(e, Event::Error(SdkError::Closed))), "seed {seed}: only refusals after Closed");
    }
}
