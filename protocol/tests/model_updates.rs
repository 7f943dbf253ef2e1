//! Extension 7: a heartbeat's `installed_models` are updates matched by `model_id`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use tolk_protocol::node::{InstalledModel, ModelUpdate};
use tolk_protocol::{Message, ModelKind, NodeToServer};

fn heartbeat(models: &str) -> String {
    format!(
        r#"{{"type":"node_heartbeat","node_id":"n-1","timestamp":1,"resource_usage":{{"cpu_percent":1,"mem_percent":1,"running_jobs":0}},"installed_models":{models}}}"#
    )
}

fn model(id: &str, kind: ModelKind, src: &str, tgt: Option<&str>) -> InstalledModel {
    InstalledModel {
        model_id: id.into(),
        kind,
        src_lang: Some(src.into()),
        tgt_lang: tgt.map(Into::into),
        dialect: None,
        version: "1".into(),
        enabled: None,
    }
}

#[test]
fn an_entry_with_only_model_id_and_enabled_parses_and_disables_that_model() {
    let NodeToServer::NodeHeartbeat(h) =
        NodeToServer::parse(&heartbeat(r#"[{"model_id":"mdl-nmt-zh-en-base-v1","enabled":false}]"#)).unwrap()
    else {
        panic!("not a heartbeat")
    };
    let updates = h.installed_models.unwrap();
    let mut models = vec![model("mdl-nmt-zh-en-base-v1", ModelKind::Nmt, "zh", Some("en")), model("asr", ModelKind::Asr, "zh", None)];
    assert!(updates[0].apply(&mut models));
    assert_eq!(models[0].enabled, Some(false));
    assert_eq!((models[0].src_lang.as_deref(), models[0].tgt_lang.as_deref()), (Some("zh"), Some("en")), "other fields unchanged");
    assert_eq!(models[1].enabled, None, "models not named are unchanged");
}

#[test]
fn a_new_complete_entry_adds_a_model_and_an_unknown_partial_one_changes_nothing() {
    let mut models = vec![model("asr", ModelKind::Asr, "en", None)];
    let added = ModelUpdate::from(model("tts", ModelKind::Tts, "es", None));
    assert!(added.apply(&mut models));
    assert_eq!(models.len(), 2);
    assert!(!ModelUpdate::disable("nope").apply(&mut models), "nothing to add without a kind");
    assert_eq!(models.len(), 2);
    // `null` clears a field; absent keeps it.
    let NodeToServer::NodeHeartbeat(h) = NodeToServer::parse(&heartbeat(r#"[{"model_id":"asr","dialect":null,"version":"2"}]"#)).unwrap()
    else {
        panic!("not a heartbeat")
    };
    models[0].dialect = Some("en-scouse".into());
    h.installed_models.unwrap()[0].apply(&mut models);
    assert_eq!((models[0].dialect.as_deref(), models[0].version.as_str(), models[0].src_lang.as_deref()), (None, "2", Some("en")));
}

#[test]
fn an_entry_that_names_its_kind_must_be_complete() {
    let err = NodeToServer::parse(&heartbeat(r#"[{"model_id":"m","kind":"nmt","src_lang":"en"}]"#)).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("installed_models[0].tgt_lang"));
    let err = NodeToServer::parse(&heartbeat(r#"[{"model_id":"","enabled":false}]"#)).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("installed_models[0].model_id"));
}
