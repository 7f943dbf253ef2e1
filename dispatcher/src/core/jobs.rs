//! Jobs: one accepted utterance on its way through a node. Placement (a free
//! eligible node now, else the class queue, else an answer at once),
//! results, failures and retries (extension 3), deadlines, and the
//! dispatcher's own feature detection.

use tolk_protocol::common::{ErrorCode, ErrorMessage, Extra, Features};
use tolk_protocol::node::JobResult;
use tolk_protocol::session::TranslationResult;
use tolk_protocol::{JobErrorCode, ProtocolError, ServerToClient};

use super::admission::{self, Admit, ClassLoad, Limits};
use super::cluster::PeerMsg;
use super::eligibility::{self, Reasons};
use super::nodes::BUSY_BACKOFF_MS;
use super::policy::{Candidate, JobInfo, LeastLoaded};
use super::queue::ClassId;
use super::timer::Timer;
use super::{Action, ConnId, Core, Frame, Millis};

/// How a job reaches the node chosen.
#[derive(Debug)]
enum Route {
    /// Its connection here.
    Local(ConnId),
    /// Through the dispatcher of the cluster holding it.
    Peer(String),
}

#[derive(Debug)]
pub(super) enum JobState {
    /// Waiting for an eligible node with free capacity (in its class's queue).
    Queued,
    /// Sent to this node.
    Running { node: String, started: Millis },
    /// The node answered; waiting (boundedly) for the dispatcher's detectors.
    Finished { result: Box<JobResult> },
}

/// The dispatcher's own feature detection for a job.
#[derive(Debug)]
pub(super) enum Detection {
    NotNeeded,
    Pending(Features),
    Done(Features, Extra),
}

#[derive(Debug)]
pub(super) struct Job {
    pub session: String,
    pub index: u64,
    /// The `job_assign` frame, built once; retries resend it.
    pub frame: Frame,
    pub class: ClassId,
    /// Acceptance order: its place in the class queue.
    pub seq: u64,
    pub audio_ms: u64,
    pub attempts: u32,
    pub failed_nodes: Vec<String>,
    pub state: JobState,
    pub deadline: Millis,
    pub accepted_at: Millis,
    /// Set when the session went away: the job only frees its node's slot.
    pub orphaned: bool,
    pub detection: Detection,
    /// `NODE_BUSY` answers so far (bounded: then it counts as a failure).
    pub busy_bounces: u32,
}

#[derive(Debug)]
pub(super) enum Outcome {
    Result(Box<TranslationResult>),
    Error(ErrorMessage),
}

#[derive(Debug)]
pub(super) enum FailKind {
    /// Another node may succeed.
    Retry(String),
    /// The audio itself is bad: no node will do better.
    BadAudio(String),
    /// The node is at capacity (e.g. still finishing jobs this core never
    /// knew): not a failure of the node; try again, here or elsewhere.
    Busy(String),
}

/// What became of a new job that found no free node.
#[derive(Debug)]
pub(super) enum Placed {
    Running,
    Queued,
    /// The session is over its share: refuse the utterance (not accepted).
    OverShare {
        retry_after_ms: u64,
    },
}

/// How long `reasons` are reused for refusals of one class.
const REASONS_TTL_MS: Millis = 100;

/// How a policy sees node `id`.
pub(super) fn candidate<'a>(id: &'a str, n: &super::nodes::Node, last: Option<&str>) -> Candidate<'a> {
    Candidate {
        node_id: id,
        node_key: n.key,
        // Another dispatcher's node: its load for the whole cluster, as announced.
        running: if n.remote.is_some() { n.load() } else { n.running.len() as u32 },
        capacity: n.max_jobs,
        cpu_percent: n.usage.as_ref().map_or(0.0, |u| u.cpu_percent),
        is_last_node: last == Some(id),
        ms_per_audio_s: n.ms_per_audio_s,
        recent_failures: n.recent_failures,
        trust_score: n.trust.score(),
        verified: n.trust.verified,
        remote: n.remote.is_some(),
    }
}

impl Core {
    fn limits(&self) -> Limits {
        Limits {
            queue_per_slot: self.cfg.queue_per_slot,
            queue_min: self.cfg.queue_min,
            fallback_retry_ms: self.cfg.admission_wait_ms.min(5_000),
        }
    }

    /// Places a job just accepted: on a free node now, else in its class's
    /// queue if the overload rule allows, else answered at once.
    pub(super) fn place_new(&mut self, now: Millis, job_id: &str) -> Placed {
        if self.try_assign(now, job_id) {
            return Placed::Running;
        }
        let Some(job) = self.jobs.get(job_id) else { return Placed::Running };
        let (class_id, session, seq) = (job.class, job.session.clone(), job.seq);
        let Some(class) = self.classes.get(class_id) else { return Placed::Running };
        let own = class.per_session.get(&session).copied().unwrap_or(0);
        // The job already entered its class: count it out for the decision.
        let session_jobs = own.saturating_sub(1);
        let sessions = class.per_session.len();
        let load = ClassLoad {
            slots: class.slots(),
            queued: class.queue.len(),
            session_jobs,
            sessions,
            // Before anything has drained, assume a job a second per slot.
            drain_per_s: Some(class.drain.per_s(now)).filter(|&d| d >= 0.1).unwrap_or(f64::from(class.slots())),
        };
        match admission::admit(&load, &self.limits()) {
            Admit::Queue => {
                self.classes.enqueue(class_id, seq, job_id.to_owned());
                Placed::Queued
            }
            Admit::OverShare { retry_after_ms } => {
                self.remove_job(job_id);
                Placed::OverShare { retry_after_ms }
            }
            Admit::Saturated { retry_after_ms } => {
                let Some(job) = self.remove_job(job_id) else { return Placed::Running };
                let mut err = self.unavailable(
                    now,
                    &job,
                    format!("every node that serves this language pair is busy; try again in {retry_after_ms} ms"),
                );
                if let Some(serde_json::Value::Object(d)) = &mut err.details {
                    d.insert("retry_after_ms".into(), retry_after_ms.into());
                }
                self.finish(&job.session, job.index, Outcome::Error(err));
                Placed::Running
            }
        }
    }

    /// A `NODE_UNAVAILABLE` outcome for `job`, with `details.reasons`
    /// (extension 11) from the one eligibility rule.
    fn unavailable(&mut self, now: Millis, job: &Job, message: String) -> ErrorMessage {
        let reasons = self.reasons(now, job.class, &job.failed_nodes);
        if let Some(main) = reasons.main() {
            *self.stats.unavailable_reasons.entry(main.to_owned()).or_insert(0) += 1;
        }
        let mut err = ErrorMessage::for_utterance(ErrorCode::NodeUnavailable, message, job.index);
        if let Some(serde_json::Value::Object(d)) = &mut err.details {
            d.insert("reasons".into(), reasons.to_json());
        }
        err
    }

    /// Nodes per reason they cannot take a job of `class` now.
    fn reasons(&mut self, now: Millis, class: ClassId, failed: &[String]) -> Reasons {
        let Some(c) = self.classes.get_mut(class) else { return Reasons::default() };
        if failed.is_empty()
            && let Some((at, r)) = &c.reasons_cache
            && now < at + REASONS_TTL_MS
        {
            return r.clone();
        }
        let mut reasons = Reasons::default();
        for (id, n) in &self.nodes {
            if let Err(r) = eligibility::check_for_job(n, id, &c.req, self.supplied, failed, now) {
                reasons.add(r);
            }
        }
        if failed.is_empty() {
            c.reasons_cache = Some((now, reasons.clone()));
        }
        reasons
    }

    /// Starts a queued job on a free eligible node the policy picks; false
    /// when none has room.
    pub(super) fn try_assign(&mut self, now: Millis, job_id: &str) -> bool {
        let Some(job) = self.jobs.get(job_id) else { return true };
        if !matches!(job.state, JobState::Queued) {
            return true;
        }
        let Some(class) = self.classes.get_mut(job.class) else { return false };
        class.refresh(self.node_epoch, &self.nodes, self.supplied);
        let last = self.sessions.get(&job.session).and_then(|s| s.last_node.as_deref());
        let candidates: Vec<Candidate<'_>> = class
            .eligible()
            .iter()
            .filter(|id| !job.failed_nodes.contains(id))
            .filter_map(|id| {
                let n = self.nodes.get(id)?;
                n.has_room(now).then(|| candidate(id, n, last))
            })
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let info = JobInfo {
            session_id: &job.session,
            utterance_index: job.index,
            audio_ms: job.audio_ms,
            attempt: job.attempts,
            paired: class.req.paired_node.is_some(),
        };
        let picked = match self.policy.pick(&info, &candidates).filter(|&i| i < candidates.len()) {
            Some(i) => Some(i),
            None => {
                self.stats.policy_fallbacks += 1;
                LeastLoaded::choose(&candidates)
            }
        };
        let Some(node_id) = picked.and_then(|i| candidates.get(i)).map(|c| c.node_id.to_owned()) else { return false };
        drop(candidates);
        let route = match self.nodes.get(&node_id) {
            Some(n) => match (n.conn, &n.remote) {
                (Some(conn), _) => Route::Local(conn),
                (None, Some(r)) if r.connected => Route::Peer(r.dispatcher.clone()),
                _ => return false,
            },
            None => return false,
        };
        self.start(now, job_id, &node_id, route);
        true
    }

    fn start(&mut self, now: Millis, job_id: &str, node_id: &str, route: Route) {
        let deadline_base = self.cfg.job_timeout_base_ms;
        let per_s = self.cfg.job_timeout_per_audio_s_ms;
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        let deadline_ms = deadline_base + job.audio_ms * per_s / 1000;
        job.state = JobState::Running { node: node_id.to_owned(), started: now };
        job.attempts += 1;
        job.deadline = now + deadline_ms;
        let (frame, session, class, seq, retried) = (job.frame.clone(), job.session.clone(), job.class, job.seq, job.attempts > 1);
        let index = job.index;
        self.classes.dequeue(class, seq);
        if retried {
            self.stats.retries += 1;
        }
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.insert(job_id.to_owned());
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_node = Some(node_id.to_owned());
        }
        self.stats.jobs_assigned += 1;
        self.timers.arm(now + deadline_ms, Timer::Job(job_id.to_owned()));
        match route {
            Route::Local(conn) => self.out.push(Action::Send { conn, frame }),
            Route::Peer(dispatcher) => {
                // The node is another dispatcher's: the job stays ours (its
                // deadline, retries, outcome), the frame travels verbatim.
                self.stats.jobs_forwarded += 1;
                let msg = PeerMsg::Job {
                    job_id: job_id.to_owned(),
                    node_id: node_id.to_owned(),
                    session_id: session,
                    utterance_index: index,
                    deadline_ms,
                    frame,
                };
                self.out.push(Action::Peer { to: Some(dispatcher), msg });
            }
        }
    }

    /// A slot may be free on `node_id`: run the oldest queued jobs it can
    /// serve. Looks only at classes that node serves, never at every job.
    pub(super) fn pump_node(&mut self, now: Millis, node_id: &str) {
        // Each turn starts a job (or stops): bounded by the queue itself.
        for _ in 0..self.classes.queued() {
            if !self.nodes.get(node_id).is_some_and(|n| n.live() && n.has_room(now)) {
                return;
            }
            let waiting: Vec<ClassId> = self.classes.waiting().collect();
            let mut best: Option<(u64, String)> = None;
            for class_id in waiting {
                let Some(class) = self.classes.get_mut(class_id) else { continue };
                class.refresh(self.node_epoch, &self.nodes, self.supplied);
                if !class.serves(node_id) {
                    continue;
                }
                // The oldest job that has not failed here; a few looks at most.
                let head = class
                    .queue
                    .iter()
                    .take(32)
                    .find(|(_, j)| self.jobs.get(j.as_str()).is_some_and(|job| !job.failed_nodes.iter().any(|f| f == node_id)));
                if let Some((&seq, job_id)) = head
                    && best.as_ref().is_none_or(|(s, _)| seq < *s)
                {
                    best = Some((seq, job_id.clone()));
                }
            }
            let Some((_, job_id)) = best else { return };
            if !self.try_assign(now, &job_id) {
                return;
            }
        }
    }

    /// A node's answer: from its connection here (`conn`), or passed back
    /// by the dispatcher holding it (`None`).
    pub(super) fn on_job_result(&mut self, now: Millis, conn: Option<ConnId>, node_id: &str, r: JobResult) {
        let r = match conn {
            Some(conn) => {
                if self.on_canary_result(now, conn, node_id, &r) {
                    return;
                }
                // A job run here for another dispatcher goes back to it.
                if self.holds_proxied(node_id, &r) {
                    return self.on_proxied_result(now, node_id, r);
                }
                r
            }
            None => r,
        };
        self.on_own_job_result(now, conn, node_id, r);
    }

    fn on_own_job_result(&mut self, now: Millis, conn: Option<ConnId>, node_id: &str, r: JobResult) {
        let holds = self.jobs.get(&r.job_id).is_some_and(|j| {
            matches!(&j.state, JobState::Running { node, .. } if node == node_id)
                && j.session == r.session_id
                && j.index == r.utterance_index
        });
        if !holds {
            // A late answer for a job that was moved, or a forged one.
            self.stats.rejected_results += 1;
            let err = ProtocolError::invalid_field("job_id", "this node holds no such job").to_message();
            if let Some(conn) = conn {
                self.send_error(conn, err);
            }
            return;
        }
        let Some(job) = self.jobs.get(&r.job_id) else { return };
        let started = match job.state {
            JobState::Running { started, .. } => started,
            JobState::Queued | JobState::Finished { .. } => now,
        };
        let (audio_ms, class) = (job.audio_ms, job.class);
        let public = self.classes.get(class).is_some_and(|c| c.req.paired_node.is_none());
        if let Some(c) = self.classes.get_mut(class) {
            c.drain.record(now);
        }
        let busy_answer = r.error.as_ref().is_some_and(|e| e.code == JobErrorCode::NodeBusy);
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(&r.job_id);
            if !busy_answer {
                // One job fewer on the node than its last heartbeat said.
                n.reported_running = n.reported_running.saturating_sub(1);
            }
        }
        if r.success {
            self.shedder.served();
            let took = now.saturating_sub(started);
            self.stats.job_seconds.observe(took as f64 / 1000.0);
            if let Some(n) = self.nodes.get_mut(node_id) {
                if audio_ms > 0 {
                    let sample = took as f64 * 1000.0 / audio_ms as f64;
                    n.ms_per_audio_s = Some(n.ms_per_audio_s.map_or(sample, |old| 0.8 * old + 0.2 * sample));
                }
                n.recent_failures = n.recent_failures.saturating_sub(1);
            }
            if public {
                self.after_public_job(node_id);
            }
            let job_id = r.job_id.clone();
            let waits_for_detection = self.jobs.get(&job_id).is_some_and(|j| matches!(j.detection, Detection::Pending(_)) && !j.orphaned);
            if waits_for_detection {
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.state = JobState::Finished { result: Box::new(r) };
                    job.deadline = now + self.cfg.detect_wait_ms;
                    self.timers.arm(now + self.cfg.detect_wait_ms, Timer::Job(job_id));
                }
            } else if let Some(job) = self.remove_job(&job_id) {
                self.job_done(now, &job_id, job, r);
            }
        } else {
            let code = r.error.as_ref().map(|e| e.code.clone());
            let message = r.error.map(|e| e.message).unwrap_or_default();
            let kind = match code {
                Some(JobErrorCode::NodeBusy) => FailKind::Busy(message),
                Some(c) if !c.is_retryable() => FailKind::BadAudio(message),
                Some(c) => FailKind::Retry(format!("{c}: {message}")),
                None => FailKind::Retry(message),
            };
            if let Some(n) = self.nodes.get_mut(node_id) {
                n.recent_failures = n.recent_failures.saturating_add(1).min(100);
            }
            self.job_failed(now, &r.job_id, node_id, kind);
        }
        self.pump_node(now, node_id);
        self.canary_tick(now, node_id);
    }

    pub(super) fn on_detected(&mut self, now: Millis, job_id: &str, extra: Extra) {
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
        let Some(mut job) = self.remove_job(job_id) else { return };
        if let JobState::Finished { result } = std::mem::replace(&mut job.state, JobState::Queued) {
            self.job_done(now, job_id, job, *result);
        }
    }

    /// Forgets a job everywhere it is counted (its class, its queue place, its session).
    pub(super) fn remove_job(&mut self, job_id: &str) -> Option<Job> {
        let job = self.jobs.remove(job_id)?;
        if matches!(job.state, JobState::Queued) {
            self.classes.dequeue(job.class, job.seq);
        }
        self.classes.leave(job.class, &job.session);
        if let Some(s) = self.sessions.get_mut(&job.session) {
            s.jobs.remove(job_id);
        }
        Some(job)
    }

    fn job_done(&mut self, now: Millis, job_id: &str, job: Job, r: JobResult) {
        if job.orphaned {
            return;
        }
        self.stats.utterance_seconds.observe(now.saturating_sub(job.accepted_at) as f64 / 1000.0);
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
            // Moved, not copied: the node's base64 is spliced in verbatim.
            tts_audio: r.tts_audio,
            tts_format: r.tts_format,
            tts_sample_rate: r.tts_sample_rate,
            extra: Some(extra),
        };
        self.finish(&job.session, job.index, Outcome::Result(Box::new(result)));
        if let Some(s) = self.sessions.get_mut(&job.session) {
            s.served.record(now);
        }
        self.hold_slot_for_replacement(now, &job.session);
    }

    /// A job failed on `node_id`: retry on another node or give up.
    pub(super) fn job_failed(&mut self, now: Millis, job_id: &str, node_id: &str, kind: FailKind) {
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(job_id);
        }
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        if job.orphaned {
            self.remove_job(job_id);
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
                // The node's INVALID_AUDIO (e.g. Opus packets that do not
                // decode, which only a decoder sees), passed on as such.
                let message = format!("the audio could not be processed: {m}");
                let details = serde_json::json!({ "utterance_index": job.index, "field": "audio" });
                Some(ErrorMessage { code: ErrorCode::InvalidAudio, message, details: Some(details) })
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
                if let Some(job) = self.remove_job(job_id) {
                    // Why no other node could: the reasons, from the one rule.
                    let err = if err.code == ErrorCode::NodeUnavailable { self.unavailable(now, &job, err.message) } else { err };
                    self.finish(&job.session, job.index, Outcome::Error(err));
                }
            }
            None => {
                // Back in its class's queue at its old place (it is older than
                // what came since), unless a node is free now.
                job.state = JobState::Queued;
                job.deadline = now + self.cfg.admission_wait_ms;
                let (class, seq) = (job.class, job.seq);
                self.timers.arm(now + self.cfg.admission_wait_ms, Timer::Job(job_id.to_owned()));
                if !self.try_assign(now, job_id) {
                    self.classes.enqueue(class, seq, job_id.to_owned());
                }
            }
        }
    }

    pub(super) fn on_job_timer(&mut self, now: Millis, id: &str) {
        let Some(job) = self.jobs.get(id) else { return };
        if job.deadline > now {
            return; // A newer timer covers this job.
        }
        match &job.state {
            JobState::Finished { .. } => {
                self.stats.detection_timeouts += 1;
                self.complete_finished(now, id);
            }
            JobState::Running { node, .. } => {
                let node = node.clone();
                self.stats.job_timeouts += 1;
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.recent_failures = n.recent_failures.saturating_add(1).min(100);
                }
                self.job_failed(now, id, &node, FailKind::Retry("deadline passed".into()));
                self.pump_node(now, &node);
            }
            JobState::Queued => {
                let class = job.class;
                if let Some(c) = self.classes.get_mut(class) {
                    c.refresh(self.node_epoch, &self.nodes, self.supplied);
                }
                let Some(job) = self.remove_job(id) else { return };
                let eligible = self.classes.get(job.class).is_some_and(|c| !c.eligible().is_empty());
                let req = self.classes.get(job.class).map(|c| c.req.clone());
                let (src, tgt, paired) =
                    req.map_or((String::new(), String::new(), false), |r| (r.src_lang, r.tgt_lang, r.paired_node.is_some()));
                let message = if paired && !eligible {
                    "the paired node is not available".to_owned()
                } else if eligible {
                    "every eligible node stayed busy".to_owned()
                } else if !job.failed_nodes.is_empty() {
                    format!("every node that serves {src} → {tgt} failed this utterance")
                } else {
                    format!("no node serves {src} → {tgt}")
                };
                let err = self.unavailable(now, &job, message);
                self.finish(&job.session, job.index, Outcome::Error(err));
            }
        }
    }

    /// A session the CPU shedder refused lately just got its last result
    /// outstanding: the slot it freed is held for the utterance its phone
    /// sends next (`admission::CpuShedder::reserve`). Only its last: a
    /// session keeps one in flight this way, as a closed-loop phone is
    /// guaranteed one, and a flood cannot keep many.
    fn hold_slot_for_replacement(&mut self, now: Millis, session: &str) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        let refused_lately = s.cpu_refused_last.is_some_and(|at| now < at + admission::CpuShedder::FLOOD_MEMORY_MS);
        let holding = s.reserved_until.is_some_and(|until| now < until);
        if refused_lately && !holding && s.conn.is_some() && s.order.unsent() == 0 {
            s.reserved_until = self.shedder.reserve(now, self.jobs.len());
        }
    }

    /// Records the outcome of `index` and sends whatever is now in order.
    pub(super) fn finish(&mut self, session: &str, index: u64, outcome: Outcome) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        let frame = match outcome {
            Outcome::Result(r) => {
                self.stats.outcome("result");
                Frame::client(ServerToClient::TranslationResult(*r))
            }
            Outcome::Error(e) => {
                self.stats.outcome(e.code.as_str());
                Frame::client(ServerToClient::Error(e))
            }
        };
        if s.order.complete(index, frame) {
            self.flush_session(session);
        }
    }
}
