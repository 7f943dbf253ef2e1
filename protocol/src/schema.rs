//! JSON Schema of every message, generated from the types (schemars).
//!
//! `protocol/schema/` holds the generated files; a test fails when they are
//! stale (regenerate with `UPDATE_SCHEMA=1 cargo test -p tolk-protocol --test schema`).

use schemars::{JsonSchema, Schema, schema_for};
use serde_json::{Value, json};

use crate::{common, node, session};

fn message<T: JsonSchema>(tag: &str) -> (String, Schema) {
    let mut schema = schema_for!(T);
    if let Some(obj) = schema.as_object_mut() {
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            props.insert("type".into(), json!({ "const": tag, "type": "string" }));
        }
        let required = obj.entry("required").or_insert_with(|| json!([]));
        if let Value::Array(list) = required {
            list.insert(0, json!("type"));
        }
        obj.insert("title".into(), json!(tag));
    }
    (tag.to_owned(), schema)
}

/// `(file stem, schema)` for every message and every direction enum.
pub fn all() -> Vec<(String, Schema)> {
    vec![
        message::<session::SessionInit>("session_init"),
        message::<session::SessionInitAck>("session_init_ack"),
        message::<session::Utterance>("utterance"),
        message::<session::TranslationResult>("translation_result"),
        message::<session::ClientHeartbeat>("client_heartbeat"),
        message::<session::ServerHeartbeat>("server_heartbeat"),
        message::<session::SessionClose>("session_close"),
        message::<session::SessionCloseAck>("session_close_ack"),
        message::<common::ErrorMessage>("error"),
        message::<node::NodeRegister>("node_register"),
        message::<node::NodeRegisterAck>("node_register_ack"),
        message::<node::NodeHeartbeat>("node_heartbeat"),
        message::<node::JobAssign>("job_assign"),
        message::<node::JobResult>("job_result"),
        message::<node::NodeError>("node_error"),
        message::<node::NodeControl>("node_control"),
        message::<node::PairingCodeRequest>("pairing_code_request"),
        message::<node::PairingCode>("pairing_code"),
        ("client_to_server".into(), schema_for!(session::ClientToServer)),
        ("server_to_client".into(), schema_for!(session::ServerToClient)),
        ("node_to_server".into(), schema_for!(node::NodeToServer)),
        ("server_to_node".into(), schema_for!(node::ServerToNode)),
    ]
}
