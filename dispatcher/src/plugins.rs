//! The Wasm plugin host: scheduling policies and feature detectors as
//! sandboxed WebAssembly components (wasmtime, WIT `tolk:plugin@0.2.0` in
//! `plugins/wit/`), loaded from a watched folder and swapped live.
//!
//! Versions: 0.2.0 and 0.1.0 (`plugins/wit-0.1.0/`) both load. Each
//! version has its own generated bindings; a decision is described once
//! (the core's `Candidate`) and lowered into whichever the plugin speaks,
//! as Zed's extension host maps old extension APIs onto the current one. A
//! 0.2.0 decision passes the candidates as one flat byte list (one copy
//! into the guest) built in a buffer reused across calls.
//!
//! Sandbox: a plugin imports nothing but our `host` interface (checked before
//! instantiation: no files, network, clock or environment); every call runs
//! under an epoch deadline (the time budget) and a memory cap; a trap, a
//! time-out, a bad answer or a pick outside the candidates falls back to the
//! built-in policy for that decision, is counted in `/metrics` with the
//! plugin's name and version, and logged. A trapped instance is discarded and
//! re-created. After three failures in a row a policy rests for ten seconds
//! (the built-in one decides), so a broken plugin cannot tax every decision.
//!
//! Loading happens off the hot path (a blocking task), keyed by a hash of the
//! file: a precompiled artifact is cached on disk, so a restart or a
//! re-added file loads in well under a millisecond. A file that fails to
//! load is refused with a log line; the previous plugin stays.

// `Component::deserialize_file` is unsafe: only artifacts this host compiled
// and wrote itself, into its own cache directory, are ever deserialized.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tolk_protocol::common::{Extra, Features};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use crate::core::policy::{Candidate, JobInfo, LeastLoaded, Policy};

/// The interface version this host speaks (and [`OLD_API_VERSION`]).
pub const API_VERSION: &str = "0.2.0";
/// The older version it still loads.
pub const OLD_API_VERSION: &str = "0.1.0";
const SCHEDULING_EXPORT: &str = "tolk:plugin/scheduling@0.2.0";
const DETECTION_EXPORT: &str = "tolk:plugin/detection@0.2.0";
const HOST_IMPORT: &str = "tolk:plugin/host@0.2.0";
const SCHEDULING_EXPORT_V01: &str = "tolk:plugin/scheduling@0.1.0";
const DETECTION_EXPORT_V01: &str = "tolk:plugin/detection@0.1.0";
const HOST_IMPORT_V01: &str = "tolk:plugin/host@0.1.0";
/// Bytes per candidate record in a 0.2.0 `pick` (see `plugins/wit/plugin.wit`).
const CANDIDATE_STRIDE: u32 = 32;
const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;
const LOG_QUOTA: u32 = 16;
const LOG_FLOOD: u32 = 1000;
const EPOCH_TICK: Duration = Duration::from_millis(1);
const BREAKER_FAILURES: u32 = 3;
const BREAKER_REST: Duration = Duration::from_secs(10);

mod scheduler_world {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "scheduler",
        imports: { default: trappable },
    });
}

mod detector_world {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "detector",
        imports: { default: trappable },
    });
}

mod scheduler_v01 {
    wasmtime::component::bindgen!({
        path: "../plugins/wit-0.1.0",
        world: "scheduler-v0-1",
        imports: { default: trappable },
    });
}

mod detector_v01 {
    wasmtime::component::bindgen!({
        path: "../plugins/wit-0.1.0",
        world: "detector-v0-1",
        imports: { default: trappable },
    });
}

use scheduler_v01::exports::tolk::plugin::scheduling as sched_v01;
use scheduler_world::exports::tolk::plugin::scheduling as sched;

/// Which interface version a plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Api {
    #[serde(rename = "0.1.0")]
    V01,
    #[serde(rename = "0.2.0")]
    V02,
}

/// Plugin settings (`[plugins]` in the dispatcher's config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The watched folder; plugins are off without it.
    pub dir: Option<PathBuf>,
    /// The scheduling policy in effect, by file stem (`round-robin` for
    /// `round-robin.wasm`); unset, the scheduler file modified last.
    pub scheduler: Option<String>,
    /// A second policy evaluated on every decision without effect (a file
    /// stem, or `builtin`): `/metrics` counts where it agrees with the one
    /// in effect, and `POST /admin/policy/promote` swaps the two.
    pub shadow: Option<String>,
    /// Where precompiled artifacts go (default: `DIR/.cache`).
    pub cache_dir: Option<PathBuf>,
    /// Time budget of one scheduling decision.
    pub schedule_budget_ms: u64,
    /// Time budget of one detection.
    pub detect_budget_ms: u64,
    /// Memory one plugin instance may grow to.
    pub memory_limit_mb: u64,
    /// How often the folder is scanned for changes.
    pub poll_ms: u64,
    /// Per-plugin configuration, by file stem, passed to its `init` as TOML.
    pub settings: BTreeMap<String, toml::Table>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            scheduler: None,
            shadow: None,
            cache_dir: None,
            schedule_budget_ms: 5,
            detect_budget_ms: 500,
            memory_limit_mb: 64,
            poll_ms: 500,
            settings: BTreeMap::new(),
        }
    }
}

/// What a plugin file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Scheduler,
    Detector,
}

/// A loaded plugin, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginView {
    pub file: String,
    pub kind: Kind,
    /// The interface version it speaks.
    pub api: Api,
    pub name: String,
    pub version: String,
    pub active: bool,
    /// Evaluated on every decision without effect.
    pub shadow: bool,
    pub calls: u64,
    pub failures: u64,
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
struct PluginMetrics {
    calls: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    loads: Family<Labels, Counter>,
    shadow: Family<Labels, Counter>,
}

struct StoreState {
    limits: StoreLimits,
    plugin: Arc<str>,
    log_lines: u32,
}

impl StoreState {
    fn log(&mut self, level: &str, message: &str) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > LOG_FLOOD {
            return Err(wasmtime::Error::msg("log flood: the plugin logged too much in one call"));
        }
        if self.log_lines <= LOG_QUOTA {
            let message: String = message.chars().take(512).collect();
            match level {
                "warn" | "error" => tracing::warn!(plugin = %self.plugin, "{message}"),
                "info" => tracing::info!(plugin = %self.plugin, "{message}"),
                _ => tracing::debug!(plugin = %self.plugin, "{message}"),
            }
        }
        Ok(())
    }
}

/// Both worlds import the same `host` interface, generated twice: one body.
macro_rules! impl_host {
    ($world:ident) => {
        impl $world::tolk::plugin::host::Host for StoreState {
            fn log(&mut self, level: $world::tolk::plugin::host::Level, message: String) -> wasmtime::Result<()> {
                use $world::tolk::plugin::host::Level as L;
                let level = match level {
                    L::Debug => "debug",
                    L::Info => "info",
                    L::Warn => "warn",
                    L::Error => "error",
                };
                StoreState::log(self, level, &message)
            }
        }
    };
}

impl_host!(scheduler_world);
impl_host!(detector_world);
impl_host!(scheduler_v01);
impl_host!(detector_v01);

/// A scheduler ready to instantiate, in the version it speaks.
enum SchedPre {
    V02(scheduler_world::SchedulerPre<StoreState>),
    V01(scheduler_v01::SchedulerV01Pre<StoreState>),
}

/// A live scheduler instance's bindings.
enum SchedBindings {
    V02(scheduler_world::Scheduler),
    V01(scheduler_v01::SchedulerV01),
}

impl SchedPre {
    fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<SchedBindings> {
        Ok(match self {
            Self::V02(p) => SchedBindings::V02(p.instantiate(store)?),
            Self::V01(p) => SchedBindings::V01(p.instantiate(store)?),
        })
    }

    fn api(&self) -> Api {
        match self {
            Self::V02(_) => Api::V02,
            Self::V01(_) => Api::V01,
        }
    }
}

impl SchedBindings {
    /// `info` and `init`: (name, version), or init's refusal.
    fn start(&self, store: &mut Store<StoreState>, config: &str) -> wasmtime::Result<Result<(String, String), String>> {
        match self {
            Self::V02(b) => {
                let api = b.tolk_plugin_scheduling();
                let info = api.call_info(&mut *store)?;
                Ok(api.call_init(store, config)?.map(|()| (info.name, info.version)))
            }
            Self::V01(b) => {
                let api = b.tolk_plugin_scheduling();
                let info = api.call_info(&mut *store)?;
                Ok(api.call_init(store, config)?.map(|()| (info.name, info.version)))
            }
        }
    }
}

/// A compiled, checked scheduler, ready to instantiate.
struct SchedulerPlugin {
    file: String,
    name: String,
    version: String,
    config: String,
    pre: SchedPre,
}

/// A detector ready to instantiate, in the version it speaks.
enum DetPre {
    V02(detector_world::DetectorPre<StoreState>),
    V01(detector_v01::DetectorV01Pre<StoreState>),
}

/// What a detector found, whatever its version.
struct Found {
    speech_rate: Option<f32>,
    emotion: Option<String>,
    voice_style: Option<String>,
}

/// One body for both versions' generated detector types.
macro_rules! detector_calls {
    ($world:ident, $pre:expr) => {{
        use $world::exports::tolk::plugin::detection as d;
        fn flags(f: Features) -> d::Features {
            let mut flags = d::Features::empty();
            if f.emotion_detection {
                flags |= d::Features::EMOTION;
            }
            if f.voice_style_detection {
                flags |= d::Features::VOICE_STYLE;
            }
            if f.speech_rate_detection {
                flags |= d::Features::SPEECH_RATE;
            }
            flags
        }
        fn features(p: d::Features) -> Features {
            Features {
                emotion_detection: p.contains(d::Features::EMOTION),
                voice_style_detection: p.contains(d::Features::VOICE_STYLE),
                speech_rate_detection: p.contains(d::Features::SPEECH_RATE),
            }
        }
        (
            // start: info, init, provides
            |store: &mut Store<StoreState>, config: &str| -> wasmtime::Result<Result<(String, String, Features), String>> {
                let inst = $pre.instantiate(&mut *store)?;
                let api = inst.tolk_plugin_detection();
                let info = api.call_info(&mut *store)?;
                if let Err(e) = api.call_init(&mut *store, config)? {
                    return Ok(Err(e));
                }
                Ok(Ok((info.name, info.version, features(api.call_provides(store)?))))
            },
            // detect: a fresh instance, init, detect
            |store: &mut Store<StoreState>,
             config: &str,
             samples: &[i16],
             rate: u32,
             want: Features|
             -> wasmtime::Result<Result<Found, String>> {
                let inst = $pre.instantiate(&mut *store)?;
                let api = inst.tolk_plugin_detection();
                api.call_init(&mut *store, config)?.map_err(wasmtime::Error::msg)?;
                Ok(api.call_detect(store, samples, rate, flags(want))?.map(|f| Found {
                    speech_rate: f.speech_rate,
                    emotion: f.emotion,
                    voice_style: f.voice_style,
                }))
            },
        )
    }};
}

impl DetPre {
    fn start(&self, store: &mut Store<StoreState>, config: &str) -> wasmtime::Result<Result<(String, String, Features), String>> {
        match self {
            Self::V02(p) => (detector_calls!(detector_world, p).0)(store, config),
            Self::V01(p) => (detector_calls!(detector_v01, p).0)(store, config),
        }
    }

    fn detect(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
        samples: &[i16],
        rate: u32,
        want: Features,
    ) -> wasmtime::Result<Result<Found, String>> {
        match self {
            Self::V02(p) => (detector_calls!(detector_world, p).1)(store, config, samples, rate, want),
            Self::V01(p) => (detector_calls!(detector_v01, p).1)(store, config, samples, rate, want),
        }
    }

    fn api(&self) -> Api {
        match self {
            Self::V02(_) => Api::V02,
            Self::V01(_) => Api::V01,
        }
    }
}

/// A compiled, checked detector.
struct DetectorPlugin {
    file: String,
    name: String,
    version: String,
    config: String,
    provides: Features,
    pre: DetPre,
}

#[derive(Default)]
struct Loaded {
    schedulers: BTreeMap<String, (Arc<SchedulerPlugin>, SystemTime)>,
    detectors: BTreeMap<String, Arc<DetectorPlugin>>,
    /// (size, mtime) of each file as last seen, to notice changes.
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    /// The scheduler in effect, and a generation that changes when it does.
    active: Option<Arc<SchedulerPlugin>>,
    /// The shadow scheduler, when it is a loaded file.
    shadow: Option<Arc<SchedulerPlugin>>,
}

/// Which policies are in effect and in the shadow (promotion changes it).
#[derive(Debug, Clone, Default)]
struct Selection {
    scheduler: Option<String>,
    shadow: Option<String>,
}

/// The shadow's name meaning the built-in policy.
pub const BUILTIN: &str = "builtin";

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    sched_linker: Linker<StoreState>,
    det_linker: Linker<StoreState>,
    config: PluginsConfig,
    loaded: Mutex<Loaded>,
    selection: Mutex<Selection>,
    generation: AtomicU64,
    metrics: PluginMetrics,
    stats: Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("dir", &self.inner.config.dir).finish_non_exhaustive()
    }
}

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("{path}: not a valid component: {message}")]
    Invalid { path: String, message: String },
}

fn hash_bytes(engine: &Engine, bytes: &[u8]) -> String {
    // Two independently keyed SipHashes: 128 bits of content identity, plus
    // the engine's settings (artifacts are engine-specific).
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0xA5u8.hash(&mut b);
    for h in [&mut a, &mut b] {
        bytes.hash(h);
        engine.precompile_compatibility_hash().hash(h);
    }
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

impl PluginHost {
    /// A host for `config`; `None` when no plugin folder is configured.
    pub fn new(config: PluginsConfig, registry: &mut Registry) -> Result<Option<Self>, PluginError> {
        if config.dir.is_none() {
            return Ok(None);
        }
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true);
        wasm.max_wasm_stack(512 * 1024);
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Refused(format!("wasm engine: {e}")))?;
        let mut sched_linker = Linker::new(&engine);
        scheduler_world::Scheduler::add_to_linker::<_, wasmtime::component::HasSelf<StoreState>>(&mut sched_linker, |s| s)
            .map_err(|e| PluginError::Refused(format!("linker: {e}")))?;
        scheduler_v01::SchedulerV01::add_to_linker::<_, wasmtime::component::HasSelf<StoreState>>(&mut sched_linker, |s| s)
            .map_err(|e| PluginError::Refused(format!("linker: {e}")))?;
        let mut det_linker = Linker::new(&engine);
        detector_world::Detector::add_to_linker::<_, wasmtime::component::HasSelf<StoreState>>(&mut det_linker, |s| s)
            .map_err(|e| PluginError::Refused(format!("linker: {e}")))?;
        detector_v01::DetectorV01::add_to_linker::<_, wasmtime::component::HasSelf<StoreState>>(&mut det_linker, |s| s)
            .map_err(|e| PluginError::Refused(format!("linker: {e}")))?;
        // The time budget is counted in epochs; one thread ticks them for
        // every plugin. It holds only a weak reference: it ends with the host.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("tolk-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Refused(format!("epoch thread: {e}")))?;
        let metrics = PluginMetrics::default();
        let selection = Selection { scheduler: config.scheduler.clone(), shadow: config.shadow.clone() };
        let r = registry.sub_registry_with_prefix("tolk_plugin");
        r.register("calls", "Plugin calls by plugin and version", metrics.calls.clone());
        r.register(
            "failures",
            "Plugin calls that failed (trap, time-out, bad answer) by plugin, version and reason",
            metrics.failures.clone(),
        );
        r.register("loads", "Plugin files loaded or refused, by file and outcome", metrics.loads.clone());
        r.register(
            "shadow_decisions",
            "Decisions of the shadow policy against the one in effect: agree, disagree, failed",
            metrics.shadow.clone(),
        );
        Ok(Some(Self {
            inner: Arc::new(Inner {
                engine,
                sched_linker,
                det_linker,
                config,
                selection: Mutex::new(selection),
                loaded: Mutex::new(Loaded::default()),
                generation: AtomicU64::new(0),
                metrics,
                stats: Mutex::new(HashMap::new()),
            }),
        }))
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, plugin: &str, budget_ms: u64) -> Store<StoreState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.inner.config.memory_limit_mb as usize).saturating_mul(1024 * 1024))
            .instances(4)
            .tables(8)
            .memories(2)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.inner.engine, StoreState { limits, plugin: plugin.into(), log_lines: 0 });
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(budget_ms.max(1));
        store
    }

    fn count(&self, plugin: &str, version: &str, failure: Option<&str>) {
        let labels = vec![("plugin".to_owned(), plugin.to_owned()), ("version".to_owned(), version.to_owned())];
        self.inner.metrics.calls.get_or_create(&labels).inc();
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let entry = stats.entry(plugin.to_owned()).or_default();
        entry.0 += 1;
        if let Some(reason) = failure {
            let mut labels = labels;
            labels.push(("reason".to_owned(), reason.to_owned()));
            self.inner.metrics.failures.get_or_create(&labels).inc();
            entry.1 += 1;
        }
    }

    fn cache_dir(&self) -> Option<PathBuf> {
        let c = &self.inner.config;
        c.cache_dir.clone().or_else(|| c.dir.as_ref().map(|d| d.join(".cache")))
    }

    /// Compiles `bytes` (or loads the cached artifact for them).
    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
        let engine = &self.inner.engine;
        let key = hash_bytes(engine, bytes);
        let cached = self.cache_dir().map(|d| d.join(format!("{key}.cwasm")));
        if let Some(cached) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: files in our cache directory are written only by this
            // function, from `Component::serialize` of a component compiled
            // by an engine with the same settings (the key includes them);
            // wasmtime also checks the artifact's engine compatibility.
            if let Ok(c) = unsafe { Component::deserialize_file(engine, cached) } {
                return Ok(c);
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| PluginError::Invalid { path: path.display().to_string(), message: format!("{e:#}") })?;
        if let (Some(cached), Ok(artifact)) = (cached, component.serialize()) {
            if let Some(dir) = cached.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = cached.with_extension("cwasm.tmp");
            if std::fs::write(&tmp, artifact).is_ok() {
                let _ = std::fs::rename(&tmp, &cached);
            }
        }
        Ok(component)
    }

    /// Reads the component's declared interface and refuses what it must not
    /// load, before anything is instantiated.
    fn check_interface(&self, path: &Path, component: &Component) -> Result<(Kind, Api), PluginError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let name = path.display();
        for (import, _) in ty.imports(engine) {
            if import != HOST_IMPORT && import != HOST_IMPORT_V01 {
                return Err(PluginError::Refused(format!(
                    "{name}: imports {import}; plugins may import only {HOST_IMPORT} (no WASI: no files, network, clock or environment)"
                )));
            }
        }
        let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
        for (export, kind, api) in [
            (SCHEDULING_EXPORT, Kind::Scheduler, Api::V02),
            (DETECTION_EXPORT, Kind::Detector, Api::V02),
            (SCHEDULING_EXPORT_V01, Kind::Scheduler, Api::V01),
            (DETECTION_EXPORT_V01, Kind::Detector, Api::V01),
        ] {
            if exports.contains(&export) {
                return Ok((kind, api));
            }
        }
        let other = exports.iter().find(|e| e.starts_with("tolk:plugin/"));
        Err(PluginError::Refused(match other {
            Some(e) => format!(
                "{name}: plugin speaks {e}, this dispatcher speaks tolk:plugin@{API_VERSION} and @{OLD_API_VERSION}; rebuild it against plugins/wit of this version"
            ),
            None => format!("{name}: exports neither {SCHEDULING_EXPORT} nor {DETECTION_EXPORT}"),
        }))
    }

    fn settings_for(&self, stem: &str) -> String {
        self.inner.config.settings.get(stem).map(|t| t.to_string()).unwrap_or_default()
    }

    /// Loads one file: read, compile (or cached), check, instantiate once
    /// and initialise as a smoke test. Does not swap anything in.
    fn load_file(&self, path: &Path) -> Result<LoadedFile, PluginError> {
        let read_err = |message: String| PluginError::Read { path: path.display().to_string(), message };
        let len = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?.len();
        if len > MAX_PLUGIN_BYTES {
            return Err(read_err(format!("{len} bytes is larger than the {MAX_PLUGIN_BYTES}-byte limit")));
        }
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        let component = self.compile(path, &bytes)?;
        let (kind, api) = self.check_interface(path, &component)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned();
        let config = self.settings_for(&stem);
        let budget = self.inner.config.detect_budget_ms.max(self.inner.config.schedule_budget_ms) * 20;
        let invalid = |e: wasmtime::Error| PluginError::Invalid { path: path.display().to_string(), message: format!("{e:#}") };
        match kind {
            Kind::Scheduler => {
                let pre = self.inner.sched_linker.instantiate_pre(&component).map_err(invalid)?;
                let pre = match api {
                    Api::V02 => SchedPre::V02(scheduler_world::SchedulerPre::new(pre).map_err(invalid)?),
                    Api::V01 => SchedPre::V01(scheduler_v01::SchedulerV01Pre::new(pre).map_err(invalid)?),
                };
                let mut store = self.store(&stem, budget);
                let instance = pre.instantiate(&mut store).map_err(invalid)?;
                let (name, version) = instance
                    .start(&mut store, &config)
                    .map_err(invalid)?
                    .map_err(|e| PluginError::Refused(format!("{}: init refused its configuration: {e}", path.display())))?;
                Ok(LoadedFile::Scheduler(Arc::new(SchedulerPlugin { file: stem, name, version, config, pre })))
            }
            Kind::Detector => {
                let pre = self.inner.det_linker.instantiate_pre(&component).map_err(invalid)?;
                let pre = match api {
                    Api::V02 => DetPre::V02(detector_world::DetectorPre::new(pre).map_err(invalid)?),
                    Api::V01 => DetPre::V01(detector_v01::DetectorV01Pre::new(pre).map_err(invalid)?),
                };
                let mut store = self.store(&stem, budget);
                let (name, version, provides) = pre
                    .start(&mut store, &config)
                    .map_err(invalid)?
                    .map_err(|e| PluginError::Refused(format!("{}: init refused its configuration: {e}", path.display())))?;
                Ok(LoadedFile::Detector(Arc::new(DetectorPlugin { file: stem, name, version, config, provides, pre })))
            }
        }
    }

    /// Scans the folder once: loads new and changed files, forgets removed
    /// ones, and updates the scheduler in effect. Returns what changed.
    pub fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let Some(dir) = self.inner.config.dir.clone() else { return report };
        let mut present: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "wasm")
                    && path.is_file()
                    && let Ok(meta) = entry.metadata()
                {
                    present.insert(path, (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        let changed: Vec<PathBuf> = {
            let loaded = self.loaded();
            present.iter().filter(|(p, sig)| loaded.seen.get(*p) != Some(sig)).map(|(p, _)| p.clone()).collect()
        };
        for path in changed {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned();
            let started = Instant::now();
            let result = self.load_file(&path);
            let outcome_labels = |outcome: &str| vec![("file".to_owned(), stem.clone()), ("outcome".to_owned(), outcome.to_owned())];
            let mut loaded = self.loaded();
            if let Some(sig) = present.get(&path) {
                loaded.seen.insert(path.clone(), *sig);
            }
            match result {
                Ok(LoadedFile::Scheduler(p)) => {
                    tracing::info!(file = %stem, plugin = %p.name, version = %p.version, ms = started.elapsed().as_millis() as u64, "scheduler plugin loaded");
                    loaded.detectors.remove(&stem);
                    let modified = present.get(&path).map_or(SystemTime::UNIX_EPOCH, |sig| sig.1);
                    loaded.schedulers.insert(stem.clone(), (p, modified));
                    self.inner.metrics.loads.get_or_create(&outcome_labels("loaded")).inc();
                    report.loaded.push(stem);
                }
                Ok(LoadedFile::Detector(p)) => {
                    tracing::info!(file = %stem, plugin = %p.name, version = %p.version, ms = started.elapsed().as_millis() as u64, "detector plugin loaded");
                    loaded.schedulers.remove(&stem);
                    loaded.detectors.insert(stem.clone(), p);
                    self.inner.metrics.loads.get_or_create(&outcome_labels("loaded")).inc();
                    report.loaded.push(stem);
                }
                Err(e) => {
                    // The previous version of this file (if any) stays in effect.
                    tracing::warn!(file = %stem, "plugin refused: {e}");
                    self.inner.metrics.loads.get_or_create(&outcome_labels("refused")).inc();
                    report.refused.push((stem, e.to_string()));
                }
            }
        }
        let mut loaded = self.loaded();
        let gone: Vec<PathBuf> = loaded.seen.keys().filter(|p| !present.contains_key(*p)).cloned().collect();
        for path in gone {
            loaded.seen.remove(&path);
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                loaded.schedulers.remove(stem);
                loaded.detectors.remove(stem);
                report.removed.push(stem.to_owned());
            }
        }
        // The scheduler in effect: the configured one, else the newest.
        let selection = self.inner.selection.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let shadow = selection.shadow.as_ref().and_then(|name| loaded.schedulers.get(name)).map(|(p, _)| p.clone());
        let shadow_same = match (&shadow, &loaded.shadow) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !shadow_same {
            loaded.shadow = shadow;
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        let active = match &selection.scheduler {
            Some(name) => loaded.schedulers.get(name).map(|(p, _)| p.clone()),
            // Newest file wins; equal times are broken by name, so the choice is stable.
            None => loaded.schedulers.iter().max_by_key(|(name, (_, at))| (*at, *name)).map(|(_, (p, _))| p.clone()),
        };
        let same = match (&active, &loaded.active) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            loaded.active = active;
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
            report.scheduler_changed = true;
        }
        report
    }

    /// The features the loaded detectors supply.
    pub fn supplied_features(&self) -> Features {
        let loaded = self.loaded();
        loaded.detectors.values().fold(Features::default(), |mut f, d| {
            f.emotion_detection |= d.provides.emotion_detection;
            f.voice_style_detection |= d.provides.voice_style_detection;
            f.speech_rate_detection |= d.provides.speech_rate_detection;
            f
        })
    }

    /// Every loaded plugin, for the admin API.
    pub fn list(&self) -> Vec<PluginView> {
        let loaded = self.loaded();
        let stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
        let mut out: Vec<PluginView> = loaded
            .schedulers
            .values()
            .map(|(p, _)| PluginView {
                file: p.file.clone(),
                kind: Kind::Scheduler,
                api: p.pre.api(),
                name: p.name.clone(),
                version: p.version.clone(),
                active: loaded.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, p)),
                shadow: loaded.shadow.as_ref().is_some_and(|a| Arc::ptr_eq(a, p)),
                calls: stat(&p.name).0,
                failures: stat(&p.name).1,
            })
            .collect();
        out.extend(loaded.detectors.values().map(|p| PluginView {
            file: p.file.clone(),
            kind: Kind::Detector,
            api: p.pre.api(),
            name: p.name.clone(),
            version: p.version.clone(),
            active: true,
            shadow: false,
            calls: stat(&p.name).0,
            failures: stat(&p.name).1,
        }));
        out
    }

    /// A policy for the core that asks the scheduler plugin in effect.
    pub fn policy(&self) -> WasmPolicy {
        WasmPolicy { host: self.clone(), instance: None, shadow: None, failures_in_row: 0, resting_until: None, flat: Vec::new() }
    }

    /// The shadow policy's name, if one is configured.
    pub fn shadow_name(&self) -> Option<String> {
        self.inner.selection.lock().unwrap_or_else(|e| e.into_inner()).shadow.clone()
    }

    /// Promotes the shadow policy: it takes effect, and the policy it
    /// replaces (by name; `builtin` when none was chosen) becomes the
    /// shadow. Returns (in effect, shadow) after the swap.
    pub fn promote(&self) -> Result<(String, String), String> {
        let (new_active, new_shadow) = {
            let loaded = self.loaded();
            let mut sel = self.inner.selection.lock().unwrap_or_else(|e| e.into_inner());
            let shadow = sel.shadow.clone().ok_or("no shadow policy is configured ([plugins] shadow)")?;
            if shadow != BUILTIN && !loaded.schedulers.contains_key(&shadow) {
                return Err(format!("the shadow policy {shadow} is not loaded"));
            }
            let current = match &loaded.active {
                Some(p) => p.file.clone(),
                None => BUILTIN.to_owned(),
            };
            sel.scheduler = (shadow != BUILTIN).then(|| shadow.clone());
            // With no scheduler named and the builtin promoted, "newest file"
            // would pick a plugin again: name a file that cannot exist.
            if shadow == BUILTIN {
                sel.scheduler = Some(format!("{BUILTIN}/"));
            }
            sel.shadow = Some(current.clone());
            (shadow, current)
        };
        self.scan();
        tracing::info!(policy = %new_active, shadow = %new_shadow, "shadow policy promoted");
        Ok((new_active, new_shadow))
    }

    /// Runs every detector that supplies part of `wanted` on the audio and
    /// merges their findings. Failures are logged and counted; they leave
    /// fields empty and never fail the caller.
    pub fn detect(&self, audio: &str, format: tolk_protocol::AudioFormat, sample_rate: u32, wanted: Features) -> Extra {
        let mut extra = Extra::default();
        let pcm = match tolk_protocol::audio::decode_base64(audio, format, sample_rate) {
            Ok(pcm) => pcm,
            Err(e) => {
                tracing::debug!("detection skipped: {e}");
                return extra;
            }
        };
        let detectors: Vec<Arc<DetectorPlugin>> = self.loaded().detectors.values().cloned().collect();
        for d in detectors {
            let ask = wanted;
            let want = Features {
                emotion_detection: ask.emotion_detection && d.provides.emotion_detection && extra.emotion.is_none(),
                voice_style_detection: ask.voice_style_detection && d.provides.voice_style_detection && extra.voice_style.is_none(),
                speech_rate_detection: ask.speech_rate_detection && d.provides.speech_rate_detection && extra.speech_rate.is_none(),
            };
            if want.is_empty() {
                continue;
            }
            // A fresh instance per call (~0.3 ms): nothing leaks between utterances.
            let mut store = self.store(&d.file, self.inner.config.detect_budget_ms);
            let outcome = d.pre.detect(&mut store, &d.config, &pcm.samples, pcm.sample_rate, want);
            match outcome {
                Ok(Ok(found)) => {
                    self.count(&d.name, &d.version, None);
                    if want.speech_rate_detection {
                        extra.speech_rate =
                            found.speech_rate.filter(|r| r.is_finite() && *r >= 0.0).map(|r| f64::from((r * 100.0).round() / 100.0));
                    }
                    if want.emotion_detection {
                        extra.emotion = found.emotion.map(|e| e.chars().take(64).collect());
                    }
                    if want.voice_style_detection {
                        extra.voice_style = found.voice_style.map(|v| v.chars().take(64).collect());
                    }
                }
                Ok(Err(message)) => {
                    self.count(&d.name, &d.version, Some("error"));
                    tracing::debug!(plugin = %d.name, "detector declined: {message}");
                }
                Err(e) => {
                    self.count(&d.name, &d.version, Some(failure_reason(&e)));
                    tracing::warn!(plugin = %d.name, "detector failed: {e:#}");
                }
            }
        }
        extra
    }
}

/// What one scan did.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub refused: Vec<(String, String)>,
    pub removed: Vec<String>,
    pub scheduler_changed: bool,
}

enum LoadedFile {
    Scheduler(Arc<SchedulerPlugin>),
    Detector(Arc<DetectorPlugin>),
}

fn failure_reason(e: &wasmtime::Error) -> &'static str {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "timeout",
        Some(_) => "trap",
        None if format!("{e:#}").contains("log flood") => "log_flood",
        None => "trap",
    }
}

/// The core's [`Policy`] backed by the scheduler plugin in effect.
///
/// It keeps one instance (a call costs ~2 µs; instantiating ~40 µs) and
/// re-creates it after a swap or a failure.
pub struct WasmPolicy {
    host: PluginHost,
    instance: Option<LiveScheduler>,
    shadow: Option<LiveScheduler>,
    failures_in_row: u32,
    resting_until: Option<Instant>,
    /// The 0.2.0 candidate records, rebuilt in place for every decision.
    flat: Vec<u8>,
}

struct LiveScheduler {
    generation: u64,
    plugin: Arc<SchedulerPlugin>,
    store: Store<StoreState>,
    bindings: SchedBindings,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy").finish_non_exhaustive()
    }
}

impl WasmPolicy {
    fn live(&mut self) -> Option<&mut LiveScheduler> {
        let generation = self.host.inner.generation.load(Ordering::SeqCst);
        if self.instance.as_ref().is_some_and(|i| i.generation != generation) {
            self.instance = None;
        }
        if self.instance.is_none() {
            let plugin = self.host.loaded().active.clone()?;
            let mut store = self.host.store(&plugin.file, self.host.inner.config.schedule_budget_ms * 20);
            let bindings = match plugin.pre.instantiate(&mut store) {
                Ok(b) => b,
                Err(e) => {
                    self.host.count(&plugin.name, &plugin.version, Some(failure_reason(&e)));
                    return None;
                }
            };
            if !matches!(bindings.start(&mut store, &plugin.config), Ok(Ok(_))) {
                self.host.count(&plugin.name, &plugin.version, Some("init"));
                return None;
            }
            self.instance = Some(LiveScheduler { generation, plugin, store, bindings });
        }
        self.instance.as_mut()
    }

    /// The shadow instance, (re)created as `live` does.
    fn shadow_live(&mut self) -> Option<&mut LiveScheduler> {
        let generation = self.host.inner.generation.load(Ordering::SeqCst);
        if self.shadow.as_ref().is_some_and(|i| i.generation != generation) {
            self.shadow = None;
        }
        if self.shadow.is_none() {
            let plugin = self.host.loaded().shadow.clone()?;
            let mut store = self.host.store(&plugin.file, self.host.inner.config.schedule_budget_ms * 20);
            let bindings = plugin.pre.instantiate(&mut store).ok()?;
            if !matches!(bindings.start(&mut store, &plugin.config), Ok(Ok(_))) {
                return None;
            }
            self.shadow = Some(LiveScheduler { generation, plugin, store, bindings });
        }
        self.shadow.as_mut()
    }

    /// Asks the shadow policy too and counts whether it agrees with what
    /// was decided (`decision`, or the built-in fallback when `None`). It
    /// never changes the decision.
    fn shadow_decide(&mut self, job: &JobInfo<'_>, candidates: &[Candidate<'_>], decision: Option<usize>) {
        let Some(name) = self.host.shadow_name() else { return };
        let effective = decision.or_else(|| LeastLoaded::choose(candidates));
        let theirs = if name == BUILTIN {
            Some(LeastLoaded::choose(candidates))
        } else {
            let budget = self.host.inner.config.schedule_budget_ms;
            let mut flat = std::mem::take(&mut self.flat);
            let answer = match self.shadow_live() {
                Some(live) => {
                    live.store.data_mut().log_lines = 0;
                    live.store.set_epoch_deadline(budget.max(1));
                    match call_pick(live, &mut flat, job, candidates) {
                        Ok(i) => Some(i.map(|i| i as usize).filter(|&i| i < candidates.len())),
                        Err(_) => {
                            self.shadow = None;
                            None
                        }
                    }
                }
                None => None,
            };
            self.flat = flat;
            answer.map(|a| a.or_else(|| LeastLoaded::choose(candidates)))
        };
        let outcome = match theirs {
            Some(t) if t == effective => "agree",
            Some(_) => "disagree",
            None => "failed",
        };
        let labels = vec![("shadow".to_owned(), name), ("outcome".to_owned(), outcome.to_owned())];
        self.host.inner.metrics.shadow.get_or_create(&labels).inc();
    }

    /// True when the plugin is resting after repeated failures.
    fn resting(&mut self) -> bool {
        match self.resting_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.resting_until = None;
                self.failures_in_row = 0;
                false
            }
            None => false,
        }
    }
}

/// One `pick` call on a live instance, in the version it speaks: a 0.2.0
/// plugin gets the flat records (built in `flat`, reused), a 0.1.0 one the
/// 0.1.0 records.
fn call_pick(
    live: &mut LiveScheduler,
    flat: &mut Vec<u8>,
    job: &JobInfo<'_>,
    candidates: &[Candidate<'_>],
) -> wasmtime::Result<Option<u32>> {
    let session_key = session_key(job.session_id);
    match &live.bindings {
        SchedBindings::V02(b) => {
            // One flat record per candidate (layout in plugins/wit/plugin.wit),
            // into a buffer kept across calls: lowering it is one copy.
            flat.clear();
            for c in candidates {
                let flags = u32::from(c.is_last_node) | (u32::from(c.verified) << 1);
                for word in [
                    c.node_key,
                    c.running,
                    c.capacity,
                    (c.cpu_percent as f32).to_bits(),
                    c.ms_per_audio_s.map_or(-1.0f32, |v| v as f32).to_bits(),
                    c.recent_failures,
                    (c.trust_score as f32).to_bits(),
                    flags,
                ] {
                    flat.extend_from_slice(&word.to_le_bytes());
                }
            }
            let wasm_job = sched::Job {
                session_key,
                utterance_index: job.utterance_index,
                audio_ms: job.audio_ms,
                attempt: job.attempt,
                paired: job.paired,
            };
            b.tolk_plugin_scheduling().call_pick(&mut live.store, wasm_job, flat, CANDIDATE_STRIDE)
        }
        SchedBindings::V01(b) => {
            // The 0.1.0 view of the same decision: records, without trust.
            let records: Vec<sched_v01::Candidate> = candidates
                .iter()
                .map(|c| sched_v01::Candidate {
                    node_key: c.node_key,
                    running: c.running,
                    capacity: c.capacity,
                    cpu_percent: c.cpu_percent as f32,
                    is_last_node: c.is_last_node,
                    ms_per_audio_s: c.ms_per_audio_s.map_or(-1.0, |v| v as f32),
                    recent_failures: c.recent_failures,
                })
                .collect();
            let wasm_job =
                sched_v01::Job { session_key, utterance_index: job.utterance_index, audio_ms: job.audio_ms, attempt: job.attempt };
            b.tolk_plugin_scheduling().call_pick(&mut live.store, wasm_job, &records)
        }
    }
}

fn session_key(session_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session_id.hash(&mut h);
    h.finish()
}

impl Policy for WasmPolicy {
    fn name(&self) -> &str {
        "wasm"
    }

    fn pick(&mut self, job: &JobInfo<'_>, candidates: &[Candidate<'_>]) -> Option<usize> {
        let decision = self.pick_primary(job, candidates);
        self.shadow_decide(job, candidates, decision);
        decision
    }
}

impl WasmPolicy {
    fn pick_primary(&mut self, job: &JobInfo<'_>, candidates: &[Candidate<'_>]) -> Option<usize> {
        if self.resting() {
            return None;
        }
        let budget = self.host.inner.config.schedule_budget_ms;
        let host = self.host.clone();
        // Out of `self` while `live` borrows it; put back below.
        let mut flat = std::mem::take(&mut self.flat);
        let Some(live) = self.live() else {
            // No scheduler plugin in effect: the built-in policy decides (not a failure).
            self.flat = flat;
            return if host.loaded().active.is_none() { LeastLoaded::choose(candidates) } else { None };
        };
        live.store.data_mut().log_lines = 0;
        live.store.set_epoch_deadline(budget.max(1));
        let (name, version) = (live.plugin.name.clone(), live.plugin.version.clone());
        let result = call_pick(live, &mut flat, job, candidates);
        self.flat = flat;
        let failure = match result {
            Ok(Some(i)) if (i as usize) < candidates.len() => {
                host.count(&name, &version, None);
                self.failures_in_row = 0;
                return Some(i as usize);
            }
            Ok(None) => {
                host.count(&name, &version, None);
                return None;
            }
            Ok(Some(_)) => "invalid_answer",
            Err(e) => {
                // A trapped instance is poisoned: drop it, re-create on the next call.
                self.instance = None;
                tracing::warn!(plugin = %name, "scheduler plugin failed, built-in policy used: {e:#}");
                failure_reason(&e)
            }
        };
        host.count(&name, &version, Some(failure));
        self.failures_in_row += 1;
        if self.failures_in_row >= BREAKER_FAILURES {
            tracing::warn!(plugin = %name, "scheduler plugin failed {BREAKER_FAILURES} times in a row: resting it for {BREAKER_REST:?}");
            self.resting_until = Some(Instant::now() + BREAKER_REST);
        }
        None
    }
}
