//! Dispatcher configuration: every knob with its default, read from TOML and
//! overridden by `TOLK_*` environment variables.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// Settings of the decision core (times in milliseconds).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// How long a disconnected session may be resumed.
    pub resume_grace_ms: u64,
    /// A connected session with no message and no work for this long expires.
    pub session_idle_ms: u64,
    /// A node silent for this long is declared dead and its jobs are moved.
    pub node_heartbeat_timeout_ms: u64,
    /// A connection that has not sent `session_init` / `node_register` by then is closed.
    pub handshake_timeout_ms: u64,
    /// How long a job waits for an eligible node with free capacity.
    pub admission_wait_ms: u64,
    /// A job's deadline on a node: this base...
    pub job_timeout_base_ms: u64,
    /// ...plus this many ms per second of audio.
    pub job_timeout_per_audio_s_ms: u64,
    /// Attempts (on distinct nodes) before an utterance fails with `NODE_UNAVAILABLE`.
    pub max_attempts: u32,
    /// Jobs one node runs at once.
    pub max_jobs_per_node: u32,
    /// Utterances of one session without an outcome yet; more are refused.
    pub max_pending_per_session: usize,
    /// Sent outcomes kept per session until the client confirms them...
    pub max_retained_outcomes: usize,
    /// ...and at most this many bytes of them (speech makes outcomes large).
    pub max_retained_bytes: usize,
    /// Jobs waiting for capacity, all sessions together.
    pub max_queued_jobs: usize,
    /// Jobs that may wait per job slot of the nodes able to run them (a
    /// queue of about a quarter of a job's time; a session with nothing queued may
    /// overfill it to twice that): beyond it, and beyond a session's
    /// share of a saturated fleet, utterances are answered at once with
    /// `retry_after_ms` instead of waiting (extension 10).
    pub queue_per_slot: f64,
    /// ...but every class may queue at least this many (a small fleet, such
    /// as one's own node, still absorbs a burst).
    pub queue_min: usize,
    pub max_sessions: usize,
    pub max_nodes: usize,
    /// Lifetime of a pairing code.
    pub pairing_code_ttl_ms: u64,
    /// Wrong pairing codes one client address may try per window...
    pub pairing_max_failures: u32,
    /// ...of this length.
    pub pairing_window_ms: u64,
    /// A registration secret every `node_register` must carry as `auth_token`.
    pub node_auth_token: Option<String>,
    /// A disconnected node's identity (and token) is forgotten after this.
    pub node_forget_ms: u64,
    /// Sample rates accepted in utterances (a subset of the protocol's).
    pub sample_rates: Vec<u32>,
    /// How long a node's result waits for the dispatcher's detectors before
    /// it is sent without their features.
    pub detect_wait_ms: u64,
    /// The dispatcher's own CPU as a limit: once a task that asks to run
    /// has waited this many ms for a worker thread on average for 300 ms,
    /// every sample at least `shed_lag_low_ms` (a standing queue), with a
    /// few lags' worth of work in the system, utterances in it are held to
    /// a window that shrinks while the lag stays this high; with the window
    /// full, a session at its share of it is refused at once with
    /// `RATE_LIMITED` (`admission::CpuShedder`)...
    pub shed_lag_high_ms: f64,
    /// ...and at or below this lag the window grows again. `shed_lag_high_ms
    /// = 0` turns shedding off.
    pub shed_lag_low_ms: f64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            resume_grace_ms: 60_000,
            session_idle_ms: 300_000,
            node_heartbeat_timeout_ms: 15_000,
            handshake_timeout_ms: 10_000,
            admission_wait_ms: 5_000,
            job_timeout_base_ms: 15_000,
            job_timeout_per_audio_s_ms: 2_000,
            max_attempts: 3,
            max_jobs_per_node: 4,
            max_pending_per_session: 64,
            max_retained_outcomes: 64,
            max_retained_bytes: 512 * 1024,
            max_queued_jobs: 10_000,
            queue_per_slot: 0.25,
            queue_min: 8,
            max_sessions: 100_000,
            max_nodes: 10_000,
            pairing_code_ttl_ms: 600_000,
            pairing_max_failures: 5,
            pairing_window_ms: 60_000,
            node_auth_token: None,
            node_forget_ms: 86_400_000,
            sample_rates: tolk_protocol::validate::SAMPLE_RATES.to_vec(),
            detect_wait_ms: 2_000,
            // README, "Overload": the CPU-bound sweep.
            shed_lag_high_ms: 3.0,
            shed_lag_low_ms: 0.5,
        }
    }
}

/// Settings of the server around the core.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Largest text frame accepted, in bytes (30 s of 48 kHz pcm16 in base64 fits).
    pub max_frame_bytes: usize,
    /// Frames queued to one peer; a peer that does not read is disconnected
    /// past this (for nodes raised to what the core may send one at once:
    /// twice the job cap plus 64).
    pub outbound_queue: usize,
    /// Bytes read from a WebSocket at once while waiting for a frame's
    /// header (a frame's payload is read as a whole). Held only while data
    /// arrives: an idle connection keeps no read buffer.
    pub ws_read_buffer_bytes: usize,
    /// Open WebSocket connections, all endpoints together.
    pub max_connections: usize,
    /// Bearer token of the admin API; the API is off without one.
    pub admin_token: Option<String>,
    /// PEM certificate chain and key: serve `wss://` / `https://`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long shutdown waits for running jobs.
    pub shutdown_grace_ms: u64,
    /// Log as JSON lines.
    pub log_json: bool,
    pub core: CoreConfig,
    /// Wasm plugins (scheduling policies, feature detectors).
    pub plugins: crate::plugins::PluginsConfig,
    /// Trust in volunteer nodes: canary jobs, probation, quarantine.
    pub trust: TrustConfig,
    /// Several dispatchers as one cluster over NATS (off without `nats_url`).
    pub cluster: ClusterConfig,
}

/// Cluster mode (`[cluster]`, extension 13): dispatchers sharing one fleet
/// and one namespace over NATS. Off without `nats_url`: the dispatcher is
/// then one process holding all its state, as without a cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:4222` (several, comma-separated, for a NATS cluster).
    /// The NATS server needs JetStream (`nats-server -js`).
    pub nats_url: Option<String>,
    /// This dispatcher's name in the cluster: unique, `[A-Za-z0-9_-]`;
    /// random when unset.
    pub name: Option<String>,
    /// The secret every dispatcher of the cluster shares: node and resume
    /// tokens are derived from it, so they are valid on all of them.
    /// Required in cluster mode (at least 16 bytes).
    pub secret: Option<String>,
    /// Subjects and bucket names start with this (one NATS, several clusters).
    pub prefix: String,
    /// How often this dispatcher announces its nodes.
    pub announce_ms: u64,
    /// A dispatcher not heard from for this long is gone: its nodes' jobs are retried.
    pub peer_timeout_ms: u64,
    /// How long the cluster keeps an unconfirmed outcome (a resume later
    /// than this re-runs the utterance).
    pub outcome_ttl_ms: u64,
    /// How long it keeps a session's record without a resume or a new outcome.
    pub session_ttl_ms: u64,
    /// Messages and store writes waiting for NATS; beyond it they are
    /// dropped (and counted): a job then times out and is retried.
    pub queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            name: None,
            secret: None,
            prefix: "tolk".into(),
            announce_ms: 250,
            peer_timeout_ms: 3_000,
            outcome_ttl_ms: 600_000,
            session_ttl_ms: 86_400_000,
            queue: 16_384,
        }
    }
}

/// Trust in volunteer nodes (`[trust]`): a new public node is on probation
/// (no public jobs) until it has answered canary jobs correctly; a node that
/// fails them is quarantined. Off without a canary set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// The canary set (`canaries.toml`: speech + expected text per
    /// language pair); verification is off without it. The project ships
    /// one: `dispatcher/canaries/canaries.toml`.
    pub canaries: Option<PathBuf>,
    /// Canaries a node on probation must pass to be trusted.
    pub probation_canaries: u32,
    /// Failed canaries (since probation began) that quarantine a node. A
    /// trusted node that fails one is back on probation with that failure.
    pub quarantine_after: u32,
    /// Chance that a public job a trusted node finishes is followed by a
    /// canary (sent only when the node has room and no queued job it serves).
    pub canary_rate: f64,
    /// Answering faster than this many ms per second of audio is implausible
    /// for real engines: a failed canary (`too_fast`).
    pub min_ms_per_audio_s: u64,
    /// Largest word (or, for Chinese and Japanese, character) error rate of
    /// the recognised text against the expected one.
    pub max_text_error: f64,
    /// Smallest share of the reference translation's content words found in
    /// the node's translation.
    pub min_translation_recall: f64,
    /// Sessions paired with a node (a user's own) reach it whatever its
    /// trust, and nodes that take only paired sessions get no canaries.
    pub exempt_paired: bool,
    /// A public node for whose languages the set has no canary: trusted
    /// unverified (`true`) or kept on probation (`false`).
    pub trust_unverifiable: bool,
    /// After an inconclusive canary (an error or a time-out), the next one
    /// waits this long.
    pub retry_ms: u64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            canaries: None,
            probation_canaries: 3,
            quarantine_after: 2,
            canary_rate: 0.02,
            min_ms_per_audio_s: 20,
            max_text_error: 0.5,
            min_translation_recall: 0.3,
            exempt_paired: true,
            trust_unverifiable: false,
            retry_ms: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_frame_bytes: 4 * 1024 * 1024,
            outbound_queue: 256,
            ws_read_buffer_bytes: 64 * 1024,
            max_connections: 20_000,
            admin_token: None,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_ms: 10_000,
            log_json: false,
            core: CoreConfig::default(),
            plugins: crate::plugins::PluginsConfig::default(),
            trust: TrustConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path` (TOML), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Applies `TOLK_LISTEN`, `TOLK_ADMIN_TOKEN`, `TOLK_NODE_AUTH_TOKEN`,
    /// `TOLK_TLS_CERT`, `TOLK_TLS_KEY`, `TOLK_MAX_FRAME_BYTES`, `TOLK_PLUGIN_DIR`,
    /// `TOLK_SCHEDULER`, `TOLK_LOG_JSON`, `TOLK_CLUSTER_NATS_URL`,
    /// `TOLK_CLUSTER_NAME`, `TOLK_CLUSTER_SECRET`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        if let Some(v) = get("TOLK_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("TOLK_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = get("TOLK_NODE_AUTH_TOKEN") {
            self.core.node_auth_token = Some(v);
        }
        if let Some(v) = get("TOLK_TLS_CERT") {
            self.tls_cert = Some(v.into());
        }
        if let Some(v) = get("TOLK_TLS_KEY") {
            self.tls_key = Some(v.into());
        }
        if let Some(v) = get("TOLK_MAX_FRAME_BYTES") {
            self.max_frame_bytes = v.parse().map_err(|_| Error::Config(format!("TOLK_MAX_FRAME_BYTES: not a number: {v}")))?;
        }
        if let Some(v) = get("TOLK_PLUGIN_DIR") {
            self.plugins.dir = Some(v.into());
        }
        if let Some(v) = get("TOLK_SCHEDULER") {
            self.plugins.scheduler = Some(v);
        }
        if let Some(v) = get("TOLK_CLUSTER_NATS_URL") {
            self.cluster.nats_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("TOLK_CLUSTER_NAME") {
            self.cluster.name = Some(v);
        }
        if let Some(v) = get("TOLK_CLUSTER_SECRET") {
            self.cluster.secret = Some(v);
        }
        if let Some(v) = get("TOLK_LOG_JSON") {
            self.log_json = matches!(v.as_str(), "1" | "true" | "yes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../tolk-dispatcher.example.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        let d = Config::default();
        assert_eq!(parsed.listen, d.listen);
        assert_eq!(parsed.max_frame_bytes, d.max_frame_bytes);
        assert_eq!(format!("{:?}", parsed.core), format!("{:?}", d.core), "the example documents every core default");
        assert_eq!(format!("{:?}", parsed.plugins), format!("{:?}", d.plugins), "and every plugin default");
        assert_eq!(parsed.trust, d.trust, "and every trust default");
        assert_eq!(parsed.cluster, d.cluster, "and every cluster default");
    }

    #[test]
    fn unknown_keys_are_errors_and_env_overrides_apply() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "TOLK_LISTEN" => Some("0.0.0.0:9".into()),
            "TOLK_MAX_FRAME_BYTES" => Some("1024".into()),
            "TOLK_NODE_AUTH_TOKEN" => Some("s".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((c.listen.as_str(), c.max_frame_bytes, c.core.node_auth_token.as_deref()), ("0.0.0.0:9", 1024, Some("s")));
        assert!(c.apply_env(|k| (k == "TOLK_MAX_FRAME_BYTES").then(|| "lots".into())).is_err());
    }
}
