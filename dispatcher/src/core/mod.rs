//! The decision core: a deterministic, synchronous state machine that owns
//! sessions, nodes, jobs, pairing codes and reorder buffers.
//!
//! It is fed [`Input`]s with the current time and queues [`Action`]s (frames
//! to send, connections to close). It never reads a clock, touches a socket or
//! draws randomness it was not given: the shell passes time in and an RNG at
//! construction. Timers are deadlines the shell asks for with
//! [`Core::next_deadline`] and fires with [`Core::on_timeout`].
//!
//! Every guarantee of the protocol's extensions lives here; see
//! `ARCHITECTURE.md` for which function carries which.

pub mod order;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use rand::RngCore;
use rand::rngs::StdRng;
use tolk_protocol::common::{ErrorCode, ErrorMessage, Extra, Features};
use tolk_protocol::node::{
    InstalledModel, JobAssign, JobResult, NodeCommand, NodeControl, NodeHeartbeat, NodeRegister, NodeRegisterAck, PairingCode, Pipeline,
    ResourceUsage,
};
use tolk_protocol::session::{
    ClientHeartbeat, ServerHeartbeat, SessionCloseAck, SessionInit, SessionInitAck, TranslationResult, Utterance,
};
use tolk_protocol::models::{Need, missing_stage};
use tolk_protocol::{AudioFormat, ClientToServer, Message, NodeToServer, ProtocolError, ServerToClient, ServerToNode};

use crate::config::CoreConfig;
use crate::metrics::Metrics;
use order::{Accept, OrderBuffer};
use policy::{Candidate, JobInfo, LeastLoaded, Policy};

/// Milliseconds since the Unix epoch, as the shell reads them.
pub type Millis = u64;
/// A connection, numbered by the shell.
pub type ConnId = u64;
/// A serialized text frame, shared rather than copied.
pub type Frame = Arc<str>;

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
    Detect { job_id: String, audio: Frame, format: AudioFormat, sample_rate: u32, features: Features },
}

/// Admin commands (the shell's HTTP API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Drain { node_id: String },
    Shutdown { node_id: String },
    ReloadConfig { node_id: String },
}

/// A node as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub connected: bool,
    pub draining: bool,
    pub accept_public_jobs: bool,
    pub running_jobs: u32,
    pub cpu_percent: Option<f64>,
    pub mem_percent: Option<f64>,
    pub models: Vec<String>,
    pub version: String,
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

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Handshake(ConnId),
    Session(String),
    Node(String),
    Job(String),
    Sweep,
}

#[derive(Debug)]
struct Conn {
    endpoint: Endpoint,
    addr: IpAddr,
    session: Option<String>,
    node: Option<String>,
}

#[derive(Debug)]
struct Session {
    resume_token: String,
    conn: Option<ConnId>,
    src_lang: String,
    tgt_lang: String,
    features: Features,
    paired_node: Option<String>,
    last_node: Option<String>,
    order: OrderBuffer<Frame>,
    /// Job ids of utterances without an outcome.
    jobs: HashSet<String>,
    last_activity: Millis,
    detached_at: Option<Millis>,
}

#[derive(Debug)]
struct Node {
    token: String,
    /// Stable number for policies (cheaper to pass than the id).
    key: u32,
    /// Jobs it may run at once: the node's own limit within ours.
    max_jobs: u32,
    conn: Option<ConnId>,
    version: String,
    models: Vec<InstalledModel>,
    features: Features,
    accept_public: bool,
    draining: bool,
    last_seen: Millis,
    usage: Option<ResourceUsage>,
    running: HashSet<String>,
    disconnected_at: Option<Millis>,
    ms_per_audio_s: Option<f64>,
    recent_failures: u32,
    /// Jobs the node says it runs (its last heartbeat): after a dispatcher
    /// restart it may still be busy with jobs this core never knew.
    reported_running: u32,
    /// After a `NODE_BUSY`, no new job before this time.
    busy_until: Millis,
}

impl Node {
    /// Whether it can take one more job now.
    fn has_room(&self, now: Millis) -> bool {
        let load = (self.running.len() as u32).max(self.reported_running);
        load < self.max_jobs && now >= self.busy_until
    }

    fn is_live(&self) -> bool {
        self.conn.is_some() && !self.draining
    }
}

#[derive(Debug, Clone)]
struct Requirements {
    src_lang: String,
    tgt_lang: String,
    dialect: Option<String>,
    features: Features,
    pipeline: Pipeline,
    paired_node: Option<String>,
}

#[derive(Debug)]
enum JobState {
    /// Waiting for an eligible node with free capacity.
    Queued,
    /// Sent to this node.
    Running { node: String, started: Millis },
    /// The node answered; waiting (boundedly) for the dispatcher's detectors.
    Finished { result: Box<JobResult> },
}

/// The dispatcher's own feature detection for a job.
#[derive(Debug)]
enum Detection {
    NotNeeded,
    Pending(Features),
    Done(Features, Extra),
}

#[derive(Debug)]
struct Job {
    session: String,
    index: u64,
    frame: Frame,
    req: Requirements,
    audio_ms: u64,
    attempts: u32,
    failed_nodes: Vec<String>,
    state: JobState,
    deadline: Millis,
    accepted_at: Millis,
    /// Set when the session went away: the job only frees its node's slot.
    orphaned: bool,
    detection: Detection,
    /// `NODE_BUSY` answers so far (bounded: then it counts as a failure).
    busy_bounces: u32,
}

#[derive(Debug)]
struct PairingEntry {
    node: String,
    expires_at: Millis,
}

#[derive(Debug)]
struct GuessWindow {
    started: Millis,
    failures: u32,
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
    jobs: HashMap<String, Job>,
    queue: VecDeque<String>,
    codes: HashMap<String, PairingEntry>,
    guesses: HashMap<IpAddr, GuessWindow>,
    timers: BTreeSet<(Millis, Timer)>,
    metrics: Metrics,
    out: Vec<Action>,
    next_node_key: u32,
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
    pub codes: usize,
    pub guesses: usize,
    pub timers: usize,
    pub max_session_buffer: usize,
}

const GUESS_TABLE_MAX: usize = 100_000;
/// How long a node that answered `NODE_BUSY` gets no new job.
const BUSY_BACKOFF_MS: Millis = 1_000;
const SWEEP_EVERY_MS: Millis = 1_000;

impl Core {
    /// A core at time `now`, drawing ids, tokens and codes from `rng` (seed it
    /// from the OS in production: it must be a CSPRNG).
    pub fn new(cfg: CoreConfig, rng: StdRng, metrics: Metrics, now: Millis) -> Self {
        let mut core = Self {
            cfg,
            rng,
            policy: Box::new(LeastLoaded),
            supplied: Features::default(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            nodes: BTreeMap::new(),
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            codes: HashMap::new(),
            guesses: HashMap::new(),
            timers: BTreeSet::new(),
            metrics,
            out: Vec::new(),
            next_node_key: 0,
        };
        core.arm(now + SWEEP_EVERY_MS, Timer::Sweep);
        core
    }

    /// Replaces the scheduling policy (e.g. with a wasm plugin).
    pub fn set_policy(&mut self, policy: Box<dyn Policy>) {
        self.policy = policy;
    }

    /// Declares which features the dispatcher supplies itself.
    pub fn set_supplied_features(&mut self, features: SuppliedFeatures) {
        self.supplied = features;
    }

    /// The metrics handle (shared with the shell's `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Takes the actions queued so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// The earliest deadline at which [`Core::on_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Jobs currently running on nodes.
    pub fn running_jobs(&self) -> usize {
        self.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. })).count()
    }

    /// Current collection sizes.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            conns: self.conns.len(),
            sessions: self.sessions.len(),
            nodes: self.nodes.len(),
            jobs: self.jobs.len(),
            queue: self.queue.len(),
            codes: self.codes.len(),
            guesses: self.guesses.len(),
            timers: self.timers.len(),
            max_session_buffer: self.sessions.values().map(|s| s.order.len()).max().unwrap_or(0),
        }
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Opened { conn, endpoint, addr } => {
                self.conns.insert(conn, Conn { endpoint, addr, session: None, node: None });
                self.arm(now + self.cfg.handshake_timeout_ms, Timer::Handshake(conn));
            }
            Input::Session { conn, msg } => self.on_session_msg(now, conn, msg),
            Input::Node { conn, msg } => self.on_node_msg(now, conn, msg),
            Input::Invalid { conn, error } => {
                let endpoint = self.conns.get(&conn).map(|c| c.endpoint);
                self.metrics.bad_frame(endpoint);
                self.send_error(conn, error.to_message());
            }
            Input::Closed { conn } => self.on_closed(now, conn),
            Input::Detected { job_id, extra } => self.on_detected(now, &job_id, extra),
        }
    }

    /// Fires every timer due at `now`.
    pub fn on_timeout(&mut self, now: Millis) {
        while let Some(first) = self.timers.first() {
            if first.0 > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else { break };
            match timer {
                Timer::Handshake(conn) => self.on_handshake_timeout(conn),
                Timer::Session(id) => self.on_session_timer(now, &id),
                Timer::Node(id) => self.on_node_timer(now, &id),
                Timer::Job(id) => self.on_job_timer(now, &id),
                Timer::Sweep => {
                    self.sweep(now);
                    self.arm(now + SWEEP_EVERY_MS, Timer::Sweep);
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
        };
        let node = self.nodes.get_mut(node_id).ok_or_else(|| format!("no node {node_id}"))?;
        let conn = node.conn.ok_or_else(|| format!("node {node_id} is not connected"))?;
        if matches!(command, NodeCommand::Drain | NodeCommand::Shutdown) {
            // Either way it takes no new jobs from now on.
            node.draining = true;
        }
        let msg = ServerToNode::NodeControl(NodeControl { command, reason: Some("operator request".into()) });
        self.send(conn, &msg);
        self.pump_queue(now);
        Ok(())
    }

    /// Every node, for the admin API.
    pub fn list_nodes(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(id, n)| NodeView {
                node_id: id.clone(),
                connected: n.conn.is_some(),
                draining: n.draining,
                accept_public_jobs: n.accept_public,
                running_jobs: n.running.len() as u32,
                cpu_percent: n.usage.as_ref().map(|u| u.cpu_percent),
                mem_percent: n.usage.as_ref().map(|u| u.mem_percent),
                models: n.models.iter().filter(|m| m.enabled != Some(false)).map(|m| m.model_id.clone()).collect(),
                version: n.version.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
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

    fn send(&mut self, conn: ConnId, msg: &impl Message) {
        self.out.push(Action::Send { conn, frame: msg.to_json().into() });
    }

    fn send_error(&mut self, conn: ConnId, err: ErrorMessage) {
        let frame: Frame = match self.conns.get(&conn).map(|c| c.endpoint) {
            Some(Endpoint::Node) => ServerToNode::Error(err).to_json().into(),
            _ => ServerToClient::Error(err).to_json().into(),
        };
        self.out.push(Action::Send { conn, frame });
    }

    fn close(&mut self, conn: ConnId) {
        self.out.push(Action::Close { conn });
    }

    fn arm(&mut self, at: Millis, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn random_hex(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill_bytes(&mut buf);
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    // -------------------------------------------------------------- sessions

    fn on_session_msg(&mut self, now: Millis, conn: ConnId, msg: ClientToServer) {
        let Some(c) = self.conns.get(&conn) else { return };
        let owned = c.session.clone();
        if let ClientToServer::SessionInit(init) = msg {
            return self.on_session_init(now, conn, init);
        }
        let claimed = match &msg {
            ClientToServer::Utterance(u) => &u.session_id,
            ClientToServer::ClientHeartbeat(h) => &h.session_id,
            ClientToServer::SessionClose(c) => &c.session_id,
            ClientToServer::SessionInit(_) => return,
        };
        // Extension 8: a session's messages count only on the connection that owns it.
        if owned.as_deref() != Some(claimed.as_str()) {
            let err =
                ErrorMessage { code: ErrorCode::InvalidSession, message: "session not found on this connection".into(), details: None };
            return self.send_error(conn, err);
        }
        let id = claimed.clone();
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last_activity = now;
        }
        match msg {
            ClientToServer::Utterance(u) => self.on_utterance(now, conn, &id, u),
            ClientToServer::ClientHeartbeat(h) => self.on_client_heartbeat(now, conn, &id, h),
            ClientToServer::SessionClose(_) => {
                self.send(conn, &ServerToClient::SessionCloseAck(SessionCloseAck { session_id: id.clone() }));
                self.drop_session(&id, "closed");
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.session = None;
                }
            }
            ClientToServer::SessionInit(_) => {}
        }
    }

    fn on_session_init(&mut self, now: Millis, conn: ConnId, init: SessionInit) {
        let Some(c) = self.conns.get(&conn) else { return };
        if c.session.is_some() {
            return self.send_error(conn, ProtocolError::invalid_field("type", "this connection already has a session").to_message());
        }
        let addr = c.addr;
        if let (Some(id), Some(token)) = (&init.session_id, &init.resume_token) {
            return self.resume(now, conn, id, token, init.last_utterance_index);
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            let err = ErrorMessage {
                code: ErrorCode::InternalError,
                message: "the server is at capacity; try again later".into(),
                details: None,
            };
            return self.send_error(conn, err);
        }
        let features = init.features.unwrap_or_default();
        if let Some(err) = self.unsupported_features(features) {
            return self.send_error(conn, err);
        }
        let paired_node = match &init.pairing_code {
            Some(code) => match self.redeem_pairing_code(now, addr, code) {
                Ok(node) => Some(node),
                Err(err) => return self.send_error(conn, err),
            },
            None => None,
        };
        let id = format!("s-{}", self.random_hex(16));
        let resume_token = self.random_hex(32);
        self.sessions.insert(
            id.clone(),
            Session {
                resume_token: resume_token.clone(),
                conn: Some(conn),
                src_lang: init.src_lang,
                tgt_lang: init.tgt_lang,
                features,
                paired_node: paired_node.clone(),
                last_node: None,
                order: OrderBuffer::new(self.cfg.max_retained_outcomes, self.cfg.max_retained_bytes),
                jobs: HashSet::new(),
                last_activity: now,
                detached_at: None,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(id.clone());
        }
        self.metrics.sessions_opened.inc();
        self.metrics.sessions_active.set(self.sessions.len() as i64);
        self.arm(now + self.cfg.session_idle_ms, Timer::Session(id.clone()));
        let message = if paired_node.is_some() { "session created, paired" } else { "session created" };
        let ack =
            SessionInitAck { session_id: id, assigned_node_id: paired_node, message: message.into(), resume_token: Some(resume_token) };
        self.send(conn, &ServerToClient::SessionInitAck(ack));
    }

    /// `UNSUPPORTED_FEATURE` when a requested feature is offered by no
    /// registered node and not supplied by the dispatcher.
    fn unsupported_features(&self, features: Features) -> Option<ErrorMessage> {
        let mut offered = self.supplied;
        for n in self.nodes.values() {
            offered.emotion_detection |= n.features.emotion_detection;
            offered.voice_style_detection |= n.features.voice_style_detection;
            offered.speech_rate_detection |= n.features.speech_rate_detection;
        }
        let missing = features.missing_from(offered);
        if missing.is_empty() {
            return None;
        }
        let names: Vec<&str> = [
            (missing.emotion_detection, "emotion_detection"),
            (missing.voice_style_detection, "voice_style_detection"),
            (missing.speech_rate_detection, "speech_rate_detection"),
        ]
        .into_iter()
        .filter_map(|(m, n)| m.then_some(n))
        .collect();
        Some(ErrorMessage {
            code: ErrorCode::UnsupportedFeature,
            message: format!("no node or detector provides {}", names.join(", ")),
            details: Some(serde_json::json!({ "field": "features", "features": names })),
        })
    }

    fn redeem_pairing_code(&mut self, now: Millis, addr: IpAddr, code: &str) -> Result<String, ErrorMessage> {
        let window = self.cfg.pairing_window_ms;
        let w = self.guesses.get(&addr).filter(|w| now < w.started + window);
        if w.is_some_and(|w| w.failures >= self.cfg.pairing_max_failures) {
            self.metrics.pairing_rate_limited.inc();
            return Err(ErrorMessage {
                code: ErrorCode::RateLimited,
                message: "too many wrong pairing codes; wait a minute".into(),
                details: None,
            });
        }
        match self.codes.get(code) {
            Some(e) if e.expires_at > now && self.nodes.contains_key(&e.node) => Ok(e.node.clone()),
            _ => {
                self.metrics.pairing_failures.inc();
                if self.guesses.len() < GUESS_TABLE_MAX || self.guesses.contains_key(&addr) {
                    let entry = self.guesses.entry(addr).or_insert(GuessWindow { started: now, failures: 0 });
                    if now >= entry.started + window {
                        *entry = GuessWindow { started: now, failures: 0 };
                    }
                    entry.failures += 1;
                }
                Err(ErrorMessage {
                    code: ErrorCode::InvalidPairingCode,
                    message: "Pairing code not found or expired".into(),
                    details: None,
                })
            }
        }
    }

    fn resume(&mut self, now: Millis, conn: ConnId, id: &str, token: &str, last: Option<u64>) {
        let valid = self.sessions.get(id).is_some_and(|s| constant_time_eq::constant_time_eq(s.resume_token.as_bytes(), token.as_bytes()));
        if !valid {
            let err = ErrorMessage {
                code: ErrorCode::InvalidSession,
                message: "unknown or expired session; start a new one".into(),
                details: None,
            };
            return self.send_error(conn, err);
        }
        let Some(s) = self.sessions.get_mut(id) else { return };
        let previous = s.conn.replace(conn);
        s.detached_at = None;
        s.last_activity = now;
        let ack = SessionInitAck {
            session_id: id.to_owned(),
            assigned_node_id: s.paired_node.clone(),
            message: "session resumed".into(),
            resume_token: Some(s.resume_token.clone()),
        };
        let resend = s.order.resend_after(last);
        if let Some(old) = previous.filter(|&old| old != conn) {
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
            }
            self.close(old);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(id.to_owned());
        }
        self.metrics.sessions_resumed.inc();
        self.send(conn, &ServerToClient::SessionInitAck(ack));
        for (_, frame) in resend {
            self.out.push(Action::Send { conn, frame });
        }
        self.flush_session(id);
    }

    fn on_client_heartbeat(&mut self, now: Millis, conn: ConnId, id: &str, h: ClientHeartbeat) {
        if let (Some(last), Some(s)) = (h.last_utterance_index, self.sessions.get_mut(id)) {
            s.order.confirm(last);
        }
        self.send(conn, &ServerToClient::ServerHeartbeat(ServerHeartbeat { session_id: id.to_owned(), timestamp: now }));
    }

    fn on_utterance(&mut self, now: Millis, conn: ConnId, id: &str, u: Utterance) {
        let Some(s) = self.sessions.get_mut(id) else { return };
        let index = u.utterance_index;
        // Bounded before acceptance: a refusal takes no slot, so a flood
        // cannot grow the buffer (outcomes held behind a slow index count too).
        if s.order.unsent() >= self.cfg.max_pending_per_session && !s.order.is_pending(index) {
            let msg = format!("more than {} utterances are waiting for results; send it again later", self.cfg.max_pending_per_session);
            let err = ErrorMessage {
                code: ErrorCode::RateLimited,
                message: msg,
                details: Some(serde_json::json!({ "field": "utterance_index", "refused_index": index })),
            };
            return self.send_error(conn, err);
        }
        match s.order.accept(index) {
            Accept::Duplicate => {
                self.metrics.duplicates.inc();
                return;
            }
            Accept::TooLate => {
                let message = format!("utterance_index {index} is at or below one already answered; indexes must increase");
                let details = Some(serde_json::json!({ "field": "utterance_index", "refused_index": index }));
                return self.send_error(conn, ErrorMessage { code: ErrorCode::InvalidMessage, message, details });
            }
            Accept::Accepted => {}
        }
        self.metrics.utterances.inc();
        if !self.cfg.sample_rates.contains(&u.sample_rate) {
            let err = ProtocolError::invalid_field("sample_rate", format!("sample_rate must be one of {:?}", self.cfg.sample_rates));
            let mut msg = err.to_message();
            add_index(&mut msg, index);
            return self.finish(id, index, Outcome::Error(msg));
        }
        let features = u.features.unwrap_or(s.features);
        if let Some(mut err) = self.unsupported_features(features) {
            add_index(&mut err, index);
            return self.finish(id, index, Outcome::Error(err));
        }
        if self.jobs.len() >= self.cfg.max_queued_jobs + self.cfg.max_nodes * self.cfg.max_jobs_per_node as usize {
            let err = ErrorMessage::for_utterance(ErrorCode::NodeUnavailable, "the server is at capacity", index);
            return self.finish(id, index, Outcome::Error(err));
        }
        let detect = Features {
            emotion_detection: features.emotion_detection && self.supplied.emotion_detection,
            voice_style_detection: features.voice_style_detection && self.supplied.voice_style_detection,
            speech_rate_detection: features.speech_rate_detection && self.supplied.speech_rate_detection,
        };
        // Only when a detector will read it is the audio copied.
        let detect_audio: Option<Frame> = (!detect.is_empty()).then(|| u.audio.as_str().into());
        let (format, rate) = (u.audio_format, u.sample_rate);
        let Some(s) = self.sessions.get_mut(id) else { return };
        let pipeline = Pipeline { use_asr: true, use_nmt: !u.src_lang.eq_ignore_ascii_case(&u.tgt_lang), use_tts: true };
        let audio_ms = estimate_audio_ms(&u);
        let deadline_ms = self.cfg.job_timeout_base_ms + audio_ms * self.cfg.job_timeout_per_audio_s_ms / 1000;
        let job_id = format!("j-{}", {
            let mut b = [0u8; 16];
            self.rng.fill_bytes(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        });
        let req = Requirements {
            src_lang: u.src_lang.clone(),
            tgt_lang: u.tgt_lang.clone(),
            dialect: u.dialect.clone(),
            features,
            pipeline,
            paired_node: s.paired_node.clone(),
        };
        // The frame is built once, moving the client's audio string into it
        // unchanged (extension 9); retries resend the same frame.
        let assign = ServerToNode::JobAssign(JobAssign {
            job_id: job_id.clone(),
            session_id: id.to_owned(),
            utterance_index: index,
            src_lang: u.src_lang,
            tgt_lang: u.tgt_lang,
            dialect: u.dialect,
            features,
            pipeline,
            audio: u.audio,
            audio_format: u.audio_format,
            sample_rate: u.sample_rate,
            deadline_ms: Some(deadline_ms),
        });
        s.jobs.insert(job_id.clone());
        let job = Job {
            session: id.to_owned(),
            index,
            frame: assign.to_json().into(),
            req,
            audio_ms,
            attempts: 0,
            failed_nodes: Vec::new(),
            state: JobState::Queued,
            deadline: now + self.cfg.admission_wait_ms,
            accepted_at: now,
            orphaned: false,
            detection: if detect.is_empty() { Detection::NotNeeded } else { Detection::Pending(detect) },
            busy_bounces: 0,
        };
        self.jobs.insert(job_id.clone(), job);
        if let Some(audio) = detect_audio {
            self.out.push(Action::Detect { job_id: job_id.clone(), audio, format, sample_rate: rate, features: detect });
        }
        self.arm(now + self.cfg.admission_wait_ms, Timer::Job(job_id.clone()));
        if !self.try_assign(now, &job_id) {
            self.queue.push_back(job_id);
            self.metrics.queue_depth.set(self.queue.len() as i64);
        }
    }

    /// Records the outcome of `index` and sends whatever is now in order.
    fn finish(&mut self, session: &str, index: u64, outcome: Outcome) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        let frame: Frame = match outcome {
            Outcome::Result(r) => {
                self.metrics.outcomes.get_or_create(&vec![("outcome".to_owned(), "result".to_owned())]).inc();
                ServerToClient::TranslationResult(*r).to_json().into()
            }
            Outcome::Error(e) => {
                self.metrics.outcomes.get_or_create(&vec![("outcome".to_owned(), e.code.as_str().to_owned())]).inc();
                ServerToClient::Error(e).to_json().into()
            }
        };
        if s.order.complete(index, frame) {
            self.flush_session(session);
        }
    }

    fn flush_session(&mut self, session: &str) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        // A detached session keeps its outcomes until a resume.
        let Some(conn) = s.conn else { return };
        while let Some((_, frame)) = s.order.pop_ready() {
            self.out.push(Action::Send { conn, frame });
        }
    }

    fn drop_session(&mut self, id: &str, why: &str) {
        let Some(s) = self.sessions.remove(id) else { return };
        for job_id in s.jobs {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                match job.state {
                    JobState::Queued | JobState::Finished { .. } => {
                        self.jobs.remove(&job_id);
                    }
                    // The node is still busy with it: keep the job to free the slot later.
                    JobState::Running { .. } => job.orphaned = true,
                }
            }
        }
        self.queue.retain(|j| self.jobs.contains_key(j));
        self.metrics.queue_depth.set(self.queue.len() as i64);
        self.metrics.sessions_active.set(self.sessions.len() as i64);
        tracing::debug!(session = id, why, "session dropped");
    }

    fn on_session_timer(&mut self, now: Millis, id: &str) {
        let Some(s) = self.sessions.get(id) else { return };
        let due = match s.detached_at {
            Some(at) => at + self.cfg.resume_grace_ms,
            // Work in flight keeps a session alive.
            None if !s.jobs.is_empty() => now + self.cfg.session_idle_ms,
            None => s.last_activity + self.cfg.session_idle_ms,
        };
        if due > now {
            return self.arm(due, Timer::Session(id.to_owned()));
        }
        if let Some(conn) = s.conn {
            let err = ErrorMessage { code: ErrorCode::InvalidSession, message: "session expired after inactivity".into(), details: None };
            self.send_error(conn, err);
            self.close(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        self.metrics.sessions_expired.inc();
        self.drop_session(id, "expired");
    }

    // ----------------------------------------------------------------- nodes

    fn on_node_msg(&mut self, now: Millis, conn: ConnId, msg: NodeToServer) {
        let Some(c) = self.conns.get(&conn) else { return };
        let registered = c.node.clone();
        if let NodeToServer::NodeRegister(reg) = msg {
            return self.on_node_register(now, conn, reg);
        }
        let Some(node_id) = registered else {
            let err = ErrorMessage { code: ErrorCode::Unauthorized, message: "send node_register first".into(), details: None };
            return self.send_error(conn, err);
        };
        let claimed = match &msg {
            NodeToServer::NodeHeartbeat(h) => &h.node_id,
            NodeToServer::JobResult(r) => &r.node_id,
            NodeToServer::NodeError(e) => &e.node_id,
            NodeToServer::PairingCodeRequest(p) => &p.node_id,
            NodeToServer::NodeRegister(_) => return,
        };
        if *claimed != node_id {
            return self.send_error(
                conn,
                ProtocolError::invalid_field("node_id", "node_id is not the one this connection registered").to_message(),
            );
        }
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.last_seen = now;
        }
        match msg {
            NodeToServer::NodeHeartbeat(h) => self.on_node_heartbeat(now, &node_id, h),
            NodeToServer::JobResult(r) => self.on_job_result(now, conn, &node_id, r),
            NodeToServer::NodeError(e) => {
                self.metrics.node_errors.inc();
                tracing::warn!(node = %node_id, code = %e.code, message = %e.message, "node error");
            }
            NodeToServer::PairingCodeRequest(_) => self.issue_pairing_code(now, conn, &node_id),
            NodeToServer::NodeRegister(_) => {}
        }
    }

    fn on_node_register(&mut self, now: Millis, conn: ConnId, reg: NodeRegister) {
        let unauthorized = |core: &mut Self, message: &str| {
            core.metrics.unauthorized.inc();
            core.send_error(conn, ErrorMessage { code: ErrorCode::Unauthorized, message: message.into(), details: None });
            core.close(conn);
        };
        if self.conns.get(&conn).is_some_and(|c| c.node.is_some()) {
            return self.send_error(conn, ProtocolError::invalid_field("type", "this connection is already registered").to_message());
        }
        if let Some(secret) = &self.cfg.node_auth_token {
            let ok = reg.auth_token.as_deref().is_some_and(|t| constant_time_eq::constant_time_eq(t.as_bytes(), secret.as_bytes()));
            if !ok {
                return unauthorized(self, "auth_token missing or wrong");
            }
        }
        let (node_id, token) = match reg.claimed_node_id() {
            Some(id) => {
                let ok = match (self.nodes.get(id), &reg.node_token) {
                    (Some(n), Some(t)) => constant_time_eq::constant_time_eq(n.token.as_bytes(), t.as_bytes()),
                    _ => false,
                };
                if !ok {
                    return unauthorized(self, "node_token does not match node_id; register without node_id to get a new identity");
                }
                let id = id.to_owned();
                // The same node on a new connection: the old one is stale.
                if let Some(old) = self.nodes.get(&id).and_then(|n| n.conn).filter(|&old| old != conn) {
                    self.node_lost(now, &id, "replaced by a new connection");
                    if let Some(c) = self.conns.get_mut(&old) {
                        c.node = None;
                    }
                    self.close(old);
                }
                let token = self.nodes.get(&id).map(|n| n.token.clone()).unwrap_or_default();
                (id, token)
            }
            None => {
                if self.nodes.len() >= self.cfg.max_nodes {
                    let err = ErrorMessage {
                        code: ErrorCode::InternalError,
                        message: "the server is at capacity for nodes".into(),
                        details: None,
                    };
                    self.send_error(conn, err);
                    return self.close(conn);
                }
                (format!("n-{}", self.random_hex(16)), self.random_hex(32))
            }
        };
        let previous = self.nodes.remove(&node_id);
        let key = previous.as_ref().map_or_else(
            || {
                self.next_node_key = self.next_node_key.wrapping_add(1);
                self.next_node_key
            },
            |n| n.key,
        );
        let running = previous.map(|n| n.running).unwrap_or_default();
        let max_jobs = reg.max_jobs.map_or(self.cfg.max_jobs_per_node, |m| m.min(self.cfg.max_jobs_per_node));
        self.nodes.insert(
            node_id.clone(),
            Node {
                token: token.clone(),
                key,
                max_jobs,
                conn: Some(conn),
                version: reg.version,
                models: reg.installed_models,
                features: reg.features_supported,
                accept_public: reg.accept_public_jobs,
                draining: false,
                last_seen: now,
                usage: None,
                running,
                disconnected_at: None,
                ms_per_audio_s: None,
                recent_failures: 0,
                reported_running: 0,
                busy_until: 0,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.node = Some(node_id.clone());
        }
        self.metrics.nodes_live.set(self.nodes.values().filter(|n| n.conn.is_some()).count() as i64);
        self.arm(now + self.cfg.node_heartbeat_timeout_ms, Timer::Node(node_id.clone()));
        let ack = NodeRegisterAck { node_id, message: "registered".into(), node_token: Some(token) };
        self.send(conn, &ServerToNode::NodeRegisterAck(ack));
        self.pump_queue(now);
    }

    fn on_node_heartbeat(&mut self, now: Millis, node_id: &str, h: NodeHeartbeat) {
        let Some(n) = self.nodes.get_mut(node_id) else { return };
        let freed = h.resource_usage.running_jobs < n.reported_running;
        n.reported_running = h.resource_usage.running_jobs;
        n.usage = Some(h.resource_usage);
        let models_changed = h.installed_models.is_some();
        if let Some(updates) = h.installed_models {
            for u in &updates {
                // Additions are bounded like a registration's list.
                if n.models.len() < tolk_protocol::validate::MAX_MODELS || n.models.iter().any(|m| m.model_id == u.model_id) {
                    u.apply(&mut n.models);
                }
            }
        }
        // New models or freed slots may let queued jobs run.
        if (models_changed || freed) && !self.queue.is_empty() {
            self.pump_queue(now);
        }
    }

    fn issue_pairing_code(&mut self, now: Millis, conn: ConnId, node_id: &str) {
        // One live code per node: a new request replaces the old one.
        self.codes.retain(|_, e| e.node != node_id);
        // Live codes are at most one per node, far fewer than 10^6, so a
        // free code is found in a few draws; the bound only rules out a spin.
        let code = (0..1_000).map(|_| format!("{:06}", self.rng.next_u32() % 1_000_000)).find(|c| !self.codes.contains_key(c));
        let Some(code) = code else {
            let err =
                ErrorMessage { code: ErrorCode::InternalError, message: "no pairing code available; try again".into(), details: None };
            return self.send_error(conn, err);
        };
        let expires_at = now + self.cfg.pairing_code_ttl_ms;
        self.codes.insert(code.clone(), PairingEntry { node: node_id.to_owned(), expires_at });
        self.send(conn, &ServerToNode::PairingCode(PairingCode { node_id: node_id.to_owned(), code, expires_at }));
    }

    fn on_node_timer(&mut self, now: Millis, id: &str) {
        let Some(n) = self.nodes.get(id) else { return };
        if n.conn.is_none() {
            return;
        }
        let due = n.last_seen + self.cfg.node_heartbeat_timeout_ms;
        if due > now {
            return self.arm(due, Timer::Node(id.to_owned()));
        }
        tracing::warn!(node = id, "node missed its heartbeats: declared dead");
        self.metrics.nodes_dead.inc();
        let conn = n.conn;
        self.node_lost(now, id, "missed heartbeats");
        if let Some(conn) = conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.node = None;
            }
            self.close(conn);
        }
    }

    /// The node's connection is gone: move its jobs.
    fn node_lost(&mut self, now: Millis, id: &str, why: &str) {
        let Some(n) = self.nodes.get_mut(id) else { return };
        n.conn = None;
        n.disconnected_at = Some(now);
        n.recent_failures += 1;
        let jobs: Vec<String> = n.running.drain().collect();
        self.metrics.nodes_live.set(self.nodes.values().filter(|n| n.conn.is_some()).count() as i64);
        for job_id in jobs {
            self.job_failed(now, &job_id, id, FailKind::Retry(format!("node {why}")));
        }
        self.pump_queue(now);
    }

    // ------------------------------------------------------------------ jobs

    fn candidates_for(&self, now: Millis, job: &Job) -> (Vec<String>, bool) {
        let mut free = Vec::new();
        let mut any_eligible = false;
        for (id, n) in &self.nodes {
            if !self.eligible(n, id, &job.req) || job.failed_nodes.contains(id) {
                continue;
            }
            any_eligible = true;
            if n.has_room(now) {
                free.push(id.clone());
            }
        }
        (free, any_eligible)
    }

    /// The host's eligibility rule (a policy never overrides it).
    fn eligible(&self, n: &Node, id: &str, req: &Requirements) -> bool {
        if !n.is_live() {
            return false;
        }
        match &req.paired_node {
            Some(p) if p != id => return false,
            None if !n.accept_public => return false,
            _ => {}
        }
        let need = Need {
            pipeline: req.pipeline,
            src_lang: &req.src_lang,
            tgt_lang: &req.tgt_lang,
            dialect: req.dialect.as_deref(),
        };
        if missing_stage(&n.models, &need).is_some() {
            return false;
        }
        // A feature the node lacks must be one the dispatcher supplies.
        req.features.missing_from(n.features).missing_from(self.supplied).is_empty()
    }

    /// Tries to start a queued job; false when no eligible node has room.
    fn try_assign(&mut self, now: Millis, job_id: &str) -> bool {
        let Some(job) = self.jobs.get(job_id) else { return true };
        if !matches!(job.state, JobState::Queued) {
            return true;
        }
        let (free, _) = self.candidates_for(now, job);
        if free.is_empty() {
            return false;
        }
        let last = self.sessions.get(&job.session).and_then(|s| s.last_node.clone());
        let chosen = {
            let candidates: Vec<Candidate<'_>> = free
                .iter()
                .filter_map(|id| {
                    let n = self.nodes.get(id)?;
                    Some(Candidate {
                        node_id: id,
                        node_key: n.key,
                        running: n.running.len() as u32,
                        capacity: n.max_jobs,
                        cpu_percent: n.usage.as_ref().map_or(0.0, |u| u.cpu_percent),
                        is_last_node: last.as_deref() == Some(id.as_str()),
                        ms_per_audio_s: n.ms_per_audio_s,
                        recent_failures: n.recent_failures,
                    })
                })
                .collect();
            let info = JobInfo { session_id: &job.session, utterance_index: job.index, audio_ms: job.audio_ms, attempt: job.attempts };
            let picked = self.policy.pick(&info, &candidates).filter(|&i| i < candidates.len());
            let picked = match picked {
                Some(i) => Some(i),
                None => {
                    self.metrics.policy_fallbacks.inc();
                    LeastLoaded::choose(&candidates)
                }
            };
            picked.map(|i| candidates[i].node_id.to_owned())
        };
        let Some(node_id) = chosen else { return false };
        let Some(conn) = self.nodes.get(&node_id).and_then(|n| n.conn) else { return false };
        let Some(job) = self.jobs.get_mut(job_id) else { return true };
        let deadline_ms = self.cfg.job_timeout_base_ms + job.audio_ms * self.cfg.job_timeout_per_audio_s_ms / 1000;
        job.state = JobState::Running { node: node_id.clone(), started: now };
        job.attempts += 1;
        job.deadline = now + deadline_ms;
        let frame = job.frame.clone();
        let session = job.session.clone();
        if job.attempts > 1 {
            self.metrics.retries.inc();
        }
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.running.insert(job_id.to_owned());
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_node = Some(node_id);
        }
        self.metrics.jobs_assigned.inc();
        self.arm(now + deadline_ms, Timer::Job(job_id.to_owned()));
        self.out.push(Action::Send { conn, frame });
        true
    }

    /// Offers queued jobs to nodes, oldest first.
    fn pump_queue(&mut self, now: Millis) {
        let mut still = VecDeque::with_capacity(self.queue.len());
        while let Some(job_id) = self.queue.pop_front() {
            if self.jobs.contains_key(&job_id) && !self.try_assign(now, &job_id) {
                still.push_back(job_id);
            }
        }
        self.queue = still;
        self.metrics.queue_depth.set(self.queue.len() as i64);
    }

    fn on_job_result(&mut self, now: Millis, conn: ConnId, node_id: &str, r: JobResult) {
        let holds = self.jobs.get(&r.job_id).is_some_and(|j| {
            matches!(&j.state, JobState::Running { node, .. } if node == node_id)
                && j.session == r.session_id
                && j.index == r.utterance_index
        });
        if !holds {
            // A late answer for a job that was moved, or a forged one.
            self.metrics.rejected_results.inc();
            let err = ProtocolError::invalid_field("job_id", "this node holds no such job").to_message();
            return self.send_error(conn, err);
        }
        let Some(job) = self.jobs.get(&r.job_id) else { return };
        let started = match job.state {
            JobState::Running { started, .. } => started,
            JobState::Queued | JobState::Finished { .. } => now,
        };
        let busy_answer = r.error.as_ref().is_some_and(|e| e.code == tolk_protocol::JobErrorCode::NodeBusy);
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(&r.job_id);
            if !busy_answer {
                // One job fewer on the node than its last heartbeat said.
                n.reported_running = n.reported_running.saturating_sub(1);
            }
        }
        if r.success {
            self.metrics.job_seconds.observe((now.saturating_sub(started)) as f64 / 1000.0);
            let audio_ms = job.audio_ms;
            if let Some(n) = self.nodes.get_mut(node_id) {
                if audio_ms > 0 {
                    let sample = (now.saturating_sub(started)) as f64 * 1000.0 / audio_ms as f64;
                    n.ms_per_audio_s = Some(n.ms_per_audio_s.map_or(sample, |old| 0.8 * old + 0.2 * sample));
                }
                n.recent_failures = n.recent_failures.saturating_sub(1);
            }
            let job_id = r.job_id.clone();
            let waits_for_detection = self.jobs.get(&job_id).is_some_and(|j| matches!(j.detection, Detection::Pending(_)) && !j.orphaned);
            if waits_for_detection {
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.state = JobState::Finished { result: Box::new(r) };
                    job.deadline = now + self.cfg.detect_wait_ms;
                    self.arm(now + self.cfg.detect_wait_ms, Timer::Job(job_id));
                }
            } else if let Some(job) = self.jobs.remove(&job_id) {
                self.job_done(now, &job_id, job, r);
            }
        } else {
            let code = r.error.as_ref().map(|e| e.code.clone());
            let message = r.error.map(|e| e.message).unwrap_or_default();
            let kind = match code {
                Some(tolk_protocol::JobErrorCode::NodeBusy) => FailKind::Busy(message),
                Some(c) if !c.is_retryable() => FailKind::BadAudio(message),
                Some(c) => FailKind::Retry(format!("{c}: {message}")),
                None => FailKind::Retry(message),
            };
            if let Some(n) = self.nodes.get_mut(node_id) {
                n.recent_failures = n.recent_failures.saturating_add(1).min(100);
            }
            self.job_failed(now, &r.job_id, node_id, kind);
        }
        self.pump_queue(now);
    }

    fn on_detected(&mut self, now: Millis, job_id: &str, extra: Extra) {
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        let Detection::Pending(features) = job.detection else { return };
        job.detection = Detection::Done(features, extra);
        if matches!(job.state, JobState::Finished { .. }) {
            self.complete_finished(now, job_id);
        }
    }

    /// Completes a job whose node result was waiting for detection (done, or
    /// given up on: a detector never costs a result).
    fn complete_finished(&mut self, now: Millis, job_id: &str) {
        let Some(mut job) = self.jobs.remove(job_id) else { return };
        match std::mem::replace(&mut job.state, JobState::Queued) {
            JobState::Finished { result } => self.job_done(now, job_id, job, *result),
            other => {
                job.state = other;
                self.jobs.insert(job_id.to_owned(), job);
            }
        }
    }

    fn job_done(&mut self, now: Millis, job_id: &str, job: Job, r: JobResult) {
        if let Some(s) = self.sessions.get_mut(&job.session) {
            s.jobs.remove(job_id);
        }
        if job.orphaned {
            return;
        }
        self.metrics.utterance_seconds.observe((now.saturating_sub(job.accepted_at)) as f64 / 1000.0);
        let mut extra = r.extra.unwrap_or_default();
        if let Detection::Done(features, found) = job.detection {
            // The node's own answer wins; the dispatcher fills what it left empty.
            if features.emotion_detection && extra.emotion.is_none() {
                extra.emotion = found.emotion;
            }
            if features.speech_rate_detection && extra.speech_rate.is_none() {
                extra.speech_rate = found.speech_rate;
            }
            if features.voice_style_detection && extra.voice_style.is_none() {
                extra.voice_style = found.voice_style;
            }
        }
        let result = TranslationResult {
            session_id: job.session.clone(),
            utterance_index: job.index,
            job_id: job_id.to_owned(),
            text_asr: r.text_asr.unwrap_or_default(),
            text_translated: r.text_translated.unwrap_or_default(),
            tts_audio: r.tts_audio,
            tts_format: r.tts_format,
            tts_sample_rate: r.tts_sample_rate,
            extra: Some(extra),
        };
        self.finish(&job.session, job.index, Outcome::Result(Box::new(result)));
    }

    /// A job failed on `node_id`: retry on another node or give up.
    fn job_failed(&mut self, now: Millis, job_id: &str, node_id: &str, kind: FailKind) {
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(job_id);
        }
        if job.orphaned {
            self.jobs.remove(job_id);
            return;
        }
        const MAX_BUSY_BOUNCES: u32 = 20;
        let busy = matches!(kind, FailKind::Busy(_)) && job.busy_bounces < MAX_BUSY_BOUNCES;
        if busy {
            // Not the node's fault: it keeps its turn and the job its attempt.
            job.busy_bounces += 1;
            job.attempts = job.attempts.saturating_sub(1);
            if let Some(n) = self.nodes.get_mut(node_id) {
                n.busy_until = now + BUSY_BACKOFF_MS;
            }
        } else {
            job.failed_nodes.push(node_id.to_owned());
        }
        let give_up = match &kind {
            FailKind::BadAudio(m) => {
                let mut e = ProtocolError::invalid_field("audio", format!("the audio could not be processed: {m}")).to_message();
                add_index(&mut e, job.index);
                Some(e)
            }
            FailKind::Busy(_) if busy => None,
            FailKind::Retry(_) | FailKind::Busy(_) if job.attempts >= self.cfg.max_attempts => Some(ErrorMessage::for_utterance(
                ErrorCode::NodeUnavailable,
                format!("no node could process the utterance after {} attempts", job.attempts),
                job.index,
            )),
            FailKind::Retry(_) | FailKind::Busy(_) => None,
        };
        let reason = match &kind {
            FailKind::Retry(m) | FailKind::BadAudio(m) | FailKind::Busy(m) => m.as_str(),
        };
        tracing::debug!(job = job_id, node = node_id, reason, "job failed");
        match give_up {
            Some(err) => {
                let (session, index) = (job.session.clone(), job.index);
                self.jobs.remove(job_id);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.jobs.remove(job_id);
                }
                self.finish(&session, index, Outcome::Error(err));
            }
            None => {
                job.state = JobState::Queued;
                job.deadline = now + self.cfg.admission_wait_ms;
                self.arm(now + self.cfg.admission_wait_ms, Timer::Job(job_id.to_owned()));
                if !self.try_assign(now, job_id) {
                    self.queue.push_back(job_id.to_owned());
                }
            }
        }
    }

    fn on_job_timer(&mut self, now: Millis, id: &str) {
        let Some(job) = self.jobs.get(id) else { return };
        if job.deadline > now {
            return; // A newer timer covers this job.
        }
        match &job.state {
            JobState::Finished { .. } => {
                self.metrics.detection_timeouts.inc();
                self.complete_finished(now, id);
            }
            JobState::Running { node, .. } => {
                let node = node.clone();
                self.metrics.job_timeouts.inc();
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.recent_failures = n.recent_failures.saturating_add(1).min(100);
                }
                self.job_failed(now, id, &node, FailKind::Retry("deadline passed".into()));
            }
            JobState::Queued => {
                let (session, index) = (job.session.clone(), job.index);
                let (_, any) = self.candidates_for(now, job);
                let message = if job.req.paired_node.is_some() && !any {
                    "the paired node is not available".to_owned()
                } else if any {
                    "every eligible node stayed busy".to_owned()
                } else if !job.failed_nodes.is_empty() {
                    format!("every node that serves {} → {} failed this utterance", job.req.src_lang, job.req.tgt_lang)
                } else {
                    format!("no node serves {} → {}", job.req.src_lang, job.req.tgt_lang)
                };
                self.jobs.remove(id);
                self.queue.retain(|j| j != id);
                self.metrics.queue_depth.set(self.queue.len() as i64);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.jobs.remove(id);
                }
                self.finish(&session, index, Outcome::Error(ErrorMessage::for_utterance(ErrorCode::NodeUnavailable, message, index)));
            }
        }
    }

    // ----------------------------------------------------------- connections

    fn on_closed(&mut self, now: Millis, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(id) = c.session
            && let Some(s) = self.sessions.get_mut(&id)
            && s.conn == Some(conn)
        {
            s.conn = None;
            s.detached_at = Some(now);
            self.arm(now + self.cfg.resume_grace_ms, Timer::Session(id));
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
        if !self.queue.is_empty() {
            // Busy back-offs end with time, not with an event.
            self.pump_queue(now);
        }
        self.codes.retain(|_, e| e.expires_at > now);
        let window = self.cfg.pairing_window_ms;
        self.guesses.retain(|_, w| now < w.started + window);
        let forget = self.cfg.node_forget_ms;
        self.nodes.retain(|_, n| n.conn.is_some() || n.disconnected_at.is_none_or(|at| now < at + forget) || !n.running.is_empty());
    }
}

#[derive(Debug)]
enum Outcome {
    Result(Box<TranslationResult>),
    Error(ErrorMessage),
}

#[derive(Debug)]
enum FailKind {
    /// Another node may succeed.
    Retry(String),
    /// The audio itself is bad: no node will do better.
    BadAudio(String),
    /// The node is at capacity (e.g. still finishing jobs this core never
    /// knew): not a failure of the node; try again, here or elsewhere.
    Busy(String),
}

fn add_index(err: &mut ErrorMessage, index: u64) {
    match &mut err.details {
        Some(serde_json::Value::Object(map)) => {
            map.insert("utterance_index".into(), index.into());
        }
        _ => err.details = Some(serde_json::json!({ "utterance_index": index })),
    }
}

/// Audio length from the base64 length alone (no decoding): exact for
/// pcm16, close for wav, unknown (0) for opus.
fn estimate_audio_ms(u: &Utterance) -> u64 {
    let bytes = (u.audio.len() as u64 * 3 / 4).saturating_sub(if u.audio_format == AudioFormat::Wav { 44 } else { 0 });
    match u.audio_format {
        AudioFormat::Pcm16 | AudioFormat::Wav => bytes / 2 * 1000 / u64::from(u.sample_rate.max(1)),
        AudioFormat::Opus => 0,
    }
}
