//! Engines as the node sees them: one [`Engine`] trait over the three stages,
//! the plugin-backed implementation ([`plugin`]), the same engines in
//! supervised child processes ([`process`], the default), and the
//! [`EngineSet`] the configuration loads. Tests put fakes behind the same trait.
//!
//! Out of process: [`supervisor`] decides (sans-IO), [`process`] drives the
//! children, [`host`] is the child's side (`tolk-node engine-host`), and
//! [`wire`] the frames between them.

pub mod host;
pub mod plugin;
pub mod process;
pub mod supervisor;
pub mod wire;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tolk_protocol::ModelKind;
use tolk_protocol::node::InstalledModel;

use crate::config::{Config, EngineConfig, Isolation, StageName};
use crate::models;

/// One call of an engine.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Asr {
        samples: &'a [i16],
        sample_rate: u32,
        lang: &'a str,
    },
    Nmt {
        text: &'a str,
        src_lang: &'a str,
        tgt_lang: &'a str,
    },
    Tts {
        text: &'a str,
        lang: &'a str,
    },
    /// Speech in `src_lang` → text in `tgt_lang` (ABI 2), for an `nmt` model
    /// whose engine reads audio.
    SpeechTranslation {
        samples: &'a [i16],
        sample_rate: u32,
        src_lang: &'a str,
        tgt_lang: &'a str,
    },
}

/// What an engine call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Text(String),
    Speech { samples: Vec<i16>, sample_rate: u32 },
}

/// Why an engine call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// The input is unusable (maps to `INVALID_AUDIO` in ASR).
    InvalidInput,
    /// A language or option the engine lacks (`MODEL_NOT_AVAILABLE`).
    Unsupported,
    /// The engine failed (`INFERENCE_BACKEND_ERROR`).
    Backend,
    /// The engine panicked and caught it (`INFERENCE_BACKEND_ERROR`).
    Panic,
}

/// An engine's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: EngineErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: EngineErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// An inference engine of one stage. Implementations serialise their own
/// calls if the engine needs it (plugins do: one call per instance at a time).
pub trait Engine: Send + Sync + fmt::Debug {
    fn process(&self, request: Request<'_>) -> Result<Response, EngineError>;

    /// [`Engine::process`] for a job that must end by `deadline`. An engine
    /// that can be stopped (one in a child process) gives up there; one in
    /// the node's process cannot and ignores it.
    fn process_until(&self, request: Request<'_>, deadline: Option<Instant>) -> Result<Response, EngineError> {
        let _ = deadline;
        self.process(request)
    }
}

/// Called with an out-of-process engine's model ids and each health notice.
pub type NoticeFn = Arc<dyn Fn(&[String], process::Notice) + Send + Sync>;

/// How engines in child processes are run.
#[derive(Clone, Default)]
pub struct Hosting {
    /// The engine host program (the `tolk-node` binary); `None`: every
    /// engine is loaded in process, whatever the configuration says.
    pub program: Option<PathBuf>,
    pub notify: Option<NoticeFn>,
}

impl fmt::Debug for Hosting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hosting").field("program", &self.program).finish_non_exhaustive()
    }
}

impl Hosting {
    /// This binary as the host (what the node itself uses).
    pub fn this_binary(notify: Option<NoticeFn>) -> Self {
        Self { program: std::env::current_exe().ok(), notify }
    }
}

/// A model the node offers and the engine that serves it.
#[derive(Debug, Clone)]
pub struct LoadedEngine {
    pub model: InstalledModel,
    pub engine: Arc<dyn Engine>,
    /// An `nmt` model served from the job's audio ([`Request::SpeechTranslation`]),
    /// not from the recognised text.
    pub speech_input: bool,
}

/// The engines of one configuration.
#[derive(Debug, Clone, Default)]
pub struct EngineSet {
    engines: Vec<LoadedEngine>,
}

/// An engine of the configuration that could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub model_id: String,
    pub message: String,
}

impl EngineSet {
    /// A set of ready engines (tests build fakes this way).
    pub fn new(engines: Vec<LoadedEngine>) -> Self {
        Self { engines }
    }

    /// Loads every `[[engine]]` of `config`, each in process or in child
    /// processes as configured (children run `hosting.program`). An engine
    /// that cannot start is left out and reported, never fatal: the node
    /// serves what it can.
    pub fn load(config: &Config, hosting: &Hosting) -> (Self, Vec<StartFailure>) {
        let mut engines = Vec::new();
        let mut failures = Vec::new();
        for e in &config.engines {
            let loaded = match (e.isolation.unwrap_or(config.engine_isolation), &hosting.program) {
                (Isolation::Process, Some(program)) => load_isolated(config, e, program, hosting.notify.clone()),
                (Isolation::Process, None) => {
                    tracing::warn!(model = %e.model_id, "no engine host program: the engine is loaded in process");
                    load_one(e)
                }
                (Isolation::InProcess, _) => load_one(e),
            };
            match loaded {
                Ok(loaded) => engines.extend(loaded),
                Err(message) => {
                    tracing::error!(model = %e.model_id, library = %e.library.display(), %message, "engine could not start");
                    failures.push(StartFailure { model_id: e.model_id.clone(), message });
                }
            }
        }
        (Self { engines }, failures)
    }

    /// The models to report (`installed_models`).
    pub fn models(&self) -> Vec<InstalledModel> {
        self.engines.iter().map(|e| e.model.clone()).collect()
    }

    /// The engine serving `kind` for these languages (see [`models::serves`]).
    pub fn find(&self, kind: &ModelKind, lang: &str, tgt: Option<&str>, dialect: Option<&str>) -> Option<&LoadedEngine> {
        self.engines.iter().find(|e| models::serves(&e.model, kind, lang, tgt, dialect))
    }
}

/// One engine of the configuration: one instance pool, one model per language of `src_langs`.
fn load_one(e: &EngineConfig) -> Result<Vec<LoadedEngine>, String> {
    let options = e.engine_options()?;
    let library = plugin::Library::open(&e.library).map_err(|err| err.to_string())?;
    let expected = match e.stage {
        StageName::Asr => plugin::Stage::Asr,
        StageName::Nmt => plugin::Stage::Nmt,
        StageName::Tts => plugin::Stage::Tts,
        StageName::SpeechTranslation => plugin::Stage::SpeechTranslation,
    };
    if !library.serves(expected) {
        return Err(format!("{} is a {:?} engine, configured as {:?}", display(&e.library), library.stage(), expected));
    }
    let version = e.version.clone().unwrap_or_else(|| library.version().to_owned());
    let instances = (0..e.instances)
        .map(|_| plugin::PluginEngine::create(library.clone(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())?;
    let engine: Arc<dyn Engine> = Arc::new(plugin::EnginePool::new(instances).ok_or("instances must be at least 1")?);
    let speech_input = e.stage == StageName::SpeechTranslation;
    Ok(e.models(&version).into_iter().map(|model| LoadedEngine { model, engine: engine.clone(), speech_input }).collect())
}

/// One engine of the configuration in supervised child processes (one per instance).
fn load_isolated(config: &Config, e: &EngineConfig, program: &Path, notify: Option<NoticeFn>) -> Result<Vec<LoadedEngine>, String> {
    let options = e.engine_options()?.encode();
    let expected = match e.stage {
        StageName::Asr => plugin::Stage::Asr,
        StageName::Nmt => plugin::Stage::Nmt,
        StageName::Tts => plugin::Stage::Tts,
        StageName::SpeechTranslation => plugin::Stage::SpeechTranslation,
    };
    let model_ids: Vec<String> = e.models("").into_iter().map(|m| m.model_id).collect();
    let notify = notify.map(|n| {
        let ids = model_ids.clone();
        Arc::new(move |notice| n(&ids, notice)) as process::Notify
    });
    let limit = e.memory_limit_mb.unwrap_or(config.engine_memory_limit_mb);
    let opts = process::ProcessOptions {
        host: program.to_owned(),
        library: e.library.clone(),
        options,
        memory_limit_mb: (limit > 0).then_some(limit),
        name: e.model_id.clone(),
        supervisor: supervisor::SupervisorConfig {
            instances: e.instances,
            backoff_min_ms: config.engine_restart_min_ms,
            backoff_max_ms: config.engine_restart_max_ms,
            ..supervisor::SupervisorConfig::default()
        },
        notify,
    };
    let (engine, ready) = process::ProcessEngine::start(opts).map_err(|err| err.message)?;
    if ready.stages & tolk_engine_sdk::abi::stage_bit(expected.code()) == 0 {
        let stage = plugin::Stage::from_code(ready.stage).map_or_else(|| format!("stage {}", ready.stage), |s| format!("{s:?}"));
        return Err(format!("{} is a {stage} engine, configured as {expected:?}", display(&e.library)));
    }
    tracing::info!(model = %e.model_id, instances = e.instances, memory_limit_mb = limit, "engine runs in child processes");
    let version = e.version.clone().unwrap_or(ready.version);
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let speech_input = e.stage == StageName::SpeechTranslation;
    Ok(e.models(&version).into_iter().map(|model| LoadedEngine { model, engine: engine.clone(), speech_input }).collect())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
