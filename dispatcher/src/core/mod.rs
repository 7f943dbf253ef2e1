//! The decision core: a deterministic, synchronous state machine that owns
//! sessions, nodes, jobs, pairing codes and reorder buffers.
//!
//! It is fed [`Input`]s with the current time and queues [`Action`]s (frames
//! to send, connections to close). It never reads a clock, touches a socket or
//! draws randomness it was not given: the shell passes time in and an RNG at
//! construction. Timers are deadlines the shell asks for with
//! [`Core::next_deadline`] and fires with [`Core::on_timeout`]. What it
//! counted leaves as plain data ([`Core::stats`]): the core links no metrics
//! library and knows nothing of its shell.
//!
//! # Layout
//! Split by entity, each module owning its state and tests; this file
//! coordinates (inputs, timers, connections, admin, output):
//! - [`sessions`]: session init, resume, heartbeats, utterance admission, outcomes.
//! - [`nodes`]: registration, heartbeats (model updates), liveness, loss.
//! - [`jobs`]: assignment, results, failures and retries, deadlines.
//! - [`queue`]: queued jobs indexed by requirements (classes), the eligible-node cache.
//! - [`eligibility`]: the one rule of which node may run which job, and why not.
//! - [`admission`]: overload control, `retry_after_ms`, per-session shares.
//! - [`trust`]: canary jobs, probation and quarantine of volunteer nodes.
//! - [`cluster`]: other dispatchers, their nodes, forwarded jobs, stored sessions.
//! - [`pairing`], [`order`] (per-session reorder buffer), [`policy`], [`timer`], [`stats`].
//!
//! Every guarantee of the protocol's extensions lives here; see
//! `ARCHITECTURE.md` for which function carries which.

pub mod admission;
pub mod cluster;
pub mod eligibility;
mod frame;
mod jobs;
mod nodes;
pub mod order;
mod pairing;
pub mod policy;
mod queue;
mod sessions;
pub mod stats;
mod timer;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use rand::RngCore;
use rand::rngs::StdRng;
use tolk_protocol::common::{ErrorCode, ErrorMessage, Extra, Features};
use tolk_protocol::node::{NodeCommand, NodeControl};
use tolk_protocol::{AudioFormat, ClientToServer, NodeToServer, ProtocolError, ServerToClient, ServerToNode};

use crate::config::CoreConfig;
use jobs::Job;
use nodes::Node;
use pairing::Pairing;
use policy::{LeastLoaded, Policy};
use queue::Classes;
use sessions::Session;
pub use stats::CoreStats;
use timer::{Timer, Timers};

/// Milliseconds since the Unix epoch, as the shell reads them.
pub type Millis = u64;
/// A connection, numbered by the shell.
pub type ConnId = u64;
pub use frame::Frame;

/// Which endpoint a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Session,
    Node,
}

/// An event for the core.
#[derive(Debug)]
pub enum Input {
    /// A WebSocket was accepted.
    Opened { conn: ConnId, endpoint: Endpoint, addr: IpAddr },
    /// A parsed frame from a session connection.
    Session { conn: ConnId, msg: ClientToServer },
    /// A parsed frame from a node connection.
    Node { conn: ConnId, msg: NodeToServer },
    /// A frame that did not parse or validate.
    Invalid { conn: ConnId, error: ProtocolError },
    /// The connection is gone (either side closed it).
    Closed { conn: ConnId },
    /// What the dispatcher's detectors found for a job (empty on failure).
    Detected { job_id: String, extra: Extra },
    /// The shell's scheduling lag, ms (how long a task waited for a worker
    /// thread), over the samples of one reading: their mean, and the least
    /// (above zero only if every sample waited: a standing queue, not a
    /// burst). The dispatcher's own CPU as a limit (`admission::CpuShedder`).
    Load { lag_ms: f64, least_lag_ms: f64 },
    /// A message from another dispatcher of the cluster.
    Peer { from: String, msg: cluster::PeerMsg },
    /// What the cluster's store holds for a session a client resumes here
    /// (`None`: nothing), answering [`Action::LookupSession`].
    SessionFound { conn: ConnId, session_id: String, last: Option<u64>, found: Option<(cluster::SessionRecord, Vec<(u64, Frame)>)> },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this text frame.
    Send { conn: ConnId, frame: Frame },
    /// Close the connection after the frames already queued for it.
    Close { conn: ConnId },
    /// Run the detectors for `features` on this audio, then feed
    /// `Input::Detected` back, whatever happens.
    Detect { job_id: String, audio: Arc<str>, format: AudioFormat, sample_rate: u32, features: Features },
    /// Send to dispatcher `to` of the cluster (`None`: to all of them).
    Peer { to: Option<String>, msg: cluster::PeerMsg },
    /// Apply to the cluster's store, in the order given.
    Store(cluster::StoreOp),
    /// Look the session up in the cluster's store, then feed
    /// `Input::SessionFound` back, whatever happens.
    LookupSession { conn: ConnId, session_id: String, last: Option<u64> },
}

/// Admin commands (the shell's HTTP API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Drain {
        node_id: String,
    },
    Shutdown {
        node_id: String,
    },
    ReloadConfig {
        node_id: String,
    },
    /// Back on probation: verify the node again with canaries.
    Probation {
        node_id: String,
    },
    /// Trust the node without canaries (the operator vouches for it).
    Vouch {
        node_id: String,
    },
}

/// A node as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub connected: bool,
    pub draining: bool,
    pub accept_public_jobs: bool,
    pub running_jobs: u32,
    pub max_jobs: u32,
    pub cpu_percent: Option<f64>,
    pub mem_percent: Option<f64>,
    pub models: Vec<String>,
    pub version: String,
    /// The dispatcher of the cluster it is connected to, when not this one.
    pub dispatcher: Option<String>,
    /// Smoothed processing time per second of audio, when observed.
    pub ms_per_audio_s: Option<f64>,
    /// Canary verification: probation, trusted, quarantined…
    pub trust: trust::TrustView,
}

/// A session as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SessionView {
    pub session_id: String,
    pub connected: bool,
    pub src_lang: String,
    pub tgt_lang: String,
    pub paired_node_id: Option<String>,
    pub pending: usize,
}

#[derive(Debug)]
struct Conn {
    endpoint: Endpoint,
    addr: IpAddr,
    session: Option<String>,
    node: Option<String>,
}

/// Dispatcher features the core can supply itself (detector plugins), so a
/// node need not.
pub type SuppliedFeatures = Features;

/// The decision core. See the module documentation.
pub struct Core {
    cfg: CoreConfig,
    rng: StdRng,
    policy: Box<dyn Policy>,
    supplied: SuppliedFeatures,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<String, Session>,
    /// Ordered by id, so candidate lists are deterministic without sorting.
    nodes: BTreeMap<String, Node>,
    /// Bumped whenever a node's eligibility may have changed: invalidates
    /// every class's eligible-node cache.
    node_epoch: u64,
    jobs: HashMap<String, Job>,
    classes: Classes,
    /// Acceptance order of jobs (queue position).
    next_seq: u64,
    pairing: Pairing,
    timers: Timers,
    stats: CoreStats,
    trust: trust::Trust,
    shedder: admission::CpuShedder,
    /// The recent share of Opus among accepted utterances (canaries mirror it).
    opus_share: f64,
    out: Vec<Action>,
    next_node_key: u32,
    /// Node and resume tokens are HMACs of the id under this key, so any
    /// dispatcher holding it (a cluster shares it) can check them.
    secret: ring::hmac::Key,
    cluster: Option<cluster::Cluster>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("conns", &self.conns.len())
            .field("sessions", &self.sessions.len())
            .field("nodes", &self.nodes.len())
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// Bounds on internal collections, for tests that check nothing grows without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub conns: usize,
    pub sessions: usize,
    pub nodes: usize,
    pub jobs: usize,
    pub queue: usize,
    pub classes: usize,
    pub codes: usize,
    pub guesses: usize,
    pub timers: usize,
    pub max_session_buffer: usize,
    /// Canaries on their way.
    pub canaries: usize,
}

const SWEEP_EVERY_MS: Millis = 1_000;

impl Core {
    /// A core at time `now`, drawing ids, tokens and codes from `rng` (seed it
    /// from the OS in production: it must be a CSPRNG).
    pub fn new(cfg: CoreConfig, rng: StdRng, now: Millis) -> Self {
        let shedder = admission::CpuShedder::new(cfg.shed_lag_high_ms, cfg.shed_lag_low_ms);
        let mut rng = rng;
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let mut core = Self {
            cfg,
            rng,
            policy: Box::new(LeastLoaded),
            supplied: Features::default(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            nodes: BTreeMap::new(),
            node_epoch: 0,
            jobs: HashMap::new(),
            classes: Classes::default(),
            next_seq: 0,
            pairing: Pairing::default(),
            timers: Timers::default(),
            stats: CoreStats::default(),
            trust: trust::Trust::default(),
            shedder,
            opus_share: 0.0,
            out: Vec::new(),
            next_node_key: 0,
            secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            cluster: None,
        };
        core.timers.arm(now + SWEEP_EVERY_MS, Timer::Sweep);
        core
    }

    /// The key node and resume tokens are derived with (a cluster's shared
    /// secret; without one, a random key per process).
    pub fn set_secret(&mut self, secret: &[u8]) {
        self.secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    }

    /// The token for `id` in `purpose` ("node", "resume"): 64 hex digits.
    fn derive_token(&self, purpose: &str, id: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.secret);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(id.as_bytes());
        let mut token = String::with_capacity(64);
        push_hex(&mut token, ctx.sign().as_ref());
        token
    }

    /// Whether `token` is the one derived for `id` (constant time).
    fn token_valid(&self, purpose: &str, id: &str, token: &str) -> bool {
        constant_time_eq::constant_time_eq(self.derive_token(purpose, id).as_bytes(), token.as_bytes())
    }

    /// Replaces the scheduling policy (e.g. with a wasm plugin).
    pub fn set_policy(&mut self, policy: Box<dyn Policy>) {
        self.policy = policy;
    }

    /// Declares which features the dispatcher supplies itself.
    pub fn set_supplied_features(&mut self, features: SuppliedFeatures) {
        self.supplied = features;
        self.node_epoch += 1;
    }

    /// What the core counted, with its gauges read now.
    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats.clone();
        s.sessions_active = self.sessions.len() as u64;
        s.nodes_live = self.nodes.values().filter(|n| n.conn.is_some()).count() as u64;
        s.nodes_remote = self.nodes.values().filter(|n| n.remote.as_ref().is_some_and(|r| r.connected)).count() as u64;
        s.in_cluster = self.cluster.is_some();
        s.peers = self.cluster.as_ref().map_or(0, |c| c.peers() as u64);
        s.jobs_proxied_running = self.cluster.as_ref().map_or(0, |c| c.proxied() as u64);
        s.queue_depth = self.classes.queued() as u64;
        s.jobs_running = self.running_jobs() as u64;
        for n in self.nodes.values().filter(|n| n.conn.is_some()) {
            *s.nodes_by_trust.entry(n.trust.state.as_str()).or_insert(0) += 1;
        }
        s
    }

    /// Takes the actions queued so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// The earliest deadline at which [`Core::on_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// Jobs currently running on nodes.
    pub fn running_jobs(&self) -> usize {
        self.nodes.values().map(|n| n.running.len()).sum()
    }

    /// Current collection sizes.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            conns: self.conns.len(),
            sessions: self.sessions.len(),
            nodes: self.nodes.len(),
            jobs: self.jobs.len(),
            queue: self.classes.queued(),
            classes: self.classes.len(),
            codes: self.pairing.codes(),
            guesses: self.pairing.guesses(),
            timers: self.timers.len(),
            max_session_buffer: self.sessions.values().map(|s| s.order.len()).max().unwrap_or(0),
            canaries: self.trust.inflight(),
        }
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Opened { conn, endpoint, addr } => {
                self.conns.insert(conn, Conn { endpoint, addr, session: None, node: None });
                self.timers.arm(now + self.cfg.handshake_timeout_ms, Timer::Handshake(conn));
            }
            Input::Session { conn, msg } => self.on_session_msg(now, conn, msg),
            Input::Node { conn, msg } => self.on_node_msg(now, conn, msg),
            Input::Invalid { conn, error } => {
                let endpoint = match self.conns.get(&conn).map(|c| c.endpoint) {
                    Some(Endpoint::Session) => "session",
                    Some(Endpoint::Node) => "node",
                    None => "unknown",
                };
                *self.stats.bad_frames.entry(endpoint).or_insert(0) += 1;
                self.send_error(conn, error.to_message());
            }
            Input::Closed { conn } => self.on_closed(now, conn),
            Input::Detected { job_id, extra } => self.on_detected(now, &job_id, extra),
            Input::Load { lag_ms, least_lag_ms } => {
                self.shedder.observe_samples(now, lag_ms, least_lag_ms, self.jobs.len());
                self.stats.shed_window = self.shedder.window();
                self.stats.cpu_reservations_lapsed = self.shedder.lapsed();
            }
            Input::Peer { from, msg } => self.on_peer(now, from, msg),
            Input::SessionFound { conn, session_id, last, found } => self.on_session_found(now, conn, &session_id, last, found),
        }
    }

    /// Fires every timer due at `now`.
    pub fn on_timeout(&mut self, now: Millis) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Handshake(conn) => self.on_handshake_timeout(conn),
                Timer::Session(id) => self.on_session_timer(now, &id),
                Timer::Node(id) => self.on_node_timer(now, &id),
                Timer::Job(id) => self.on_job_timer(now, &id),
                Timer::Proxied(id) => self.on_proxied_timer(now, &id),
                Timer::Sweep => {
                    self.sweep(now);
                    self.timers.arm(now + SWEEP_EVERY_MS, Timer::Sweep);
                }
            }
        }
    }

    /// Runs an admin command; `Err` names what was wrong.
    pub fn admin(&mut self, now: Millis, cmd: AdminCommand) -> Result<(), String> {
        let (node_id, command) = match &cmd {
            AdminCommand::Drain { node_id } => (node_id, NodeCommand::Drain),
            AdminCommand::Shutdown { node_id } => (node_id, NodeCommand::Shutdown),
            AdminCommand::ReloadConfig { node_id } => (node_id, NodeCommand::ReloadConfig),
            AdminCommand::Probation { node_id } => return self.set_node_trust(now, node_id, false),
            AdminCommand::Vouch { node_id } => return self.set_node_trust(now, node_id, true),
        };
        let node = self.nodes.get_mut(node_id).ok_or_else(|| format!("no node {node_id}"))?;
        let conn = node.conn.ok_or_else(|| format!("node {node_id} is not connected"))?;
        if matches!(command, NodeCommand::Drain | NodeCommand::Shutdown) {
            // Either way it takes no new jobs from now on.
            node.draining = true;
            self.node_epoch += 1;
        }
        let msg = ServerToNode::NodeControl(NodeControl { command, reason: Some("operator request".into()) });
        self.send_node(conn, msg);
        let _ = now;
        Ok(())
    }

    /// Every node, for the admin API.
    pub fn list_nodes(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, n)| NodeView {
                node_id: id.clone(),
                connected: n.live(),
                draining: n.draining,
                accept_public_jobs: n.accept_public,
                running_jobs: n.running.len() as u32,
                max_jobs: n.max_jobs,
                cpu_percent: n.usage.as_ref().map(|u| u.cpu_percent),
                mem_percent: n.usage.as_ref().map(|u| u.mem_percent),
                models: n.models.iter().filter(|m| m.enabled != Some(false)).map(|m| m.model_id.clone()).collect(),
                version: n.version.clone(),
                dispatcher: n.remote.as_ref().map(|r| r.dispatcher.clone()),
                ms_per_audio_s: n.ms_per_audio_s,
                trust: n.trust.view(),
            })
            .collect()
    }

    /// The language pairs some connected, non-draining node serves whole
    /// (ASR of the source, translation, TTS of the target), sorted: what a
    /// client can ask for now. Pairing is not considered.
    pub fn served_pairs(&self) -> Vec<(String, String)> {
        use tolk_protocol::ModelKind;
        use tolk_protocol::models::serves;
        let mut pairs = std::collections::BTreeSet::new();
        for n in self.nodes.values().filter(|n| n.live() && !n.draining) {
            for m in n.models.iter().filter(|m| m.kind == ModelKind::Nmt && m.enabled != Some(false)) {
                let (Some(src), Some(tgt)) = (m.src_lang.as_deref(), m.tgt_lang.as_deref()) else { continue };
                let asr = n.models.iter().any(|a| serves(a, &ModelKind::Asr, src, None, None));
                let tts = n.models.iter().any(|t| serves(t, &ModelKind::Tts, tgt, None, None));
                if asr && tts {
                    pairs.insert((src.to_owned(), tgt.to_owned()));
                }
            }
        }
        pairs.into_iter().collect()
    }

    /// Every session, for the admin API.
    pub fn list_sessions(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionView {
                session_id: id.clone(),
                connected: s.conn.is_some(),
                src_lang: s.src_lang.clone(),
                tgt_lang: s.tgt_lang.clone(),
                paired_node_id: s.paired_node.clone(),
                pending: s.order.pending(),
            })
            .collect();
        v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        v
    }

    // ---------------------------------------------------------------- output

    fn send_client(&mut self, conn: ConnId, msg: ServerToClient) {
        self.out.push(Action::Send { conn, frame: Frame::client(msg) });
    }

    fn send_node(&mut self, conn: ConnId, msg: ServerToNode) {
        self.out.push(Action::Send { conn, frame: Frame::node(msg) });
    }

    fn send_error(&mut self, conn: ConnId, err: ErrorMessage) {
        let frame = match self.conns.get(&conn).map(|c| c.endpoint) {
            Some(Endpoint::Node) => Frame::node(ServerToNode::Error(err)),
            _ => Frame::client(ServerToClient::Error(err)),
        };
        self.out.push(Action::Send { conn, frame });
    }

    fn close(&mut self, conn: ConnId) {
        self.out.push(Action::Close { conn });
    }

    /// `ms` with "equal jitter" (half fixed, half random: between `ms / 2`
    /// and `ms`), so phones refused together do not all come back together.
    fn jittered(&mut self, ms: u64) -> u64 {
        let half = ms / 2;
        half + u64::from(self.rng.next_u32()) % (ms - half + 1)
    }

    /// `prefix` and 16 random bytes in hex: an unguessable id, built in
    /// one allocation (one is made for every job).
    fn random_id(&mut self, prefix: &str) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        let mut id = String::with_capacity(prefix.len() + 32);
        id.push_str(prefix);
        push_hex(&mut id, &bytes);
        id
    }

    // ----------------------------------------------------------- connections

    fn on_closed(&mut self, now: Millis, conn: ConnId) {
        self.forget_lookup(conn);
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(id) = c.session
            && let Some(s) = self.sessions.get_mut(&id)
            && s.conn == Some(conn)
        {
            s.conn = None;
            s.detached_at = Some(now);
            self.timers.arm(now + self.cfg.resume_grace_ms, Timer::Session(id));
        }
        if let Some(id) = c.node
            && self.nodes.get(&id).is_some_and(|n| n.conn == Some(conn))
        {
            self.node_lost(now, &id, "disconnected");
        }
    }

    fn on_handshake_timeout(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn)
            && c.session.is_none()
            && c.node.is_none()
        {
            let err =
                ErrorMessage { code: ErrorCode::InvalidMessage, message: "no session_init or node_register in time".into(), details: None };
            self.send_error(conn, err);
            self.close(conn);
        }
    }

    fn sweep(&mut self, now: Millis) {
        // Busy back-offs end with time, not with an event.
        if self.classes.queued() > 0 {
            let free: Vec<String> = self.nodes.iter().filter(|(_, n)| n.live() && n.has_room(now)).map(|(id, _)| id.clone()).collect();
            for id in free {
                self.pump_node(now, &id);
            }
        }
        self.sweep_canaries(now);
        self.sweep_peers(now);
        self.pairing.sweep(now, self.cfg.pairing_window_ms);
        let forget = self.cfg.node_forget_ms;
        let before = self.nodes.len();
        self.nodes.retain(|_, n| n.live() || n.disconnected_at.is_none_or(|at| now < at + forget) || !n.running.is_empty());
        if self.nodes.len() != before {
            self.node_epoch += 1;
        }
        self.classes.collect_unused();
    }
}

fn add_index(err: &mut ErrorMessage, index: u64) {
    match &mut err.details {
        Some(serde_json::Value::Object(map)) => {
            map.insert("utterance_index".into(), index.into());
        }
        _ => err.details = Some(serde_json::json!({ "utterance_index": index })),
    }
}

/// `bytes` in lower-case hex, appended to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod id_tests {
    use rand::SeedableRng;

    #[test]
    fn ids_are_a_prefix_and_32_hex_digits_and_tokens_64() {
        let mut core = super::Core::new(super::CoreConfig::default(), rand::rngs::StdRng::seed_from_u64(1), 0);
        let (a, b) = (core.random_id("j-"), core.random_id("j-"));
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(id.len() == 34 && id.starts_with("j-"), "{id}");
            assert!(id[2..].bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{id}");
        }
        let mut hex = String::new();
        super::push_hex(&mut hex, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(hex, "000fa5ff");
        let token = core.derive_token("node", &a);
        assert!(token.len() == 64 && token.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{token}");
    }

    #[test]
    fn waits_are_jittered_between_half_and_all_of_them() {
        let mut core = super::Core::new(super::CoreConfig::default(), rand::rngs::StdRng::seed_from_u64(2), 0);
        let waits: Vec<u64> = (0..1_000).map(|_| core.jittered(1_000)).collect();
        assert!(waits.iter().all(|w| (500..=1_000).contains(w)), "{waits:?}");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 300, "phones refused together are told different waits: {}", distinct.len());
        let mean = waits.iter().sum::<u64>() as f64 / waits.len() as f64;
        assert!((700.0..800.0).contains(&mean), "{mean}");
        assert_eq!(core.jittered(0), 0);
        assert!((0..=1).contains(&core.jittered(1)));
    }
}
