//! A table of bad inputs and the exact error code and field each gets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use tolk_protocol::{ClientToServer, ErrorCode, Message, NodeToServer, ProtocolError};

const UTTERANCE: &str = r#"{"type":"utterance","session_id":"sess-1","utterance_index":4,"manual_cut":false,"src_lang":"zh","tgt_lang":"en","dialect":null,"audio":"AAAA","audio_format":"pcm16","sample_rate":16000}"#;
const INIT: &str =
    r#"{"type":"session_init","client_version":"1.0","platform":"android","src_lang":"zh","tgt_lang":"en","pairing_code":null}"#;
const HEARTBEAT: &str =
    r#"{"type":"node_heartbeat","node_id":"n1","timestamp":1,"resource_usage":{"cpu_percent":1,"mem_percent":2,"running_jobs":0}}"#;

/// `base` with `key` set to the raw JSON `value` (or removed when `None`).
fn with(base: &str, key: &str, value: Option<&str>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    let obj = v.as_object_mut().unwrap();
    match value {
        Some(raw) => obj.insert(key.into(), serde_json::from_str(raw).unwrap()),
        None => obj.remove(key),
    };
    v.to_string()
}

fn check_err<M: Message + std::fmt::Debug>(input: &str, field: Option<&str>) -> ProtocolError {
    let err = M::parse(input).expect_err(input);
    assert_eq!(err.code, ErrorCode::InvalidMessage, "{input}");
    assert_eq!(err.field.as_deref(), field, "{input}: {}", err.message);
    // The answer to send names the field too.
    let msg = err.to_message();
    assert_eq!(msg.details.as_ref().and_then(|d| d["field"].as_str()), field);
    err
}

#[test]
fn frames_that_are_not_messages() {
    check_err::<ClientToServer>("", None);
    check_err::<ClientToServer>("hello", None);
    check_err::<ClientToServer>("[1,2]", None);
    check_err::<ClientToServer>("42", None);
    check_err::<ClientToServer>(r#"{"type":"utterance""#, None);
    check_err::<ClientToServer>(r#"{}"#, Some("type"));
    check_err::<ClientToServer>(r#"{"type":7}"#, Some("type"));
    let e = check_err::<ClientToServer>(r#"{"type":"launch_missiles"}"#, Some("type"));
    assert!(e.message.contains("launch_missiles"));
    // A server-to-client type is unknown in the client-to-server direction.
    check_err::<ClientToServer>(r#"{"type":"translation_result"}"#, Some("type"));
    check_err::<NodeToServer>(r#"{"type":"utterance"}"#, Some("type"));
    assert_eq!(ProtocolError::binary_frame().code, ErrorCode::InvalidMessage);
}

#[test]
fn utterance_fields() {
    assert!(ClientToServer::parse(UTTERANCE).is_ok());
    let table: &[(&str, Option<&str>, &str)] = &[
        ("audio", None, "audio"),
        ("audio", Some("12"), "audio"),
        ("audio", Some(r#""""#), "audio"),
        ("session_id", None, "session_id"),
        ("session_id", Some(r#""has space""#), "session_id"),
        ("utterance_index", Some("-1"), "utterance_index"),
        ("utterance_index", Some("1.5"), "utterance_index"),
        ("utterance_index", Some(r#""4""#), "utterance_index"),
        ("sample_rate", Some("12345"), "sample_rate"),
        ("sample_rate", Some(r#""16000""#), "sample_rate"),
        ("audio_format", Some(r#""mp3""#), "audio_format"),
        ("audio_format", None, "audio_format"),
        ("src_lang", Some(r#""english language""#), "src_lang"),
        ("tgt_lang", Some(r#""e""#), "tgt_lang"),
        ("dialect", Some(r#""zh_sichuan""#), "dialect"),
        ("manual_cut", Some(r#""yes""#), "manual_cut"),
        ("features", Some(r#"{"emotion_detection":"on"}"#), "features.emotion_detection"),
    ];
    for (key, value, field) in table {
        check_err::<ClientToServer>(&with(UTTERANCE, key, *value), Some(field));
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let msg = ClientToServer::parse(&with(UTTERANCE, "future_field", Some("[1,{}]"))).unwrap();
    assert!(matches!(msg, ClientToServer::Utterance(_)));
}

#[test]
fn session_init_fields() {
    assert!(ClientToServer::parse(INIT).is_ok());
    let table: &[(&str, Option<&str>, &str)] = &[
        ("platform", Some(r#""symbian""#), "platform"),
        ("platform", None, "platform"),
        ("pairing_code", Some(r#""12345""#), "pairing_code"),
        ("pairing_code", Some(r#""12345a""#), "pairing_code"),
        ("pairing_code", Some(r#""1234567""#), "pairing_code"),
        ("pairing_code", Some("123456"), "pairing_code"),
        ("src_lang", Some(r#""""#), "src_lang"),
        ("session_id", Some(r#""sess-1""#), "resume_token"),
        ("last_utterance_index", Some("-3"), "last_utterance_index"),
    ];
    for (key, value, field) in table {
        check_err::<ClientToServer>(&with(INIT, key, *value), Some(field));
    }
    let ok = ClientToServer::parse(&with(INIT, "pairing_code", Some(r#""012345""#))).unwrap();
    assert!(matches!(ok, ClientToServer::SessionInit(i) if i.pairing_code.as_deref() == Some("012345")));
}

#[test]
fn node_fields() {
    assert!(NodeToServer::parse(HEARTBEAT).is_ok());
    check_err::<NodeToServer>(
        &with(HEARTBEAT, "resource_usage", Some(r#"{"cpu_percent":120,"mem_percent":2,"running_jobs":0}"#)),
        Some("resource_usage.cpu_percent"),
    );
    check_err::<NodeToServer>(
        &with(HEARTBEAT, "resource_usage", Some(r#"{"cpu_percent":1,"mem_percent":2}"#)),
        Some("resource_usage.running_jobs"),
    );
    check_err::<NodeToServer>(
        &with(HEARTBEAT, "installed_models", Some(r#"[{"model_id":"m","kind":"nmt","src_lang":"en","version":"1"}]"#)),
        Some("installed_models[0].tgt_lang"),
    );
    check_err::<NodeToServer>(
        &with(HEARTBEAT, "installed_models", Some(r#"[{"model_id":"m","kind":7}]"#)),
        Some("installed_models[0].kind"),
    );
    check_err::<NodeToServer>(&with(HEARTBEAT, "timestamp", Some("-1")), Some("timestamp"));
    let reg = r#"{"type":"node_register","node_id":null,"version":"1","platform":"beos","hardware":{"cpu_cores":2,"memory_gb":4}}"#;
    check_err::<NodeToServer>(reg, Some("platform"));
    let reg = r#"{"type":"node_register","node_id":null,"version":"1","platform":"linux","hardware":{"cpu_cores":-2,"memory_gb":4}}"#;
    check_err::<NodeToServer>(reg, Some("hardware.cpu_cores"));
    let failed = r#"{"type":"job_result","job_id":"j","node_id":"n","session_id":"s","utterance_index":1,"success":false}"#;
    check_err::<NodeToServer>(failed, Some("error"));
    check_err::<NodeToServer>(r#"{"type":"pairing_code_request"}"#, Some("node_id"));
}
