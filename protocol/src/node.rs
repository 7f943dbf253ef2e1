//! The node protocol: node ↔ dispatcher, on `/ws/node`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Base64Audio;
use crate::ProtocolError;
use crate::common::{AudioFormat, ErrorMessage, Extra, Features, JobErrorCode, ModelKind};
use crate::validate::{self as v, Validate};

/// The operating system a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodePlatform {
    Windows,
    Linux,
    Macos,
}

/// A GPU a node reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Gpu {
    pub name: String,
    pub memory_gb: f64,
}

/// What a node's machine has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hardware {
    pub cpu_cores: u32,
    pub memory_gb: f64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// A model installed on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstalledModel {
    pub model_id: String,
    pub kind: ModelKind,
    /// For `nmt` the source language; for `asr` and `tts` the one language handled.
    #[serde(default)]
    pub src_lang: Option<String>,
    /// For `nmt` the target language; null for `asr` and `tts`.
    #[serde(default)]
    pub tgt_lang: Option<String>,
    /// Narrows `src_lang`, e.g. `zh-sichuan`.
    #[serde(default)]
    pub dialect: Option<String>,
    #[serde(default)]
    pub version: String,
    /// Heartbeats only: whether the model may be used (absent means enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Node → server: first registration, or re-registration after a reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRegister {
    /// Null or empty on first contact: the server assigns one.
    #[serde(default)]
    pub node_id: Option<String>,
    pub version: String,
    pub platform: NodePlatform,
    pub hardware: Hardware,
    #[serde(default)]
    pub installed_models: Vec<InstalledModel>,
    #[serde(default)]
    pub features_supported: Features,
    #[serde(default)]
    pub accept_public_jobs: bool,
    /// Extension 4: the secret from `node_register_ack`, required with an existing `node_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
    /// Extension 4: the operator's registration secret, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Extension: the most jobs this node runs at once (the dispatcher never
    /// sends more; its own per-node cap still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
}

impl NodeRegister {
    /// The node id claimed, treating an empty string as none (first contact).
    pub fn claimed_node_id(&self) -> Option<&str> {
        self.node_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// Server → node: registration accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRegisterAck {
    pub node_id: String,
    #[serde(default)]
    pub message: String,
    /// Extension 4: keep this secret; re-registering as `node_id` requires it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
}

/// Current load of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceUsage {
    pub cpu_percent: f64,
    #[serde(default)]
    pub gpu_percent: Option<f64>,
    #[serde(default)]
    pub gpu_mem_percent: Option<f64>,
    pub mem_percent: f64,
    pub running_jobs: u32,
}

/// Node → server: liveness and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeHeartbeat {
    pub node_id: String,
    pub timestamp: u64,
    pub resource_usage: ResourceUsage,
    /// Updates to the node's models, matched by `model_id` (extension 7): an
    /// entry may carry only the fields that changed (`{"model_id":…,"enabled":false}`
    /// disables that model); a new `model_id` with every field adds a model;
    /// models not named are unchanged; absent, nothing changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_models: Option<Vec<ModelUpdate>>,
}

/// One entry of a heartbeat's `installed_models`: the fields that changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelUpdate {
    pub model_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// Absent: unchanged; `null`: none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present_or_null")]
    #[schemars(with = "Option<String>")]
    pub src_lang: Option<Option<String>>,
    /// Absent: unchanged; `null`: none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present_or_null")]
    #[schemars(with = "Option<String>")]
    pub tgt_lang: Option<Option<String>>,
    /// Absent: unchanged; `null`: none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present_or_null")]
    #[schemars(with = "Option<String>")]
    pub dialect: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl From<InstalledModel> for ModelUpdate {
    fn from(m: InstalledModel) -> Self {
        Self {
            model_id: m.model_id,
            kind: Some(m.kind),
            src_lang: Some(m.src_lang),
            tgt_lang: Some(m.tgt_lang),
            dialect: Some(m.dialect),
            version: Some(m.version),
            enabled: m.enabled,
        }
    }
}

impl ModelUpdate {
    /// Only `enabled: false`: the model is switched off.
    pub fn disable(model_id: impl Into<String>) -> Self {
        Self { model_id: model_id.into(), kind: None, src_lang: None, tgt_lang: None, dialect: None, version: None, enabled: Some(false) }
    }

    /// Applies this update to `models`. An entry naming its `kind` describes
    /// the model whole (as in a registration: absent fields are empty, absent
    /// `enabled` means enabled) and replaces or adds it; an entry without
    /// `kind` changes only the fields it carries of the model it names.
    /// Returns false when it named an unknown model without a `kind`.
    pub fn apply(&self, models: &mut Vec<InstalledModel>) -> bool {
        // Every entry of that id (model ids should be unique; a list that
        // repeats one is still updated consistently).
        let mut found = false;
        if let Some(kind) = self.kind.clone() {
            let whole = InstalledModel {
                model_id: self.model_id.clone(),
                kind,
                src_lang: self.src_lang.clone().flatten(),
                tgt_lang: self.tgt_lang.clone().flatten(),
                dialect: self.dialect.clone().flatten(),
                version: self.version.clone().unwrap_or_default(),
                enabled: self.enabled,
            };
            for m in models.iter_mut().filter(|m| m.model_id == self.model_id) {
                *m = whole.clone();
                found = true;
            }
            if !found {
                models.push(whole);
            }
            return true;
        }
        for m in models.iter_mut().filter(|m| m.model_id == self.model_id) {
            found = true;
            if let Some(v) = &self.src_lang {
                m.src_lang.clone_from(v);
            }
            if let Some(v) = &self.tgt_lang {
                m.tgt_lang.clone_from(v);
            }
            if let Some(v) = &self.dialect {
                m.dialect.clone_from(v);
            }
            if let Some(v) = &self.version {
                m.version.clone_from(v);
            }
            if self.enabled.is_some() {
                m.enabled = self.enabled;
            }
        }
        found
    }
}

/// Which stages a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Pipeline {
    pub use_asr: bool,
    pub use_nmt: bool,
    pub use_tts: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self { use_asr: true, use_nmt: true, use_tts: true }
    }
}

/// Server → node: run this utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobAssign {
    pub job_id: String,
    pub session_id: String,
    pub utterance_index: u64,
    pub src_lang: String,
    pub tgt_lang: String,
    #[serde(default)]
    pub dialect: Option<String>,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub pipeline: Pipeline,
    /// The client's base64 audio, unchanged.
    pub audio: Base64Audio,
    pub audio_format: AudioFormat,
    pub sample_rate: u32,
    /// Extension: milliseconds the node has before the dispatcher moves the job elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Extension 12: the session's `tts_format`, the format the result's
    /// speech should be in; absent, the node's choice (wav).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_format: Option<AudioFormat>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    pub code: JobErrorCode,
    #[serde(default)]
    pub message: String,
}

/// Node → server: a job's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    pub job_id: String,
    pub node_id: String,
    pub session_id: String,
    pub utterance_index: u64,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_asr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_translated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_audio: Option<Base64Audio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_format: Option<AudioFormat>,
    /// Extension: the sample rate of `tts_audio` (needed for `pcm16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Extra>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<u64>,
    /// Present exactly when `success` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

impl JobResult {
    /// A failed result for a job; success fields empty.
    pub fn failure(job_id: String, node_id: String, session_id: String, utterance_index: u64, error: JobError) -> Self {
        Self {
            job_id,
            node_id,
            session_id,
            utterance_index,
            success: false,
            text_asr: None,
            text_translated: None,
            tts_audio: None,
            tts_format: None,
            tts_sample_rate: None,
            extra: None,
            processing_time_ms: None,
            error: Some(error),
        }
    }
}

/// Node → server: a node-level fault (not tied to a job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeError {
    pub node_id: String,
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// Commands a dispatcher gives a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeCommand {
    /// Finish running jobs, then disconnect.
    Shutdown,
    /// Re-read engine configuration and report the new model list.
    ReloadConfig,
    /// Extension 7: finish running jobs, take no new ones.
    Drain,
}

/// Server → node: a control command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeControl {
    pub command: NodeCommand,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Node → server (extension 5): ask for a pairing code for this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PairingCodeRequest {
    pub node_id: String,
}

/// Server → node (extension 5): a fresh pairing code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PairingCode {
    pub node_id: String,
    /// Six digits from a CSPRNG, unique among live codes.
    pub code: String,
    /// Milliseconds since the Unix epoch after which the code is refused.
    pub expires_at: u64,
}

crate::direction_enum! {
    /// Every message a node sends.
    NodeToServer {
        NodeRegister("node_register"),
        NodeHeartbeat("node_heartbeat"),
        JobResult("job_result"); bulk tts_audio optional,
        NodeError("node_error"),
        PairingCodeRequest("pairing_code_request"),
    }
}

crate::direction_enum! {
    /// Every message the server sends to a node.
    ServerToNode {
        NodeRegisterAck("node_register_ack"),
        JobAssign("job_assign"); bulk audio,
        NodeControl("node_control"),
        PairingCode("pairing_code"),
        Error("error") = ErrorMessage,
    }
}

/// One model entry's fields: `kind` given means the entry describes the
/// model whole, so the languages its kind needs must be there.
struct ModelFields<'a> {
    model_id: &'a str,
    version: Option<&'a str>,
    src_lang: Option<&'a str>,
    tgt_lang: Option<&'a str>,
    dialect: Option<&'a str>,
    kind: Option<&'a ModelKind>,
}

fn model_list<T>(field: &str, list: &[T], fields: impl Fn(&T) -> ModelFields<'_>) -> Result<(), ProtocolError> {
    if list.len() > v::MAX_MODELS {
        return Err(ProtocolError::invalid_field(field, format!("at most {} models", v::MAX_MODELS)));
    }
    for (i, entry) in list.iter().enumerate() {
        let m = fields(entry);
        let f = |name: &str| format!("{field}[{i}].{name}");
        v::text(&f("model_id"), m.model_id)?;
        if m.model_id.is_empty() {
            return Err(ProtocolError::invalid_field(f("model_id"), "model_id must not be empty"));
        }
        if let Some(version) = m.version {
            v::text(&f("version"), version)?;
        }
        v::opt_lang(&f("src_lang"), m.src_lang)?;
        v::opt_lang(&f("tgt_lang"), m.tgt_lang)?;
        v::opt_lang(&f("dialect"), m.dialect)?;
        if let Some(kind) = m.kind {
            let needs_src = matches!(kind, ModelKind::Asr | ModelKind::Tts | ModelKind::Nmt);
            if needs_src && m.src_lang.is_none() {
                return Err(ProtocolError::invalid_field(f("src_lang"), format!("a {kind} model needs src_lang")));
            }
            if *kind == ModelKind::Nmt && m.tgt_lang.is_none() {
                return Err(ProtocolError::invalid_field(f("tgt_lang"), "an nmt model needs tgt_lang"));
            }
        }
    }
    Ok(())
}

fn models(field: &str, models: &[InstalledModel]) -> Result<(), ProtocolError> {
    model_list(field, models, |m| ModelFields {
        model_id: &m.model_id,
        version: Some(&m.version),
        src_lang: m.src_lang.as_deref(),
        tgt_lang: m.tgt_lang.as_deref(),
        dialect: m.dialect.as_deref(),
        kind: Some(&m.kind),
    })
}

impl Validate for NodeRegister {
    fn validate(&self) -> Result<(), ProtocolError> {
        if let Some(id) = self.claimed_node_id() {
            v::id("node_id", id)?;
        }
        v::text("version", &self.version)?;
        v::non_negative("hardware.memory_gb", self.hardware.memory_gb)?;
        if self.hardware.gpus.len() > 64 {
            return Err(ProtocolError::invalid_field("hardware.gpus", "at most 64 GPUs"));
        }
        for (i, g) in self.hardware.gpus.iter().enumerate() {
            v::text(&format!("hardware.gpus[{i}].name"), &g.name)?;
            v::non_negative(&format!("hardware.gpus[{i}].memory_gb"), g.memory_gb)?;
        }
        models("installed_models", &self.installed_models)?;
        v::opt_id("node_token", self.node_token.as_deref())?;
        if self.max_jobs.is_some_and(|m| !(1..=1024).contains(&m)) {
            return Err(ProtocolError::invalid_field("max_jobs", "max_jobs must be between 1 and 1024"));
        }
        self.auth_token.as_deref().map_or(Ok(()), |t| v::text("auth_token", t))
    }
}

impl Validate for NodeRegisterAck {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("node_id", &self.node_id)?;
        v::opt_id("node_token", self.node_token.as_deref())
    }
}

impl Validate for NodeHeartbeat {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("node_id", &self.node_id)?;
        let r = &self.resource_usage;
        v::percent("resource_usage.cpu_percent", r.cpu_percent)?;
        v::percent("resource_usage.mem_percent", r.mem_percent)?;
        if let Some(p) = r.gpu_percent {
            v::percent("resource_usage.gpu_percent", p)?;
        }
        if let Some(p) = r.gpu_mem_percent {
            v::percent("resource_usage.gpu_mem_percent", p)?;
        }
        self.installed_models.as_deref().map_or(Ok(()), |m| model_updates("installed_models", m))
    }
}

fn model_updates(field: &str, updates: &[ModelUpdate]) -> Result<(), ProtocolError> {
    // An entry naming its kind describes the model whole (it may be new).
    model_list(field, updates, |m| ModelFields {
        model_id: &m.model_id,
        version: m.version.as_deref(),
        src_lang: m.src_lang.as_ref().and_then(Option::as_deref),
        tgt_lang: m.tgt_lang.as_ref().and_then(Option::as_deref),
        dialect: m.dialect.as_ref().and_then(Option::as_deref),
        kind: m.kind.as_ref(),
    })
}

impl Validate for JobAssign {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("job_id", &self.job_id)?;
        v::id("session_id", &self.session_id)?;
        v::lang("src_lang", &self.src_lang)?;
        v::lang("tgt_lang", &self.tgt_lang)?;
        v::opt_lang("dialect", self.dialect.as_deref())?;
        v::sample_rate("sample_rate", self.sample_rate)
    }
}

impl Validate for JobResult {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("job_id", &self.job_id)?;
        v::id("node_id", &self.node_id)?;
        v::id("session_id", &self.session_id)?;
        for (field, text) in [("text_asr", &self.text_asr), ("text_translated", &self.text_translated)] {
            if let Some(t) = text {
                v::text(field, t)?;
            }
        }
        if let Some(rate) = self.tts_sample_rate {
            v::sample_rate("tts_sample_rate", rate)?;
        }
        if let Some(extra) = &self.extra
            && let Some(rate) = extra.speech_rate
        {
            v::non_negative("extra.speech_rate", rate)?;
        }
        match (&self.error, self.success) {
            (None, false) => Err(ProtocolError::invalid_field("error", "a failed job_result needs error")),
            (Some(_), true) => Err(ProtocolError::invalid_field("error", "a successful job_result has no error")),
            (Some(e), false) => v::text("error.message", &e.message),
            (None, true) => Ok(()),
        }
    }
}

impl Validate for NodeError {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("node_id", &self.node_id)?;
        v::text("code", &self.code)?;
        v::text("message", &self.message)
    }
}

impl Validate for NodeControl {
    fn validate(&self) -> Result<(), ProtocolError> {
        self.reason.as_deref().map_or(Ok(()), |r| v::text("reason", r))
    }
}

impl Validate for PairingCodeRequest {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("node_id", &self.node_id)
    }
}

impl Validate for PairingCode {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("node_id", &self.node_id)?;
        v::pairing_code("code", &self.code)
    }
}

/// `Option<Option<T>>` as absent (outer `None`), `null` (`Some(None)`) or a value.
mod present_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        // Called only when the field is present: `null` is Some(None).
        Option::<T>::deserialize(d).map(Some)
    }
}
