//! Every example message of the two original documents parses into the right
//! variant and serializes back to the same JSON, field for field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use serde_json::Value;
use tolk_protocol::{ClientToServer, Message, NodeToServer, ServerToClient, ServerToNode};

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn check<M: Message + std::fmt::Debug>(path: &str, expected_type: &str) -> M {
    let text = fixture(path);
    let msg = M::parse(&text).unwrap_or_else(|e| panic!("{path}: {e} (field {:?})", e.field));
    assert_eq!(msg.type_name(), expected_type, "{path}");
    let original = numbers_as_f64(serde_json::from_str(&text).unwrap());
    let again = numbers_as_f64(serde_json::from_str(&msg.to_json()).unwrap());
    assert_eq!(again, original, "{path} does not serialize back field for field");
    msg
}

/// JSON has one number type: `32` and `32.0` are the same value.
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect()),
        other => other,
    }
}

#[test]
fn session_client_examples() {
    let init: ClientToServer = check("session/session_init.json", "session_init");
    let ClientToServer::SessionInit(init) = init else { panic!("wrong variant") };
    assert_eq!((init.src_lang.as_str(), init.tgt_lang.as_str()), ("zh", "en"));
    assert_eq!(init.pairing_code, None);

    let utt: ClientToServer = check("session/utterance.json", "utterance");
    let ClientToServer::Utterance(utt) = utt else { panic!("wrong variant") };
    assert_eq!(utt.utterance_index, 4);
    assert!(utt.manual_cut);
    assert_eq!(utt.audio, "base64-encoded-audio-data");

    check::<ClientToServer>("session/client_heartbeat.json", "client_heartbeat");
    check::<ClientToServer>("session/session_close.json", "session_close");
}

#[test]
fn session_server_examples() {
    check::<ServerToClient>("session/session_init_ack.json", "session_init_ack");
    let result: ServerToClient = check("session/translation_result.json", "translation_result");
    let ServerToClient::TranslationResult(result) = result else { panic!("wrong variant") };
    assert_eq!(result.extra.unwrap().speech_rate, Some(1.2));
    check::<ServerToClient>("session/server_heartbeat.json", "server_heartbeat");
    check::<ServerToClient>("session/session_close_ack.json", "session_close_ack");
    let err: ServerToClient = check("session/error_invalid_pairing_code.json", "error");
    let ServerToClient::Error(err) = err else { panic!("wrong variant") };
    assert_eq!(err.code, tolk_protocol::ErrorCode::InvalidPairingCode);
    let err: ServerToClient = check("session/error_invalid_message.json", "error");
    let ServerToClient::Error(err) = err else { panic!("wrong variant") };
    assert_eq!(err.details.unwrap()["field"], "audio");
}

#[test]
fn node_examples() {
    let reg: NodeToServer = check("node/node_register.json", "node_register");
    let NodeToServer::NodeRegister(reg) = reg else { panic!("wrong variant") };
    assert_eq!(reg.hardware.gpus[0].name, "RTX 3070");
    assert_eq!(reg.installed_models[0].kind, tolk_protocol::ModelKind::Nmt);
    check::<NodeToServer>("node/node_heartbeat.json", "node_heartbeat");
    let ok: NodeToServer = check("node/job_result_success.json", "job_result");
    assert!(matches!(ok, NodeToServer::JobResult(r) if r.success && r.processing_time_ms == Some(220)));
    let failed: NodeToServer = check("node/job_result_failure.json", "job_result");
    let NodeToServer::JobResult(failed) = failed else { panic!("wrong variant") };
    assert_eq!(failed.error.unwrap().code, tolk_protocol::JobErrorCode::ModelNotAvailable);
    check::<NodeToServer>("node/node_error.json", "node_error");
}

#[test]
fn server_to_node_examples() {
    check::<ServerToNode>("node/node_register_ack.json", "node_register_ack");
    let job: ServerToNode = check("node/job_assign.json", "job_assign");
    assert!(matches!(job, ServerToNode::JobAssign(j) if j.pipeline.use_tts && j.sample_rate == 16000));
    check::<ServerToNode>("node/node_control.json", "node_control");
}

#[test]
fn every_fixture_is_covered() {
    // A new fixture file must be added to a test above.
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let count: usize = ["session", "node"].iter().map(|side| std::fs::read_dir(format!("{dir}/{side}")).unwrap().count()).sum();
    assert_eq!(count, 18);
}
