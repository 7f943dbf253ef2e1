//! Trust in volunteer nodes: canary jobs, probation, quarantine.
//!
//! With a canary set configured, a new public node is on *probation*: the
//! eligibility rule keeps public jobs from it (reason `untrusted`), and it
//! is sent canaries — ordinary `job_assign` frames carrying known speech,
//! with fresh random ids and a session id of the same form as real ones,
//! the audio padded and scaled at random each time so that no two are
//! byte-equal. [`score::judge`] scores each answer. Passing
//! `probation_canaries` makes the node *trusted*; `quarantine_after`
//! failures make it *quarantined* (no public jobs until an operator puts it
//! back on probation or vouches for it). A trusted node gets a canary after
//! a share (`canary_rate`) of its jobs, and a failure puts it back on
//! probation. A canary is sent only to a node with room and no queued job
//! it could serve, so it never displaces a user's job; its answer goes to
//! this module only, never to a session. Paired sessions reach their node
//! whatever its trust (`exempt_paired`).

pub mod score;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use rand::Rng;
use tolk_protocol::common::Features;
use tolk_protocol::node::{JobAssign, JobResult, Pipeline};
use tolk_protocol::{AudioFormat, ProtocolError, ServerToNode};

use super::eligibility::{self, Requirements};
use super::{Action, ConnId, Core, Frame, Millis};
use crate::config::TrustConfig;
use score::{Expected, Thresholds, Verdict};

/// One canary: speech and what a correct node makes of it.
#[derive(Debug, Clone)]
pub struct Canary {
    /// A name for logs (the audio file's).
    pub name: String,
    pub src_lang: String,
    pub tgt_lang: String,
    /// What the speech says.
    pub text: String,
    /// Correct translations of it, worded differently (an answer is scored
    /// by its content-word recall of the closest one). At least one when the
    /// languages differ.
    pub translations: Vec<String>,
    /// Mono 16-bit samples.
    pub samples: Arc<[i16]>,
    pub sample_rate: u32,
    /// The same speech as Ogg Opus, as phones send it (base64, each variant
    /// padded and scaled differently), and each one's length in ms. Encoded
    /// by the shell when it loads the set: encoding does not belong under
    /// the core's lock.
    pub opus: Vec<(Arc<str>, u64)>,
}

/// The canaries the operator configured (loaded by the shell).
#[derive(Debug, Clone, Default)]
pub struct CanarySet {
    pub canaries: Vec<Canary>,
}

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustState {
    /// No canary set: every node is taken on trust.
    Unchecked,
    /// Takes only paired sessions: not verified, not needed.
    Exempt,
    /// New (or failed once since trusted): canaries, no public jobs.
    Probation,
    /// Passed its canaries.
    Trusted,
    /// Failed its canaries: no public jobs until an operator acts.
    Quarantined,
}

impl TrustState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Exempt => "exempt",
            Self::Probation => "probation",
            Self::Trusted => "trusted",
            Self::Quarantined => "quarantined",
        }
    }
}

/// A node's trust record (kept across its reconnects).
#[derive(Debug, Clone)]
pub(super) struct NodeTrust {
    pub state: TrustState,
    /// Copied from the configuration: paired sessions ignore trust.
    pub exempt_paired: bool,
    /// Verified by canaries (not merely trusted by configuration).
    pub verified: bool,
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
    /// Since probation began.
    pub probation_passes: u32,
    pub probation_fails: u32,
    pub last_failure: Option<String>,
    /// A canary is owed (a trusted node's random check).
    pub canary_due: bool,
    pub next_canary_at: Millis,
    /// The canary it runs now.
    pub inflight: Option<String>,
    /// Canaries sent so far: on probation, the next is the next fitting
    /// one in turn (from a random start), so every language pair the node
    /// claims is checked before any repeats.
    pub sent: u32,
}

impl NodeTrust {
    pub(super) fn new(state: TrustState, exempt_paired: bool) -> Self {
        Self {
            state,
            exempt_paired,
            verified: false,
            passed: 0,
            failed: 0,
            inconclusive: 0,
            probation_passes: 0,
            probation_fails: 0,
            last_failure: None,
            canary_due: false,
            next_canary_at: 0,
            inflight: None,
            sent: 0,
        }
    }

    /// Whether a job may go to this node: a public one only when trusted
    /// (or unchecked), a paired one also when paired sessions are exempt.
    pub(super) fn may_serve(&self, paired: bool) -> bool {
        match self.state {
            TrustState::Unchecked | TrustState::Trusted | TrustState::Exempt => true,
            TrustState::Probation | TrustState::Quarantined => paired && self.exempt_paired,
        }
    }

    /// Canaries passed, smoothed (a node never checked scores 0.5).
    pub(super) fn score(&self) -> f64 {
        (f64::from(self.passed) + 1.0) / (f64::from(self.passed) + f64::from(self.failed) + 2.0)
    }

    pub(super) fn view(&self) -> TrustView {
        TrustView {
            state: self.state,
            verified: self.verified,
            canaries_passed: self.passed,
            canaries_failed: self.failed,
            canaries_inconclusive: self.inconclusive,
            score: (self.score() * 1000.0).round() / 1000.0,
            last_failure: self.last_failure.clone(),
        }
    }
}

/// A node's trust, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrustView {
    pub state: TrustState,
    pub verified: bool,
    pub canaries_passed: u32,
    pub canaries_failed: u32,
    pub canaries_inconclusive: u32,
    pub score: f64,
    pub last_failure: Option<String>,
}

/// A canary on its way.
#[derive(Debug)]
struct Inflight {
    node: String,
    canary: usize,
    session_id: String,
    index: u64,
    audio_ms: u64,
    pipeline: Pipeline,
    started: Millis,
    deadline: Millis,
}

/// The trust part of the core's state.
#[derive(Debug, Default)]
pub(super) struct Trust {
    pub cfg: TrustConfig,
    set: Option<CanarySet>,
    inflight: HashMap<String, Inflight>,
}

impl Trust {
    pub(super) fn new(cfg: TrustConfig, set: Option<CanarySet>) -> Self {
        Self { cfg, set: set.filter(|s| !s.canaries.is_empty()), inflight: HashMap::new() }
    }

    /// The record a node starts with.
    pub(super) fn initial(&self, accept_public: bool) -> NodeTrust {
        let state = if self.set.is_none() {
            TrustState::Unchecked
        } else if !accept_public && self.cfg.exempt_paired {
            TrustState::Exempt
        } else {
            TrustState::Probation
        };
        NodeTrust::new(state, self.cfg.exempt_paired)
    }

    pub(super) fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

impl Core {
    /// Installs the trust settings and canary set (`None`: verification
    /// off). Nodes already known start over under the new rules.
    pub fn set_trust(&mut self, cfg: TrustConfig, set: Option<CanarySet>) {
        self.trust = Trust::new(cfg, set);
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            let initial = self.nodes.get(&id).map(|n| self.trust.initial(n.accept_public));
            if let (Some(n), Some(t)) = (self.nodes.get_mut(&id), initial) {
                n.trust = t;
            }
        }
        self.node_epoch += 1;
    }

    /// Sends node `id` a canary if one is owed and it has room for it.
    pub(super) fn canary_tick(&mut self, now: Millis, id: &str) {
        let Some(set) = &self.trust.set else { return };
        let Some(n) = self.nodes.get(id) else { return };
        let Some(conn) = n.conn else { return };
        if n.draining || !n.has_room(now) || n.trust.inflight.is_some() || now < n.trust.next_canary_at {
            return;
        }
        let owed = match n.trust.state {
            TrustState::Probation => true,
            TrustState::Trusted => n.trust.canary_due,
            TrustState::Unchecked | TrustState::Exempt | TrustState::Quarantined => false,
        };
        if !owed {
            return;
        }
        // Which canaries this node could serve, by the one eligibility rule
        // (trust aside: that is what is being established).
        let fits: Vec<usize> = set
            .canaries
            .iter()
            .enumerate()
            .filter(|(_, c)| eligibility::check_serves(n, id, &canary_requirements(c), self.supplied).is_ok())
            .map(|(i, _)| i)
            .collect();
        if fits.is_empty() {
            return self.no_canary_fits(now, id);
        }
        let (state, sent) = (n.trust.state, n.trust.sent);
        if state == TrustState::Trusted && self.has_waiting_work(id) {
            // Users first: the canary waits for an idle moment.
            return;
        }
        let pick = if state == TrustState::Probation {
            let turn = if sent == 0 { self.rng.random_range(0..fits.len() as u32) } else { sent };
            if let Some(n) = self.nodes.get_mut(id) {
                n.trust.sent = turn;
            }
            fits[turn as usize % fits.len()]
        } else {
            fits[self.rng.random_range(0..fits.len())]
        };
        self.send_canary(now, id, conn, pick);
    }

    fn no_canary_fits(&mut self, now: Millis, id: &str) {
        let trust_anyway = self.trust.cfg.trust_unverifiable;
        let retry = self.trust.cfg.retry_ms.max(1_000) * 6;
        let Some(n) = self.nodes.get_mut(id) else { return };
        if n.trust.state == TrustState::Probation && trust_anyway {
            tracing::info!(node = id, "no canary for this node's languages: trusted unverified (trust_unverifiable)");
            n.trust.state = TrustState::Trusted;
            self.node_epoch += 1;
            self.pump_node(now, id);
        } else {
            if n.trust.last_failure.is_none() {
                tracing::info!(node = id, "no canary for this node's languages: it stays on probation (trust_unverifiable = false)");
            }
            n.trust.canary_due = false;
            n.trust.next_canary_at = now + retry;
        }
    }

    /// Whether some queued job could run on node `id`.
    fn has_waiting_work(&mut self, id: &str) -> bool {
        let waiting: Vec<_> = self.classes.waiting().collect();
        waiting.into_iter().any(|c| {
            self.classes.get_mut(c).is_some_and(|class| {
                class.refresh(self.node_epoch, &self.nodes, self.supplied);
                class.serves(id)
            })
        })
    }

    fn send_canary(&mut self, now: Millis, id: &str, conn: ConnId, pick: usize) {
        let Some(c) = self.trust.set.as_ref().and_then(|s| s.canaries.get(pick)).cloned() else { return };
        // Fresh ids of the same form as real ones, and audio that differs
        // from one canary to the next, so a node cannot recognise one by
        // its bytes.
        let job_id = self.random_id("j-");
        let session_id = self.random_id("s-");
        let index = self.rng.random_range(1..=40u64);
        // In the format real utterances come in (their recent share of Opus),
        // so that a node cannot answer one format honestly and the other not.
        let as_opus = !c.opus.is_empty() && self.rng.random::<f64>() < self.opus_share;
        let (audio, audio_format, audio_ms) = if as_opus {
            let (b64, ms) = &c.opus[self.rng.random_range(0..c.opus.len())];
            (tolk_protocol::Base64Audio::from(b64.as_ref()), AudioFormat::Opus, *ms)
        } else {
            let (b64, ms) = self.perturbed_pcm16(&c);
            (b64.into(), AudioFormat::Pcm16, ms)
        };
        let pipeline = canary_pipeline(&c);
        let deadline_ms = self.cfg.job_timeout_base_ms + audio_ms * self.cfg.job_timeout_per_audio_s_ms / 1000;
        let assign = ServerToNode::JobAssign(JobAssign {
            job_id: job_id.clone(),
            session_id: session_id.clone(),
            utterance_index: index,
            src_lang: c.src_lang.clone(),
            tgt_lang: c.tgt_lang.clone(),
            dialect: None,
            features: Features::default(),
            pipeline,
            audio,
            audio_format,
            sample_rate: c.sample_rate,
            deadline_ms: Some(deadline_ms),
            tts_format: as_opus.then_some(AudioFormat::Opus),
        });
        let Some(n) = self.nodes.get_mut(id) else { return };
        n.running.insert(job_id.clone());
        n.trust.inflight = Some(job_id.clone());
        n.trust.canary_due = false;
        n.trust.sent = n.trust.sent.wrapping_add(1);
        tracing::debug!(node = id, canary = %c.name, state = n.trust.state.as_str(), "canary sent");
        self.trust.inflight.insert(
            job_id,
            Inflight {
                node: id.to_owned(),
                canary: pick,
                session_id,
                index,
                audio_ms,
                pipeline,
                started: now,
                deadline: now + deadline_ms,
            },
        );
        self.stats.canaries_sent += 1;
        self.stats.canaries_opus += u64::from(as_opus);
        self.out.push(Action::Send { conn, frame: Frame::node(assign) });
    }

    /// The canary's speech as pcm16 base64, padded with 0–240 ms of silence
    /// each side and scaled by 85–100 % (so no two are byte-equal), and its
    /// length in ms.
    fn perturbed_pcm16(&mut self, c: &Canary) -> (String, u64) {
        let samples = perturb(&c.samples, c.sample_rate, &mut self.rng);
        let audio_ms = samples.len() as u64 * 1000 / u64::from(c.sample_rate.max(1));
        (base64::engine::general_purpose::STANDARD.encode(tolk_protocol::audio::encode_pcm16(&samples)), audio_ms)
    }

    /// A `job_result` for a canary: scored here, never forwarded. `false`
    /// when `r` is not a canary's.
    pub(super) fn on_canary_result(&mut self, now: Millis, conn: ConnId, node_id: &str, r: &JobResult) -> bool {
        let Some(inf) = self.trust.inflight.get(&r.job_id) else { return false };
        if inf.node != node_id || inf.session_id != r.session_id || inf.index != r.utterance_index {
            self.stats.rejected_results += 1;
            let err = ProtocolError::invalid_field("job_id", "this node holds no such job").to_message();
            self.send_error(conn, err);
            return true;
        }
        let Some(inf) = self.trust.inflight.remove(&r.job_id) else { return true };
        let busy = r.error.as_ref().is_some_and(|e| e.code == tolk_protocol::JobErrorCode::NodeBusy);
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(&r.job_id);
            n.trust.inflight = None;
            if !busy {
                n.reported_running = n.reported_running.saturating_sub(1);
            }
        }
        let verdict = match self.trust.set.as_ref().and_then(|s| s.canaries.get(inf.canary)) {
            Some(c) => {
                let expected = Expected {
                    text: &c.text,
                    translations: &c.translations,
                    audio_ms: inf.audio_ms,
                    wants_translation: inf.pipeline.use_nmt,
                    wants_speech: inf.pipeline.use_tts,
                };
                let t = Thresholds {
                    min_ms_per_audio_s: self.trust.cfg.min_ms_per_audio_s,
                    max_text_error: self.trust.cfg.max_text_error,
                    min_translation_recall: self.trust.cfg.min_translation_recall,
                };
                score::judge(&expected, r, now.saturating_sub(inf.started), &t)
            }
            // The set changed meanwhile: this answer proves nothing.
            None => Verdict::Inconclusive("the canary set changed".into()),
        };
        self.apply_verdict(now, node_id, verdict);
        self.pump_node(now, node_id);
        self.canary_tick(now, node_id);
        true
    }

    fn apply_verdict(&mut self, now: Millis, id: &str, verdict: Verdict) {
        let cfg = &self.trust.cfg;
        let (need, limit, retry) = (cfg.probation_canaries.max(1), cfg.quarantine_after.max(1), cfg.retry_ms);
        let Some(n) = self.nodes.get_mut(id) else { return };
        let before = n.trust.state;
        let t = &mut n.trust;
        match verdict {
            Verdict::Pass => {
                self.stats.canary("pass");
                t.passed += 1;
                if t.state == TrustState::Probation {
                    t.probation_passes += 1;
                    if t.probation_passes >= need {
                        t.state = TrustState::Trusted;
                        t.verified = true;
                    }
                }
            }
            Verdict::Fail { reason, detail } => {
                self.stats.canary("fail");
                *self.stats.canary_failures.entry(reason).or_insert(0) += 1;
                t.failed += 1;
                t.last_failure = Some(format!("{reason}: {detail}"));
                if t.state == TrustState::Trusted {
                    t.state = TrustState::Probation;
                    t.probation_passes = 0;
                    t.probation_fails = 0;
                }
                t.probation_fails += 1;
                if t.probation_fails >= limit {
                    t.state = TrustState::Quarantined;
                }
                tracing::warn!(node = id, reason, %detail, state = t.state.as_str(), "node failed a canary");
            }
            Verdict::Inconclusive(why) => {
                self.stats.canary("inconclusive");
                t.inconclusive += 1;
                t.next_canary_at = now + retry;
                tracing::info!(node = id, %why, "canary inconclusive");
            }
        }
        let after = n.trust.state;
        if before != after {
            self.node_epoch += 1;
            match after {
                TrustState::Trusted => tracing::info!(node = id, "node passed its canaries: trusted"),
                TrustState::Quarantined => {
                    self.stats.nodes_quarantined += 1;
                    tracing::warn!(node = id, "node quarantined: it gets no public jobs until an operator puts it back on probation");
                }
                _ => tracing::warn!(node = id, "node back on probation"),
            }
        }
    }

    /// A trusted node finished a public job: maybe owe it a canary.
    pub(super) fn after_public_job(&mut self, id: &str) {
        let rate = self.trust.cfg.canary_rate;
        if self.trust.set.is_none() || rate <= 0.0 {
            return;
        }
        let draw: f64 = self.rng.random();
        if let Some(n) = self.nodes.get_mut(id)
            && n.trust.state == TrustState::Trusted
            && draw < rate
        {
            n.trust.canary_due = true;
        }
    }

    /// Canaries past their deadline prove nothing; nodes owed one get it.
    pub(super) fn sweep_canaries(&mut self, now: Millis) {
        if self.trust.set.is_none() {
            return;
        }
        let late: Vec<String> = self.trust.inflight.iter().filter(|(_, i)| i.deadline <= now).map(|(j, _)| j.clone()).collect();
        for job_id in late {
            if let Some(inf) = self.trust.inflight.remove(&job_id) {
                if let Some(n) = self.nodes.get_mut(&inf.node) {
                    n.running.remove(&job_id);
                    n.trust.inflight = None;
                }
                self.apply_verdict(now, &inf.node, Verdict::Inconclusive("no answer by the deadline".into()));
            }
        }
        let owed: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.conn.is_some()
                    && n.trust.inflight.is_none()
                    && (n.trust.state == TrustState::Probation || (n.trust.state == TrustState::Trusted && n.trust.canary_due))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in owed {
            self.canary_tick(now, &id);
        }
    }

    /// The node's connection is gone: its canary proves nothing.
    pub(super) fn canary_lost(&mut self, id: &str) {
        let Some(n) = self.nodes.get_mut(id) else { return };
        if let Some(job_id) = n.trust.inflight.take() {
            n.running.remove(&job_id);
            self.trust.inflight.remove(&job_id);
        }
    }

    /// Operator: put node `id` back on probation (`vouch: false`), or trust
    /// it without canaries (`vouch: true`).
    pub(super) fn set_node_trust(&mut self, now: Millis, id: &str, vouch: bool) -> Result<(), String> {
        let n = self.nodes.get_mut(id).ok_or_else(|| format!("no node {id}"))?;
        if vouch {
            n.trust.state = TrustState::Trusted;
            n.trust.verified = false;
        } else {
            n.trust.state = if self.trust.set.is_some() { TrustState::Probation } else { TrustState::Unchecked };
            n.trust.probation_passes = 0;
            n.trust.probation_fails = 0;
            n.trust.next_canary_at = 0;
        }
        tracing::info!(node = id, state = n.trust.state.as_str(), "node trust set by the operator");
        self.node_epoch += 1;
        self.pump_node(now, id);
        self.canary_tick(now, id);
        Ok(())
    }
}

/// `samples` padded with 0–240 ms of silence each side and scaled by
/// 85–100 %: the same speech, never the same bytes twice.
pub fn perturb(samples: &[i16], sample_rate: u32, rng: &mut rand::rngs::StdRng) -> Vec<i16> {
    let pad = |rng: &mut rand::rngs::StdRng| (sample_rate as usize / 100) * rng.random_range(0..=24usize);
    let (before, after) = (pad(rng), pad(rng));
    let gain: f32 = rng.random_range(0.85..1.0);
    let mut v = Vec::with_capacity(before + samples.len() + after);
    v.resize(before, 0);
    v.extend(samples.iter().map(|&s| (f32::from(s) * gain).round() as i16));
    v.resize(v.len() + after, 0);
    v
}

/// What a canary asks of a node: a public job of its languages.
fn canary_requirements(c: &Canary) -> Requirements {
    Requirements {
        src_lang: c.src_lang.clone(),
        tgt_lang: c.tgt_lang.clone(),
        dialect: None,
        features: Features::default(),
        pipeline: canary_pipeline(c),
        paired_node: None,
    }
}

/// The pipeline a real utterance of these languages gets.
fn canary_pipeline(c: &Canary) -> Pipeline {
    Pipeline { use_asr: true, use_nmt: !c.src_lang.eq_ignore_ascii_case(&c.tgt_lang), use_tts: true }
}
