//! The node's decision core: a synchronous state machine with no I/O and no
//! clock. It is fed [`Event`]s with the current time (milliseconds on a
//! monotonic clock) and queues [`Action`]s for the shell to carry out:
//! frames to send, jobs to start or abandon, an identity to save, when to
//! reconnect. Every rule of the node lives here, tested without sockets.
//!
//! Rules:
//! - **Registration.** On connect it registers with the stored identity
//!   (`node_id` + `node_token`) if any. The ack's identity is saved. An
//!   `UNAUTHORIZED` answer to a stored identity means the dispatcher no
//!   longer knows it (e.g. it restarted): the identity is forgotten and the
//!   next connection registers fresh, at once.
//! - **Capacity.** At most `max_jobs` jobs hold a slot. A job beyond that, or
//!   while draining or shutting down, fails at once with `NODE_BUSY`
//!   (retryable: the dispatcher moves it); a job needing a model the node
//!   lacks fails at once with `MODEL_NOT_AVAILABLE`.
//! - **Deadlines.** A job still running at `deadline_ms` after its arrival
//!   is reported `TIMEOUT` and abandoned. Its engine call cannot be stopped,
//!   so it keeps its slot until the call returns (the result is dropped).
//! - **Lost connection.** Running jobs are abandoned (the dispatcher moves
//!   them) and the node reconnects with exponential back-off and jitter.
//! - **Control.** `drain`: finish running jobs, refuse new ones (until the
//!   next registration, which the dispatcher sees as a fresh, undrained
//!   node). `shutdown` (or a local signal): the same, then exit when no
//!   reportable job is left. `reload_config`: the shell reloads the engines
//!   and feeds [`Event::ModelsChanged`]; the next heartbeat, sent at once,
//!   carries the new `installed_models`. Engines that cannot start are
//!   reported as `node_error`.

use std::collections::{BTreeMap, BTreeSet};

use tolk_protocol::node::{
    Hardware, InstalledModel, JobAssign, JobError, JobResult, ModelUpdate, NodeCommand, NodeError, NodeHeartbeat, NodePlatform,
    NodeRegister, PairingCodeRequest, ResourceUsage,
};
use tolk_protocol::{ErrorCode, Features, JobErrorCode, NodeToServer, ServerToNode, audio};

use crate::identity::Identity;
use crate::machine::Load;
use crate::models;
use crate::pipeline::Outcome;

/// Milliseconds on the shell's monotonic clock.
pub type Millis = u64;

/// What the core needs to know about this node.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub version: String,
    pub platform: NodePlatform,
    pub hardware: Hardware,
    pub features: Features,
    pub accept_public_jobs: bool,
    pub auth_token: Option<String>,
    pub max_jobs: usize,
    pub heartbeat_ms: u64,
    pub default_deadline_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Ask for a pairing code as soon as registered.
    pub request_pairing_code: bool,
    /// Seed of the back-off jitter.
    pub seed: u64,
}

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// The WebSocket to the dispatcher is open.
    Connected,
    /// A connection attempt failed, or the open connection ended.
    Disconnected,
    /// A valid frame from the dispatcher.
    Frame(ServerToNode),
    /// A job the shell started has finished.
    JobFinished { job_id: String, outcome: Outcome },
    /// Time passed (the shell calls at [`NodeCore::next_wakeup`]): deadlines, heartbeats.
    Tick { unix_ms: u64, load: Load },
    /// The engines were reloaded: the new model list, and the engines that failed to start.
    ModelsChanged { models: Vec<InstalledModel>, failures: Vec<(String, String)> },
    /// The configuration could not be re-read; the old engines stay.
    ReloadFailed(String),
    /// An engine in child processes failed (its jobs are answered by the
    /// pipeline) or runs again: its models are switched off for the
    /// dispatcher (`node_error` `INFERENCE_BACKEND_ERROR` with
    /// `details.model_id`) and on again (a heartbeat's model updates).
    EngineHealth { model_ids: Vec<String>, notice: crate::engine::process::Notice },
    /// The owner asked for a pairing code.
    PairingRequested,
    /// A local shutdown request (signal).
    Shutdown,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(NodeToServer),
    /// Open a connection after this delay (no connection is open).
    Connect {
        after_ms: u64,
    },
    /// Close the open connection.
    Close,
    /// Run this job's pipeline.
    StartJob(JobAssign),
    /// Stop this job at its next stage boundary; its result will be dropped.
    AbandonJob(String),
    SaveIdentity(Identity),
    ForgetIdentity,
    /// Re-read the configuration and reload the engines.
    ReloadConfig,
    /// Show the owner a pairing code.
    ShowPairingCode {
        code: String,
        expires_at: u64,
    },
    /// Stop the node.
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Waiting to connect (a `Connect` action is outstanding).
    Down,
    /// Connected, `node_register` sent.
    Registering,
    /// Registered as this id.
    Up(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Draining,
    ShuttingDown,
}

#[derive(Debug, Clone, Default)]
struct EngineTrouble {
    /// `Some(text)` while restarting: in how long and how often in a row.
    restarting: Option<String>,
    failures: u64,
    last: String,
}

impl EngineTrouble {
    fn state(&self) -> String {
        match &self.restarting {
            Some(r) => format!("{r}: {}", self.last),
            None => format!("running (failed {}× since the node started; last: {})", self.failures, self.last),
        }
    }
}

#[derive(Debug, Clone)]
struct Running {
    session_id: String,
    utterance_index: u64,
    deadline: Millis,
}

/// The node's state machine.
#[derive(Debug)]
pub struct NodeCore {
    cfg: CoreConfig,
    identity: Option<Identity>,
    models: Vec<InstalledModel>,
    link: Link,
    mode: Mode,
    /// Failed connection attempts since the last registration.
    attempts: u32,
    jobs: BTreeMap<String, Running>,
    /// Jobs reported or orphaned whose engine call has not returned yet.
    abandoned: BTreeSet<String>,
    next_heartbeat: Option<Millis>,
    models_changed: bool,
    /// Model ids the dispatcher has heard of (registered or added since): a
    /// heartbeat's updates disable those that are gone.
    reported_models: Vec<String>,
    /// For the owner's status view: the live pairing code, jobs answered,
    /// and the newest errors.
    pairing: Option<(String, u64)>,
    jobs_done: u64,
    jobs_failed: u64,
    recent_errors: std::collections::VecDeque<String>,
    pending_errors: Vec<NodeError>,
    /// Engines that failed since the node started, by model id: restarting
    /// or not, failures in all, the last reason (what the status shows).
    engine_trouble: BTreeMap<String, EngineTrouble>,
    want_pairing: bool,
    rng: u64,
    out: Vec<Action>,
}

impl NodeCore {
    /// A core that will connect at once. `startup_failures` are engines that
    /// could not start: (model id, message), reported after registering.
    pub fn new(cfg: CoreConfig, identity: Option<Identity>, models: Vec<InstalledModel>, startup_failures: Vec<(String, String)>) -> Self {
        let want_pairing = cfg.request_pairing_code;
        let rng = cfg.seed | 1;
        let mut core = Self {
            cfg,
            identity,
            models,
            link: Link::Down,
            mode: Mode::Serving,
            attempts: 0,
            jobs: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            next_heartbeat: None,
            models_changed: false,
            reported_models: Vec::new(),
            pairing: None,
            jobs_done: 0,
            jobs_failed: 0,
            recent_errors: std::collections::VecDeque::new(),
            pending_errors: Vec::new(),
            engine_trouble: BTreeMap::new(),
            want_pairing,
            rng,
            out: vec![Action::Connect { after_ms: 0 }],
        };
        core.queue_failures(startup_failures);
        core
    }

    /// The actions queued so far, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// When the shell must feed the next [`Event::Tick`].
    pub fn next_wakeup(&self) -> Option<Millis> {
        let deadline = self.jobs.values().map(|j| j.deadline).min();
        match (deadline, self.next_heartbeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The registered node id, if registered.
    pub fn node_id(&self) -> Option<&str> {
        match &self.link {
            Link::Up(id) => Some(id),
            _ => None,
        }
    }

    /// Jobs holding a slot (running, plus abandoned ones still computing).
    /// What the owner's status view shows, as far as the core knows it
    /// (the shell adds the dispatcher address and connection errors).
    pub fn status(&self) -> crate::status::NodeStatus {
        let state = match (&self.link, self.mode) {
            (_, Mode::ShuttingDown) => "stopping",
            (Link::Up(_), Mode::Draining) => "draining",
            (Link::Up(_), Mode::Serving) => "connected",
            (Link::Registering, _) => "registering",
            (Link::Down, _) => "connecting",
        };
        let models = self
            .models
            .iter()
            .map(|m| {
                let src = m.src_lang.as_deref().unwrap_or("?");
                let languages = match m.tgt_lang.as_deref() {
                    Some(t) => format!("{src} → {t}"),
                    None => src.to_owned(),
                };
                crate::status::ModelStatus {
                    model_id: m.model_id.clone(),
                    kind: m.kind.to_string(),
                    languages,
                    enabled: m.enabled != Some(false),
                    state: self.engine_trouble.get(&m.model_id).map_or_else(|| "running".to_owned(), EngineTrouble::state),
                }
            })
            .collect();
        crate::status::NodeStatus {
            state: state.to_owned(),
            connected: matches!(self.link, Link::Up(_)),
            // While disconnected, the stored identity it will come back as.
            node_id: self.node_id().or(self.identity.as_ref().map(|i| i.node_id.as_str())).map(str::to_owned),
            pairing_code: self.pairing.as_ref().map(|p| p.0.clone()),
            pairing_expires_at: self.pairing.as_ref().map(|p| p.1),
            models,
            jobs_running: self.running_jobs(),
            jobs_done: self.jobs_done,
            jobs_failed: self.jobs_failed,
            recent_errors: self.recent_errors.clone(),
            ..crate::status::NodeStatus::default()
        }
    }

    pub fn running_jobs(&self) -> usize {
        self.jobs.len() + self.abandoned.len()
    }

    pub fn handle(&mut self, now: Millis, event: Event) {
        match event {
            Event::Connected => self.on_connected(),
            Event::Disconnected => self.on_disconnected(),
            Event::Frame(frame) => self.on_frame(now, frame),
            Event::JobFinished { job_id, outcome } => self.on_job_finished(job_id, outcome),
            Event::Tick { unix_ms, load } => self.on_tick(now, unix_ms, load),
            Event::ModelsChanged { models, failures } => {
                tracing::info!(models = models.len(), failed = failures.len(), "engines reloaded");
                self.models = models;
                self.models_changed = true;
                self.queue_failures(failures);
                if matches!(self.link, Link::Up(_)) {
                    self.flush_errors();
                    self.next_heartbeat = Some(now);
                }
            }
            Event::ReloadFailed(message) => {
                tracing::error!(%message, "reload_config failed; the old engines stay");
                crate::status::push_error(&mut self.recent_errors, format!("reload_config failed: {message}"));
                self.pending_errors.push(self.node_error("CONFIG_ERROR", format!("reload_config failed: {message}")));
                self.flush_errors();
            }
            Event::EngineHealth { model_ids, notice } => self.on_engine_health(now, model_ids, notice),
            Event::PairingRequested => {
                self.want_pairing = true;
                self.request_pairing();
            }
            Event::Shutdown => self.begin_shutdown("local signal"),
        }
        self.check_exit();
    }

    // ------------------------------------------------------------ connection

    fn register_frame(&self) -> NodeRegister {
        NodeRegister {
            node_id: self.identity.as_ref().map(|i| i.node_id.clone()),
            version: self.cfg.version.clone(),
            platform: self.cfg.platform,
            hardware: self.cfg.hardware.clone(),
            installed_models: self.models.clone(),
            features_supported: self.cfg.features,
            accept_public_jobs: self.cfg.accept_public_jobs,
            node_token: self.identity.as_ref().map(|i| i.node_token.clone()),
            auth_token: self.cfg.auth_token.clone(),
            // Tell the dispatcher our limit, so it never sends a job we must refuse.
            max_jobs: Some(self.cfg.max_jobs.clamp(1, 1024) as u32),
        }
    }

    fn on_connected(&mut self) {
        if self.link != Link::Down {
            return;
        }
        self.link = Link::Registering;
        let reg = self.register_frame();
        // A registration replaces the dispatcher's list whole.
        self.reported_models = reg.installed_models.iter().map(|m| m.model_id.clone()).collect();
        self.out.push(Action::Send(NodeToServer::NodeRegister(reg)));
    }

    fn on_disconnected(&mut self) {
        let was_up = matches!(self.link, Link::Up(_));
        self.link = Link::Down;
        self.next_heartbeat = None;
        // The dispatcher moves a lost node's jobs: ours are no longer ours to report.
        for (job_id, _) in std::mem::take(&mut self.jobs) {
            self.out.push(Action::AbandonJob(job_id.clone()));
            self.abandoned.insert(job_id);
        }
        if self.mode == Mode::ShuttingDown {
            return; // check_exit ends it
        }
        if was_up {
            tracing::warn!("connection to the dispatcher lost");
        }
        self.attempts = self.attempts.saturating_add(1);
        let after_ms = self.backoff_ms();
        tracing::info!(attempt = self.attempts, after_ms, "reconnecting");
        self.out.push(Action::Connect { after_ms });
    }

    /// Exponential back-off with "equal jitter": half the step, plus a random
    /// part of the other half. The step doubles per failed attempt, capped.
    fn backoff_ms(&mut self) -> u64 {
        let exp = self.attempts.saturating_sub(1).min(20);
        let step = self.cfg.reconnect_min_ms.saturating_mul(1 << exp).min(self.cfg.reconnect_max_ms);
        let half = step / 2;
        half + self.next_random() % (step - half + 1)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    // ---------------------------------------------------------------- frames

    fn on_frame(&mut self, now: Millis, frame: ServerToNode) {
        match frame {
            ServerToNode::NodeRegisterAck(ack) => {
                if self.link != Link::Registering {
                    return tracing::warn!("unexpected node_register_ack");
                }
                let token =
                    ack.node_token.or_else(|| self.identity.as_ref().filter(|i| i.node_id == ack.node_id).map(|i| i.node_token.clone()));
                match token {
                    Some(node_token) => {
                        let id = Identity { node_id: ack.node_id.clone(), node_token };
                        if self.identity.as_ref() != Some(&id) {
                            self.out.push(Action::SaveIdentity(id.clone()));
                        }
                        self.identity = Some(id);
                    }
                    None => tracing::warn!("the dispatcher gave no node_token; the identity cannot be kept"),
                }
                tracing::info!(node_id = %ack.node_id, "registered");
                self.link = Link::Up(ack.node_id);
                self.attempts = 0;
                // A fresh registration is an undrained node for the dispatcher.
                if self.mode == Mode::Draining {
                    self.mode = Mode::Serving;
                }
                self.next_heartbeat = Some(now);
                self.flush_errors();
                self.request_pairing();
            }
            ServerToNode::JobAssign(job) => self.on_job_assign(now, job),
            ServerToNode::NodeControl(control) => {
                let reason = control.reason.unwrap_or_default();
                tracing::info!(command = ?control.command, %reason, "node_control");
                match control.command {
                    NodeCommand::Drain => {
                        if self.mode == Mode::Serving {
                            self.mode = Mode::Draining;
                        }
                    }
                    NodeCommand::Shutdown => self.begin_shutdown("dispatcher"),
                    NodeCommand::ReloadConfig => self.out.push(Action::ReloadConfig),
                }
            }
            ServerToNode::PairingCode(p) => {
                self.pairing = Some((p.code.clone(), p.expires_at));
                self.out.push(Action::ShowPairingCode { code: p.code, expires_at: p.expires_at });
            }
            ServerToNode::Error(e) => {
                if e.code == ErrorCode::Unauthorized && self.link == Link::Registering {
                    if self.identity.take().is_some() {
                        tracing::warn!(message = %e.message, "the dispatcher does not know our identity; registering afresh");
                        self.out.push(Action::ForgetIdentity);
                        // Not a failure of the network: retry at once.
                        self.attempts = 0;
                    } else {
                        tracing::error!(message = %e.message, "registration refused (is auth_token right?)");
                    }
                } else {
                    tracing::warn!(code = %e.code, message = %e.message, "error from the dispatcher");
                }
            }
        }
    }

    fn fail_now(&mut self, job: &JobAssign, code: JobErrorCode, message: String) {
        tracing::info!(job_id = %job.job_id, %code, %message, "job refused");
        let Link::Up(node_id) = &self.link else { return };
        let error = JobError { code, message };
        let mut result = JobResult::failure(job.job_id.clone(), node_id.clone(), job.session_id.clone(), job.utterance_index, error);
        result.processing_time_ms = Some(0);
        self.out.push(Action::Send(NodeToServer::JobResult(result)));
    }

    fn on_job_assign(&mut self, now: Millis, mut job: JobAssign) {
        if !matches!(self.link, Link::Up(_)) {
            return tracing::warn!(job_id = %job.job_id, "job_assign before registration: ignored");
        }
        if self.jobs.contains_key(&job.job_id) {
            return tracing::warn!(job_id = %job.job_id, "job_assign for a job already running: ignored");
        }
        if self.mode != Mode::Serving {
            return self.fail_now(&job, JobErrorCode::NodeBusy, "the node is draining".into());
        }
        if self.running_jobs() >= self.cfg.max_jobs || self.abandoned.contains(&job.job_id) {
            let message = format!("the node runs {} of {} jobs", self.running_jobs(), self.cfg.max_jobs);
            return self.fail_now(&job, JobErrorCode::NodeBusy, message);
        }
        if let Some(missing) = models::missing_stage(&self.models, &job) {
            return self.fail_now(&job, JobErrorCode::ModelNotAvailable, missing);
        }
        // The pipeline stops engines in child processes by the same deadline.
        let deadline_ms = *job.deadline_ms.get_or_insert(self.cfg.default_deadline_ms);
        let deadline = now.saturating_add(deadline_ms);
        self.jobs
            .insert(job.job_id.clone(), Running { session_id: job.session_id.clone(), utterance_index: job.utterance_index, deadline });
        self.out.push(Action::StartJob(job));
    }

    // ------------------------------------------------------------------ jobs

    fn on_job_finished(&mut self, job_id: String, outcome: Outcome) {
        if self.abandoned.remove(&job_id) {
            return tracing::debug!(%job_id, "an abandoned job returned; result dropped");
        }
        let Some(job) = self.jobs.remove(&job_id) else { return };
        let Link::Up(node_id) = &self.link else { return };
        let t = outcome.timings;
        let result = match outcome.result {
            Ok(out) => {
                self.jobs_done += 1;
                tracing::info!(%job_id, decode_ms = t.decode_ms, asr_ms = t.asr_ms, nmt_ms = t.nmt_ms, tts_ms = t.tts_ms, total_ms = t.total_ms, "job done");
                let (tts_audio, tts_format, tts_sample_rate) = match out.tts {
                    Some(s) => (Some(audio::to_base64(&s.bytes).into()), Some(s.format), s.sample_rate),
                    None => (None, None, None),
                };
                JobResult {
                    job_id: job_id.clone(),
                    node_id: node_id.clone(),
                    session_id: job.session_id,
                    utterance_index: job.utterance_index,
                    success: true,
                    text_asr: out.text_asr.map(|s| clip(s, tolk_protocol::validate::MAX_TEXT_LEN)),
                    text_translated: out.text_translated.map(|s| clip(s, tolk_protocol::validate::MAX_TEXT_LEN)),
                    tts_audio,
                    tts_format,
                    tts_sample_rate,
                    extra: None,
                    processing_time_ms: Some(t.total_ms),
                    error: None,
                }
            }
            Err(f) => {
                tracing::warn!(%job_id, code = %f.code, message = %f.message, "job failed");
                self.jobs_failed += 1;
                crate::status::push_error(&mut self.recent_errors, format!("job {job_id}: {} {}", f.code, f.message));
                let error = JobError { code: f.code, message: clip(f.message, tolk_protocol::validate::MAX_TEXT_LEN) };
                let mut r = JobResult::failure(job_id.clone(), node_id.clone(), job.session_id, job.utterance_index, error);
                r.processing_time_ms = Some(t.total_ms);
                r
            }
        };
        self.out.push(Action::Send(NodeToServer::JobResult(result)));
    }

    /// Every current model in full (enabled unless it says otherwise), and
    /// `enabled: false` for each reported model that is gone (extension 7:
    /// heartbeat entries are updates, so a missing one would stay).
    fn model_updates(&mut self) -> Vec<ModelUpdate> {
        let mut updates: Vec<ModelUpdate> =
            self.models.iter().map(|m| ModelUpdate { enabled: Some(m.enabled.unwrap_or(true)), ..m.clone().into() }).collect();
        for id in &self.reported_models {
            if !self.models.iter().any(|m| &m.model_id == id) {
                updates.push(ModelUpdate::disable(id.clone()));
            }
        }
        for m in &self.models {
            if !self.reported_models.contains(&m.model_id) {
                self.reported_models.push(m.model_id.clone());
            }
        }
        updates
    }

    fn on_tick(&mut self, now: Millis, unix_ms: u64, load: Load) {
        let expired: Vec<String> = self.jobs.iter().filter(|(_, j)| j.deadline <= now).map(|(id, _)| id.clone()).collect();
        for job_id in expired {
            let Some(job) = self.jobs.remove(&job_id) else { continue };
            tracing::warn!(%job_id, "job passed its deadline: abandoned");
            self.jobs_failed += 1;
            crate::status::push_error(&mut self.recent_errors, format!("job {job_id}: TIMEOUT at its deadline"));
            self.abandoned.insert(job_id.clone());
            self.out.push(Action::AbandonJob(job_id.clone()));
            if let Link::Up(node_id) = &self.link {
                let error = JobError { code: JobErrorCode::Timeout, message: "the node gave up at the job's deadline".into() };
                let result = JobResult::failure(job_id, node_id.clone(), job.session_id, job.utterance_index, error);
                self.out.push(Action::Send(NodeToServer::JobResult(result)));
            }
        }
        if let (Link::Up(node_id), Some(due)) = (&self.link, self.next_heartbeat)
            && due <= now
        {
            let hb = NodeHeartbeat {
                node_id: node_id.clone(),
                timestamp: unix_ms,
                resource_usage: ResourceUsage {
                    cpu_percent: load.cpu_percent.clamp(0.0, 100.0),
                    gpu_percent: load.gpu_percent.map(|p| p.clamp(0.0, 100.0)),
                    gpu_mem_percent: load.gpu_mem_percent.map(|p| p.clamp(0.0, 100.0)),
                    mem_percent: load.mem_percent.clamp(0.0, 100.0),
                    running_jobs: self.running_jobs() as u32,
                },
                installed_models: self.models_changed.then(|| self.model_updates()),
            };
            self.models_changed = false;
            self.out.push(Action::Send(NodeToServer::NodeHeartbeat(hb)));
            self.next_heartbeat = Some(now + self.cfg.heartbeat_ms);
        }
    }

    fn on_engine_health(&mut self, now: Millis, model_ids: Vec<String>, notice: crate::engine::process::Notice) {
        use crate::engine::process::Notice;
        let set_enabled = |models: &mut Vec<InstalledModel>, enabled: Option<bool>| {
            for m in models.iter_mut().filter(|m| model_ids.contains(&m.model_id)) {
                m.enabled = enabled;
            }
        };
        match notice {
            Notice::Down { reason, failures, restart_in_ms } => {
                set_enabled(&mut self.models, Some(false));
                for id in &model_ids {
                    let t = self.engine_trouble.entry(id.clone()).or_default();
                    t.restarting = Some(format!("restarting in {restart_in_ms} ms (failed {failures}× in a row)"));
                    t.failures += 1;
                    t.last.clone_from(&reason);
                    let message = format!("engine {id} failed ({failures}× in a row), restarting in {restart_in_ms} ms: {reason}");
                    crate::status::push_error(&mut self.recent_errors, message.clone());
                    let mut e = self.node_error("INFERENCE_BACKEND_ERROR", message);
                    e.details = Some(serde_json::json!({ "model_id": id, "failures": failures, "restart_in_ms": restart_in_ms }));
                    self.pending_errors.push(e);
                }
                self.flush_errors();
            }
            Notice::Up => {
                set_enabled(&mut self.models, None);
                // A report not sent yet (not registered) would now be wrong.
                self.pending_errors.retain(|e| {
                    let id = e.details.as_ref().and_then(|d| d.get("model_id")).and_then(|m| m.as_str());
                    !id.is_some_and(|id| model_ids.iter().any(|m| m == id))
                });
                for id in &model_ids {
                    if let Some(t) = self.engine_trouble.get_mut(id) {
                        t.restarting = None;
                    }
                }
                // Routing resumes with the next heartbeat's model updates: send it now.
                self.models_changed = true;
                if matches!(self.link, Link::Up(_)) {
                    self.next_heartbeat = Some(now);
                }
            }
        }
    }

    // ----------------------------------------------------------------- misc

    fn node_error(&self, code: &str, message: String) -> NodeError {
        NodeError {
            node_id: self.node_id().unwrap_or_default().to_owned(),
            code: code.to_owned(),
            message: clip(message, tolk_protocol::validate::MAX_TEXT_LEN),
            details: None,
        }
    }

    fn queue_failures(&mut self, failures: Vec<(String, String)>) {
        for (model_id, message) in failures {
            crate::status::push_error(&mut self.recent_errors, format!("engine {model_id} could not start: {message}"));
            let mut e = self.node_error("INFERENCE_BACKEND_ERROR", format!("engine {model_id} could not start: {message}"));
            e.details = Some(serde_json::json!({ "model_id": model_id }));
            self.pending_errors.push(e);
        }
    }

    /// Sends queued `node_error`s once registered (their `node_id` is filled then).
    fn flush_errors(&mut self) {
        let Link::Up(node_id) = &self.link else { return };
        for mut e in std::mem::take(&mut self.pending_errors) {
            e.node_id = node_id.clone();
            self.out.push(Action::Send(NodeToServer::NodeError(e)));
        }
    }

    fn request_pairing(&mut self) {
        if !self.want_pairing {
            return;
        }
        if let Link::Up(node_id) = &self.link {
            self.want_pairing = false;
            self.out.push(Action::Send(NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id: node_id.clone() })));
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.mode != Mode::ShuttingDown {
            tracing::info!(why, running = self.jobs.len(), "shutting down once running jobs finish");
            self.mode = Mode::ShuttingDown;
        }
    }

    fn check_exit(&mut self) {
        if self.mode == Mode::ShuttingDown && self.jobs.is_empty() && !self.out.contains(&Action::Exit) {
            if self.link != Link::Down {
                self.out.push(Action::Close);
            }
            self.out.push(Action::Exit);
        }
    }
}

/// Cuts `s` to at most `max` bytes at a char boundary (protocol text limit).
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
