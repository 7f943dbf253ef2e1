//! The node's configuration file (TOML): how it serves, and which engines it
//! loads. See `tolk-node.example.toml` for every setting.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tolk_engine_sdk::Options;
use tolk_protocol::ModelKind;
use tolk_protocol::node::InstalledModel;
use tolk_protocol::validate::is_language_tag;

use crate::Error;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `ws://HOST:PORT` (or `wss://`); `--dispatcher` overrides it.
    pub dispatcher: Option<String>,
    /// Where `node_id` and `node_token` are kept; `--state-dir` overrides it.
    pub state_dir: Option<PathBuf>,
    /// Take jobs of sessions not paired with this node.
    pub accept_public_jobs: bool,
    /// Jobs run at once; one more is refused with `NODE_BUSY`.
    pub max_jobs: usize,
    /// Heartbeat period.
    pub heartbeat_ms: u64,
    /// Deadline of a job whose `job_assign` carries none.
    pub default_deadline_ms: u64,
    /// Reconnect back-off: first delay and cap.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// The dispatcher's registration secret, when it has one (`TOLK_NODE_AUTH_TOKEN`).
    pub auth_token: Option<String>,
    /// For `wss://`: a PEM file of CA certificates trusted besides the public
    /// roots (a private or self-signed dispatcher).
    pub tls_ca_file: Option<PathBuf>,
    /// Where engines run: `"process"` (the default: each instance in a
    /// supervised child process, so a crash or hang costs only its jobs) or
    /// `"in-process"` (loaded into the node, as before). `[[engine]]`s may
    /// override it with `isolation`.
    pub engine_isolation: Isolation,
    /// The memory (heap and private writable mappings, `RLIMIT_DATA`) of each
    /// engine process, in MiB; 0 for no limit. `[[engine]]`s may override it
    /// with `memory_limit_mb`.
    pub engine_memory_limit_mb: u64,
    /// Restart back-off of a failed engine process: first delay and cap
    /// (doubling per failure in a row; a minute of healthy running resets it).
    pub engine_restart_min_ms: u64,
    pub engine_restart_max_ms: u64,
    /// One entry per model.
    #[serde(rename = "engine")]
    pub engines: Vec<EngineConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dispatcher: None,
            state_dir: None,
            accept_public_jobs: true,
            max_jobs: 4,
            heartbeat_ms: 5_000,
            default_deadline_ms: 60_000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            auth_token: None,
            tls_ca_file: None,
            engine_isolation: Isolation::Process,
            engine_memory_limit_mb: 4096,
            engine_restart_min_ms: 500,
            engine_restart_max_ms: 30_000,
            engines: Vec::new(),
        }
    }
}

/// Where an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In supervised child processes, one per instance.
    Process,
    /// Loaded into the node's own process.
    InProcess,
}

/// The stage an engine serves, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Asr,
    Nmt,
    Tts,
    /// Speech translation (an ABI 2 engine reading the job's audio, e.g.
    /// whisper's translate task). Reported as an ordinary `nmt` model
    /// (`src_lang` → `tgt_lang`), so the dispatcher's matching needs nothing new.
    #[serde(rename = "speech_translation")]
    SpeechTranslation,
}

impl StageName {
    pub fn kind(self) -> ModelKind {
        match self {
            Self::Asr => ModelKind::Asr,
            Self::Nmt | Self::SpeechTranslation => ModelKind::Nmt,
            Self::Tts => ModelKind::Tts,
        }
    }
}

/// One `[[engine]]`: a model the node offers, served by a plugin library.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub stage: StageName,
    /// Path of the shared library; relative paths are relative to the config file.
    pub library: PathBuf,
    /// The model id reported to the dispatcher.
    pub model_id: String,
    /// ASR: language heard; NMT: source; TTS: language spoken.
    #[serde(default)]
    pub src_lang: Option<String>,
    /// Instead of `src_lang`: several languages served by the one engine (a
    /// multilingual model), reported as one model each, `<model_id>-<lang>`.
    #[serde(default)]
    pub src_langs: Vec<String>,
    /// NMT only: target language.
    #[serde(default)]
    pub tgt_lang: Option<String>,
    #[serde(default)]
    pub dialect: Option<String>,
    /// Reported version; default: the engine's own.
    #[serde(default)]
    pub version: Option<String>,
    /// Instances of the engine (1–16): calls run on a free one, so this many
    /// jobs can be in this stage at once. Each instance loads its own model.
    #[serde(default = "one")]
    pub instances: usize,
    /// Overrides the file's `engine_isolation` for this engine.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Overrides the file's `engine_memory_limit_mb` for this engine.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// Passed to the engine as `key=value` lines.
    #[serde(default)]
    pub options: toml::Table,
}

fn one() -> usize {
    1
}

impl EngineConfig {
    /// The options as the engine receives them.
    pub fn engine_options(&self) -> Result<Options, String> {
        let mut pairs = Vec::new();
        for (key, value) in &self.options {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(format!("option `{key}`: only strings, numbers and booleans")),
            };
            if key.contains(['=', '\n']) || value.contains('\n') {
                return Err(format!("option `{key}`: keys may not contain `=` or newlines, values no newlines"));
            }
            pairs.push((key.clone(), value));
        }
        Ok(Options::from_pairs(pairs))
    }

    /// The models this engine reports: one, or one per `src_langs` entry.
    pub fn models(&self, version: &str) -> Vec<InstalledModel> {
        let model = |model_id: String, lang: &str| InstalledModel {
            model_id,
            kind: self.stage.kind(),
            src_lang: Some(lang.to_owned()),
            tgt_lang: self.tgt_lang.clone(),
            dialect: self.dialect.clone(),
            version: version.to_owned(),
            enabled: None,
        };
        match &self.src_lang {
            Some(lang) => vec![model(self.model_id.clone(), lang)],
            None => self.src_langs.iter().map(|l| model(format!("{}-{l}", self.model_id), l)).collect(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let who = &self.model_id;
        if who.is_empty() || who.len() > tolk_protocol::validate::MAX_TEXT_LEN {
            return Err("model_id must be 1–4096 bytes".into());
        }
        if self.src_lang.is_some() != self.src_langs.is_empty() {
            return Err(format!("{who}: give either src_lang or src_langs (a non-empty list)"));
        }
        let langs = self.src_lang.iter().chain(&self.src_langs).map(|l| ("src_lang", Some(l)));
        for (field, lang) in langs.chain([("tgt_lang", self.tgt_lang.as_ref()), ("dialect", self.dialect.as_ref())]) {
            if let Some(l) = lang
                && !is_language_tag(l)
            {
                return Err(format!("{who}: {field} {l:?} is not a language tag"));
            }
        }
        if !(1..=16).contains(&self.instances) {
            return Err(format!("{who}: instances must be 1–16"));
        }
        match (self.stage, &self.tgt_lang) {
            (StageName::Nmt | StageName::SpeechTranslation, None) => Err(format!("{who}: an nmt engine needs tgt_lang")),
            (StageName::Asr | StageName::Tts, Some(_)) => Err(format!("{who}: only nmt engines have tgt_lang")),
            _ => self.engine_options().map(drop).map_err(|e| format!("{who}: {e}")),
        }
    }
}

impl Config {
    /// Reads and checks `path`; relative engine paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let err = |message: String| Error::Config { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config = Self::parse(&text).map_err(err)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for e in &mut config.engines {
            if e.library.is_relative() {
                e.library = base.join(&e.library);
            }
        }
        if let Ok(token) = std::env::var("TOLK_NODE_AUTH_TOKEN") {
            config.auth_token = Some(token);
        }
        Ok(config)
    }

    /// Parses and checks the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.max_jobs == 0 {
            return Err("max_jobs must be at least 1".into());
        }
        if config.engine_restart_min_ms == 0 || config.engine_restart_max_ms < config.engine_restart_min_ms {
            return Err("engine_restart_min_ms must be positive, engine_restart_max_ms ≥ engine_restart_min_ms".into());
        }
        if config.heartbeat_ms == 0 || config.reconnect_min_ms == 0 || config.reconnect_max_ms < config.reconnect_min_ms {
            return Err("heartbeat_ms and reconnect_min_ms must be positive, reconnect_max_ms ≥ reconnect_min_ms".into());
        }
        // What the node reports: one model per engine, or one per language of `src_langs`.
        let models: usize = config.engines.iter().map(|e| e.src_langs.len().max(1)).sum();
        if models > tolk_protocol::validate::MAX_MODELS {
            return Err(format!("at most {} models (engines × languages)", tolk_protocol::validate::MAX_MODELS));
        }
        for e in &config.engines {
            e.check()?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_to_the_defaults_plus_its_engines() {
        let c = Config::parse(include_str!("../tolk-node.example.toml")).unwrap();
        let d = Config::default();
        assert_eq!((c.accept_public_jobs, c.max_jobs, c.heartbeat_ms), (d.accept_public_jobs, d.max_jobs, d.heartbeat_ms));
        assert_eq!((c.engine_isolation, c.engine_memory_limit_mb), (d.engine_isolation, d.engine_memory_limit_mb));
        assert_eq!((c.engine_restart_min_ms, c.engine_restart_max_ms), (d.engine_restart_min_ms, d.engine_restart_max_ms));
        assert_eq!(
            (c.default_deadline_ms, c.reconnect_min_ms, c.reconnect_max_ms),
            (d.default_deadline_ms, d.reconnect_min_ms, d.reconnect_max_ms)
        );
        let stages: Vec<StageName> = c.engines.iter().map(|e| e.stage).collect();
        assert_eq!(stages, [StageName::Asr, StageName::Nmt, StageName::Nmt, StageName::Tts, StageName::Tts]);
        assert_eq!(c.engines[0].engine_options().unwrap().get("hmm"), Some("/usr/share/pocketsphinx/model/en-us/en-us"));
    }

    #[test]
    fn the_neural_example_parses() {
        let c = Config::parse(include_str!("../tolk-node.neural.toml")).unwrap();
        let nmt: Vec<String> =
            c.engines.iter().filter(|e| e.stage.kind() == ModelKind::Nmt).flat_map(|e| e.models("1")).map(|m| m.model_id).collect();
        assert!(nmt.contains(&"whisper-base-translate-zh".to_owned()) && nmt.contains(&"apertium-eng-spa".to_owned()), "{nmt:?}");
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let check = |text: &str, needle: &str| {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        };
        check("max_jobs = 0", "max_jobs");
        check("engine_isolation = \"thread\"", "unknown variant");
        check("engine_restart_min_ms = 0", "engine_restart_min_ms");
        check("colour = 1", "unknown field");
        let engine = |extra: &str| format!("[[engine]]\nstage = \"nmt\"\nlibrary = \"x.so\"\nmodel_id = \"m\"\nsrc_lang = \"en\"\n{extra}");
        check(&engine(""), "needs tgt_lang");
        check(&engine("tgt_lang = \"es\"\ninstances = 0"), "instances");
        check(&engine("tgt_lang = \"e s\""), "not a language tag");
        check(&engine("tgt_lang = \"es\"\n[engine.options]\nx = [1]"), "only strings");
        check(&engine("tgt_lang = \"es\"\n[engine.options]\nx = \"a\\nb\""), "newlines");
        check(&engine("tgt_lang = \"es\"\nsrc_langs = [\"de\"]"), "either src_lang or src_langs");
        let langs: Vec<String> = (0..257).map(|i| format!("\"x{i}\"")).collect();
        let many = format!("[[engine]]\nstage = \"asr\"\nlibrary = \"w.so\"\nmodel_id = \"w\"\nsrc_langs = [{}]\n", langs.join(", "));
        check(&many, "at most 256 models");
        let own = Config::parse(&format!(
            "engine_isolation = \"in-process\"\n{}",
            engine("tgt_lang = \"es\"\nisolation = \"process\"\nmemory_limit_mb = 512")
        ))
        .unwrap();
        assert_eq!(
            (own.engine_isolation, own.engines[0].isolation, own.engines[0].memory_limit_mb),
            (Isolation::InProcess, Some(Isolation::Process), Some(512))
        );
        let ok = Config::parse(&engine("tgt_lang = \"es\"\n[engine.options]\nmode = \"eng-spa\"\nn = 3\nb = true")).unwrap();
        let o = ok.engines[0].engine_options().unwrap();
        assert_eq!((o.get("mode"), o.get("n"), o.get("b")), (Some("eng-spa"), Some("3"), Some("true")));
    }

    #[test]
    fn one_multilingual_engine_reports_a_model_per_language_and_speech_translation_is_nmt() {
        let text = "[[engine]]\nstage = \"asr\"\nlibrary = \"w.so\"\nmodel_id = \"whisper-base\"\nsrc_langs = [\"zh\", \"en\"]\n\n\
                    [[engine]]\nstage = \"speech_translation\"\nlibrary = \"w.so\"\nmodel_id = \"whisper-base-translate\"\nsrc_langs = [\"zh\", \"es\"]\ntgt_lang = \"en\"\n";
        let c = Config::parse(text).unwrap();
        let asr = c.engines[0].models("1");
        assert_eq!(
            asr.iter().map(|m| (m.model_id.as_str(), m.src_lang.as_deref())).collect::<Vec<_>>(),
            [("whisper-base-zh", Some("zh")), ("whisper-base-en", Some("en"))]
        );
        let st = c.engines[1].models("1");
        assert!(st.iter().all(|m| m.kind == ModelKind::Nmt && m.tgt_lang.as_deref() == Some("en")));
        assert_eq!(st[1].model_id, "whisper-base-translate-es");
        let no_tgt = text.replace("tgt_lang = \"en\"\n", "");
        assert!(Config::parse(&no_tgt).unwrap_err().contains("needs tgt_lang"));
    }
}
