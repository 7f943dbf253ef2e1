//! The checked-in JSON Schema under `protocol/schema/` matches the types.
//! Regenerate with `UPDATE_SCHEMA=1 cargo test -p tolk-protocol --test schema`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::PathBuf;

#[test]
fn checked_in_schema_is_fresh() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema");
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    let mut stale = Vec::new();
    let all = tolk_protocol::schema::all();
    for (name, schema) in &all {
        let path = dir.join(format!("{name}.json"));
        let fresh = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if update {
            std::fs::write(&path, &fresh).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(fresh.as_str()) {
            stale.push(name.clone());
        }
    }
    assert!(stale.is_empty(), "stale schema files {stale:?}: run UPDATE_SCHEMA=1 cargo test -p tolk-protocol --test schema");
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(on_disk, all.len(), "schema/ holds files no message generates");
}

#[test]
fn message_schemas_require_their_type() {
    for (name, schema) in tolk_protocol::schema::all() {
        let props = schema.as_object().unwrap().get("properties");
        if let Some(props) = props {
            assert_eq!(props["type"]["const"], name.as_str(), "{name}");
        } else {
            assert!(schema.as_object().unwrap().contains_key("oneOf"), "{name} is neither a message nor a direction");
        }
    }
}
