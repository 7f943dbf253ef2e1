//! The plugin loader against real shared libraries: a good engine (the echo
//! test double), one declaring a future ABI version, one without the
//! descriptor symbol, a file that is no library, engine errors and panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::sync::Arc;

use tolk_engine_sdk::Options;
use tolk_node::config::Config;
use tolk_node::engine::plugin::{Library, LoadError, PluginEngine, Stage};
use tolk_node::engine::{Engine, EngineErrorKind, EngineSet, Hosting, Request, Response};

fn echo() -> PluginEngine {
    let lib = Library::open(&support::plugin("tolk-test-engine-echo")).unwrap();
    PluginEngine::create(lib, &Options::default()).unwrap()
}

fn translate(engine: &PluginEngine, text: &str) -> Result<Response, tolk_node::engine::EngineError> {
    engine.process(Request::Nmt { text, src_lang: "en", tgt_lang: "es" })
}

#[test]
fn a_good_engine_loads_and_translates() {
    let lib = Library::open(&support::plugin("tolk-test-engine-echo")).unwrap();
    assert_eq!((lib.stage(), lib.name(), lib.version()), (Stage::Nmt, "echo", "0.1"));
    let engine = PluginEngine::create(lib, &Options::default()).unwrap();
    assert_eq!(translate(&engine, "hello").unwrap(), Response::Text("[en→es] hello".into()));
    assert_eq!(translate(&engine, "").unwrap(), Response::Text("[en→es] ".into()));
}

#[test]
fn a_wrong_abi_version_is_refused_before_anything_else_is_read() {
    let path = support::plugin("tolk-test-engine-bad-abi");
    let err = Library::open(&path).unwrap_err();
    assert_eq!(err, LoadError::AbiVersion { path: path.clone(), found: 999, expected: 2 });
    assert!(err.to_string().contains("engine ABI version 999, this node speaks version 2 (and 1)"), "{err}");
}

#[test]
fn a_version_1_engine_still_loads_and_runs_and_sdk_engines_are_version_2() {
    let lib = Library::open(&support::plugin("tolk-test-engine-abi-v1")).unwrap();
    assert_eq!((lib.abi_version(), lib.stage(), lib.name()), (1, Stage::Nmt, "abi-v1"));
    assert!(lib.serves(Stage::Nmt) && !lib.serves(Stage::SpeechTranslation));
    let engine = PluginEngine::create(lib, &Options::default()).unwrap();
    assert_eq!(translate(&engine, "hi").unwrap(), Response::Text("v1:hi".into()));
    let echo = Library::open(&support::plugin("tolk-test-engine-echo")).unwrap();
    assert_eq!(echo.abi_version(), 2);
    assert!(echo.serves(Stage::Nmt) && !echo.serves(Stage::Asr));
    // A stage the library does not serve is refused by the host, not sent.
    let engine = PluginEngine::create(echo, &Options::default()).unwrap();
    let request = Request::SpeechTranslation { samples: &[0; 10], sample_rate: 16_000, src_lang: "zh", tgt_lang: "en" };
    assert!(engine.process(request).unwrap_err().message.contains("asked for SpeechTranslation"));
}

#[test]
fn a_library_without_the_descriptor_is_refused() {
    let err = Library::open(&support::plugin("tolk-test-engine-no-descriptor")).unwrap_err();
    assert!(matches!(err, LoadError::MissingSymbol { .. }), "{err:?}");
    assert!(err.to_string().contains("does not export `tolk_engine_descriptor`"), "{err}");
}

#[test]
fn a_file_that_is_no_library_is_refused() {
    let dir = support::temp_dir("not-a-library");
    let path = dir.join("libnot.so");
    std::fs::write(&path, "not an ELF file").unwrap();
    assert!(matches!(Library::open(&path).unwrap_err(), LoadError::Open { .. }));
    assert!(matches!(Library::open(&dir.join("missing.so")).unwrap_err(), LoadError::Open { .. }));
}

#[test]
fn engine_errors_and_panics_come_back_as_errors_and_the_engine_stays_usable() {
    let engine = echo();
    let e = translate(&engine, "fail: disk on fire").unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (EngineErrorKind::Backend, "asked to fail: disk on fire"));
    let e = translate(&engine, "bad: x").unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    let e = translate(&engine, "panic: now").unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::Panic);
    assert!(e.message.contains("engine panicked: asked to panic (call 3)"), "{}", e.message);
    // The instance survived its panic and keeps its state.
    assert_eq!(translate(&engine, "ok").unwrap(), Response::Text("[en→es] ok".into()));
}

#[test]
fn a_failing_create_and_a_request_for_another_stage_are_errors() {
    let lib = Library::open(&support::plugin("tolk-test-engine-echo")).unwrap();
    let opts = Options::from_pairs([("fail_create".to_owned(), "yes".to_owned())]);
    let e = PluginEngine::create(lib, &opts).unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (EngineErrorKind::Backend, "asked to fail at creation"));
    let e = echo().process(Request::Tts { text: "hi", lang: "en" }).unwrap_err();
    assert!(e.message.contains("is a Nmt engine, asked for Tts"), "{}", e.message);
}

#[test]
fn one_instance_serves_concurrent_callers_one_at_a_time() {
    let engine = Arc::new(echo());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let engine = engine.clone();
            std::thread::spawn(move || (0..25).map(|j| translate(&engine, &format!("{i}-{j}")).unwrap()).count())
        })
        .collect();
    assert_eq!(threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>(), 100);
}

/// In process and in child processes alike.
#[test]
fn an_engine_set_loads_what_it_can_and_reports_the_rest() {
    let in_process = Hosting::default();
    let children = Hosting { program: Some(env!("CARGO_BIN_EXE_tolk-node").into()), notify: None };
    for hosting in [in_process, children] {
        engine_set_loads_what_it_can(&hosting);
    }
}

fn engine_set_loads_what_it_can(hosting: &Hosting) {
    let text = format!(
        r#"
[[engine]]
stage = "nmt"
library = "{echo}"
model_id = "echo-en-es"
src_lang = "en"
tgt_lang = "es"

[[engine]]
stage = "asr"
library = "{echo}"
model_id = "echo-as-asr"
src_lang = "en"

[[engine]]
stage = "asr"
library = "{bad}"
model_id = "future"
src_lang = "en"

[[engine]]
stage = "nmt"
library = "{echo}"
model_id = "broken"
src_lang = "es"
tgt_lang = "en"
[engine.options]
fail_create = "yes"
"#,
        echo = support::plugin("tolk-test-engine-echo").display(),
        bad = support::plugin("tolk-test-engine-bad-abi").display(),
    );
    let config = Config::parse(&text).unwrap();
    let (set, failures) = EngineSet::load(&config, hosting);
    let models: Vec<String> = set.models().into_iter().map(|m| format!("{} {} {}", m.model_id, m.kind, m.version)).collect();
    assert_eq!(models, ["echo-en-es nmt 0.1"]);
    let failed: Vec<&str> = failures.iter().map(|f| f.model_id.as_str()).collect();
    assert_eq!(failed, ["echo-as-asr", "future", "broken"]);
    assert!(failures[0].message.contains("is a Nmt engine, configured as Asr"), "{:?}", failures[0]);
    assert!(failures[1].message.contains("ABI version 999"), "{:?}", failures[1]);
    assert!(failures[2].message.contains("asked to fail at creation"), "{:?}", failures[2]);
}

#[test]
fn a_pool_of_instances_serves_calls_in_parallel() {
    let text = format!(
        "[[engine]]\nstage = \"nmt\"\nlibrary = \"{}\"\nmodel_id = \"echo\"\nsrc_lang = \"en\"\ntgt_lang = \"es\"\ninstances = 3\n",
        support::plugin("tolk-test-engine-echo").display()
    );
    let (set, failures) = EngineSet::load(&Config::parse(&text).unwrap(), &Hosting::default());
    assert!(failures.is_empty(), "{failures:?}");
    let engine = set.find(&tolk_protocol::ModelKind::Nmt, "en", Some("es"), None).unwrap().engine.clone();
    // Three calls sleeping 300 ms each finish together when they run on three instances.
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.process(Request::Nmt { text: "sleep:300", src_lang: "en", tgt_lang: "es" }).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Response::Text("[en→es] sleep:300".into()));
    }
    assert!(started.elapsed() < std::time::Duration::from_millis(850), "took {:?}: not parallel", started.elapsed());
}
