//! Sessions: init and pairing, resume (extension 6), heartbeats, utterance
//! admission (extensions 1, 8, 10), ordered delivery of outcomes (extension 2),
//! idle expiry.

use std::collections::HashSet;

use tolk_protocol::common::{ErrorCode, ErrorMessage, Features};
use tolk_protocol::node::{JobAssign, Pipeline};
use tolk_protocol::session::{ClientHeartbeat, ServerHeartbeat, SessionCloseAck, SessionInit, SessionInitAck, Utterance};
use tolk_protocol::{AudioFormat, ClientToServer, ProtocolError, ServerToClient, ServerToNode};

use super::admission;
use super::cluster::{PeerMsg, SessionRecord, StoreOp};
use super::eligibility::Requirements;
use super::jobs::{Detection, Job, JobState, Outcome, Placed};
use super::order::{Accept, OrderBuffer};
use super::pairing::Refusal;
use super::timer::Timer;
use super::{Action, ConnId, Core, Frame, Millis, add_index};

fn at_capacity() -> ErrorMessage {
    ErrorMessage { code: ErrorCode::InternalError, message: "the server is at capacity; try again later".into(), details: None }
}

fn unknown_session() -> ErrorMessage {
    ErrorMessage { code: ErrorCode::InvalidSession, message: "unknown or expired session; start a new one".into(), details: None }
}

#[derive(Debug)]
pub(super) struct Session {
    pub resume_token: String,
    pub conn: Option<ConnId>,
    pub src_lang: String,
    pub tgt_lang: String,
    pub features: Features,
    /// Extension 12: the speech format the client asked its results in.
    pub tts_format: Option<AudioFormat>,
    pub paired_node: Option<String>,
    pub last_node: Option<String>,
    pub order: OrderBuffer<Frame>,
    /// Job ids of utterances without an outcome.
    pub jobs: HashSet<String>,
    pub last_activity: Millis,
    pub detached_at: Option<Millis>,
    /// When the CPU shedder last refused this session past its guaranteed
    /// one (it sends past its share).
    pub cpu_refused_at: Option<Millis>,
    /// When the CPU shedder last refused this session at all.
    pub cpu_refused_last: Option<Millis>,
    /// Until when the CPU shedder holds a slot for this session's next
    /// utterance (it was refused lately, and an outcome freed the slot).
    pub reserved_until: Option<Millis>,
    /// Its results per second, for fairness while the CPU is the limit.
    pub served: admission::DrainMeter,
}

impl Core {
    pub(super) fn on_session_msg(&mut self, now: Millis, conn: ConnId, msg: ClientToServer) {
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
                self.send_client(conn, ServerToClient::SessionCloseAck(SessionCloseAck { session_id: id.clone() }));
                self.drop_session(&id, "closed", true);
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
            return self.send_error(conn, at_capacity());
        }
        let features = init.features.unwrap_or_default();
        if let Some(err) = self.unsupported_features(features) {
            return self.send_error(conn, err);
        }
        let paired_node = match &init.pairing_code {
            Some(code) => {
                let nodes = &self.nodes;
                let (max, window) = (self.cfg.pairing_max_failures, self.cfg.pairing_window_ms);
                match self.pairing.redeem(now, addr, code, max, window, |n| nodes.contains_key(n)) {
                    Ok(node) => Some(node),
                    Err(Refusal::RateLimited) => {
                        self.stats.pairing_rate_limited += 1;
                        let message = "too many wrong pairing codes; wait a minute".into();
                        return self.send_error(conn, ErrorMessage { code: ErrorCode::RateLimited, message, details: None });
                    }
                    Err(Refusal::Unknown) => {
                        self.stats.pairing_failures += 1;
                        if self.cluster.is_some() {
                            // The guess limit holds across the cluster.
                            self.out.push(Action::Peer { to: None, msg: PeerMsg::PairingFailure { addr } });
                        }
                        let message = "Pairing code not found or expired".into();
                        return self.send_error(conn, ErrorMessage { code: ErrorCode::InvalidPairingCode, message, details: None });
                    }
                }
            }
            None => None,
        };
        let id = self.random_id("s-");
        let record = SessionRecord { src_lang: init.src_lang, tgt_lang: init.tgt_lang, features, tts_format: init.tts_format, paired_node };
        self.store(|| StoreOp::PutSession { session_id: id.clone(), record: record.clone() });
        let order = OrderBuffer::new(self.cfg.max_retained_outcomes, self.cfg.max_retained_bytes);
        let session = self.session_from(&id, &record, order, Some(conn), now);
        let (resume_token, paired_node) = (session.resume_token.clone(), record.paired_node);
        self.sessions.insert(id.clone(), session);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(id.clone());
        }
        self.stats.sessions_opened += 1;
        self.timers.arm(now + self.cfg.session_idle_ms, Timer::Session(id.clone()));
        let message = if paired_node.is_some() { "session created, paired" } else { "session created" };
        let ack =
            SessionInitAck { session_id: id, assigned_node_id: paired_node, message: message.into(), resume_token: Some(resume_token) };
        self.send_client(conn, ServerToClient::SessionInitAck(ack));
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

    fn resume(&mut self, now: Millis, conn: ConnId, id: &str, token: &str, last: Option<u64>) {
        let valid = self.token_valid("resume", id, token);
        if valid && !self.sessions.contains_key(id) && self.lookup_session(conn, id, last) {
            // Held by another dispatcher of the cluster, or by one that died:
            // the answer comes as `Input::SessionFound`.
            return;
        }
        if !valid || !self.sessions.contains_key(id) {
            return self.send_error(conn, unknown_session());
        }
        self.attach(now, conn, id, last);
    }

    /// A session as `record` describes it, its resume token derived.
    fn session_from(&self, id: &str, record: &SessionRecord, order: OrderBuffer<Frame>, conn: Option<ConnId>, now: Millis) -> Session {
        Session {
            resume_token: self.derive_token("resume", id),
            conn,
            src_lang: record.src_lang.clone(),
            tgt_lang: record.tgt_lang.clone(),
            features: record.features,
            tts_format: record.tts_format,
            paired_node: record.paired_node.clone(),
            last_node: None,
            order,
            jobs: HashSet::new(),
            last_activity: now,
            detached_at: None,
            cpu_refused_at: None,
            cpu_refused_last: None,
            reserved_until: None,
            served: admission::DrainMeter::default(),
        }
    }

    /// The session `id` (known here) continues on `conn`.
    fn attach(&mut self, now: Millis, conn: ConnId, id: &str, last: Option<u64>) {
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
        let confirmed = last.map(|l| s.order.confirm(l)).unwrap_or_default();
        let resend = s.order.resend_after(None);
        if !confirmed.is_empty() {
            self.store(|| StoreOp::DeleteOutcomes { session_id: id.to_owned(), indexes: confirmed });
        }
        if let Some(old) = previous.filter(|&old| old != conn) {
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
            }
            self.close(old);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(id.to_owned());
        }
        self.stats.sessions_resumed += 1;
        self.send_client(conn, ServerToClient::SessionInitAck(ack));
        for (_, frame) in resend {
            self.out.push(Action::Send { conn, frame });
        }
        self.flush_session(id);
    }

    /// The cluster's store answered a look-up: rebuild the session here
    /// from its record and its unconfirmed outcomes, and tell the other
    /// dispatchers it moved.
    pub(super) fn on_session_found(
        &mut self,
        now: Millis,
        conn: ConnId,
        id: &str,
        last: Option<u64>,
        found: Option<(SessionRecord, Vec<(u64, Frame)>)>,
    ) {
        if !self.take_lookup(conn, id) || self.conns.get(&conn).is_none_or(|c| c.session.is_some()) {
            return;
        }
        if self.sessions.contains_key(id) {
            // Resumed here meanwhile on another connection.
            return self.attach(now, conn, id, last);
        }
        let Some((record, outcomes)) = found else {
            self.stats.session_lookups_missed += 1;
            return self.send_error(conn, unknown_session());
        };
        if self.sessions.len() >= self.cfg.max_sessions {
            return self.send_error(conn, at_capacity());
        }
        let mut order = OrderBuffer::new(self.cfg.max_retained_outcomes, self.cfg.max_retained_bytes);
        order.restore_sent(outcomes);
        let session = self.session_from(id, &record, order, None, now);
        self.sessions.insert(id.to_owned(), session);
        self.stats.sessions_restored += 1;
        self.timers.arm(now + self.cfg.session_idle_ms, Timer::Session(id.to_owned()));
        self.out.push(Action::Peer { to: None, msg: PeerMsg::SessionMoved { session_id: id.to_owned() } });
        self.store(|| StoreOp::PutSession { session_id: id.to_owned(), record });
        self.attach(now, conn, id, last);
    }

    fn on_client_heartbeat(&mut self, now: Millis, conn: ConnId, id: &str, h: ClientHeartbeat) {
        if let (Some(last), Some(s)) = (h.last_utterance_index, self.sessions.get_mut(id)) {
            let confirmed = s.order.confirm(last);
            if !confirmed.is_empty() {
                self.store(|| StoreOp::DeleteOutcomes { session_id: id.to_owned(), indexes: confirmed });
            }
        }
        self.send_client(conn, ServerToClient::ServerHeartbeat(ServerHeartbeat { session_id: id.to_owned(), timestamp: now }));
    }

    /// A refusal: the utterance is not accepted (no outcome follows) and the
    /// client may send it again after `retry_after_ms`.
    fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: String, index: u64, retry_after_ms: u64) {
        self.stats.refusal(code.as_str());
        let details = serde_json::json!({ "field": "utterance_index", "refused_index": index, "retry_after_ms": retry_after_ms });
        self.send_error(conn, ErrorMessage { code, message, details: Some(details) });
    }

    fn on_utterance(&mut self, now: Millis, conn: ConnId, id: &str, u: Utterance) {
        let Some(s) = self.sessions.get_mut(id) else { return };
        let index = u.utterance_index;
        // Bounded before acceptance: a refusal takes no slot, so a flood
        // cannot grow the buffer (outcomes held behind a slow index count too).
        let unsent = s.order.unsent();
        if unsent >= self.cfg.max_pending_per_session && !s.order.is_pending(index) {
            let msg = format!("more than {} utterances are waiting for results; send it again later", self.cfg.max_pending_per_session);
            let retry = admission::retry_after_ms(unsent, 0.0, 1_000);
            return self.refuse(conn, ErrorCode::RateLimited, msg, index, retry);
        }
        match s.order.accept(index) {
            Accept::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Accept::TooLate => {
                let message = format!("utterance_index {index} is at or below one already answered; indexes must increase");
                let details = Some(serde_json::json!({ "field": "utterance_index", "refused_index": index }));
                return self.send_error(conn, ErrorMessage { code: ErrorCode::InvalidMessage, message, details });
            }
            Accept::Accepted => {}
        }
        // The dispatcher's own CPU is the limit: a session at its share of
        // the window is refused at once (cheaper than serving it late),
        // before any work is spent on it.
        let classes = &self.classes;
        // A session refused lately sends past its share (a flood), unless it
        // is served less than an even share of what is served: without that,
        // phones that each kept one in flight (their results quicker than
        // their sends) took the whole window at their full rate, and phones
        // that had fallen behind (every send a second one) were starved, 4
        // served where the even share was 50.
        let flooding = s.cpu_refused_at.is_some_and(|at| now < at + admission::CpuShedder::FLOOD_MEMORY_MS)
            && self.shedder.fair_per_s(classes.active_sessions()).is_none_or(|fair| s.served.per_s(now) >= fair);
        let last_refused = s.cpu_refused_last;
        // A replacement for an outcome just sent takes the slot held for it.
        let reserved = s.reserved_until.take().is_some_and(|until| now < until) && self.shedder.take_reserved(now);
        if reserved {
            self.stats.cpu_replacements += 1;
        } else if let Err(retry) = self.shedder.admit(now, self.jobs.len(), unsent, flooding, last_refused, || classes.active_sessions()) {
            // Jittered: sessions refused in one burst, told the same wait,
            // came back in one burst a wait later, were refused together
            // again (now as repeats, the long wait), and so on: at about the
            // capacity on one core, a refusal burst every second.
            let retry = self.jittered(retry);
            if let Some(s) = self.sessions.get_mut(id) {
                s.order.withdraw(index);
                s.cpu_refused_last = Some(now);
                // Only asking past the guaranteed one marks a flood: a
                // session refused with nothing in flight gets its one back
                // once the mark has aged, and is never starved.
                if unsent > 0 {
                    s.cpu_refused_at = Some(now);
                }
            }
            self.stats.cpu_shed += 1;
            let msg = "the dispatcher is overloaded; send it again later".to_owned();
            return self.refuse(conn, ErrorCode::RateLimited, msg, index, retry);
        }
        let opus = f64::from(u8::from(u.audio_format == AudioFormat::Opus));
        self.opus_share = 0.95 * self.opus_share + 0.05 * opus;
        let Some(s) = self.sessions.get(id) else { return };
        let session_features = s.features;
        let tts_format = s.tts_format;
        let paired_node = s.paired_node.clone();
        if !self.cfg.sample_rates.contains(&u.sample_rate) {
            self.stats.utterances += 1;
            let err = ProtocolError::invalid_field("sample_rate", format!("sample_rate must be one of {:?}", self.cfg.sample_rates));
            let mut msg = err.to_message();
            add_index(&mut msg, index);
            return self.finish(id, index, Outcome::Error(msg));
        }
        // Opus is checked here, before any node spends time on it: a stream
        // that is not one complete mono Ogg Opus stream is refused naming
        // why; a valid one tells its length (for the deadline and policies).
        let audio_ms = match audio_ms(&u) {
            Ok(ms) => ms,
            Err(why) => {
                self.stats.utterances += 1;
                let details = serde_json::json!({ "utterance_index": index, "field": "audio" });
                let msg = ErrorMessage { code: ErrorCode::InvalidAudio, message: why.message, details: Some(details) };
                return self.finish(id, index, Outcome::Error(msg));
            }
        };
        let features = u.features.unwrap_or(session_features);
        if let Some(mut err) = self.unsupported_features(features) {
            self.stats.utterances += 1;
            add_index(&mut err, index);
            return self.finish(id, index, Outcome::Error(err));
        }
        if self.jobs.len() >= self.cfg.max_queued_jobs + self.cfg.max_nodes * self.cfg.max_jobs_per_node as usize {
            self.stats.utterances += 1;
            let mut err = ErrorMessage::for_utterance(ErrorCode::NodeUnavailable, "the server is at capacity", index);
            if let Some(serde_json::Value::Object(d)) = &mut err.details {
                d.insert("retry_after_ms".into(), self.cfg.admission_wait_ms.min(5_000).into());
            }
            return self.finish(id, index, Outcome::Error(err));
        }
        let detect = Features {
            emotion_detection: features.emotion_detection && self.supplied.emotion_detection,
            voice_style_detection: features.voice_style_detection && self.supplied.voice_style_detection,
            speech_rate_detection: features.speech_rate_detection && self.supplied.speech_rate_detection,
        };
        let (format, rate) = (u.audio_format, u.sample_rate);
        let pipeline = Pipeline { use_asr: true, use_nmt: !u.src_lang.eq_ignore_ascii_case(&u.tgt_lang), use_tts: true };
        let deadline_ms = self.cfg.job_timeout_base_ms + audio_ms * self.cfg.job_timeout_per_audio_s_ms / 1000;
        let job_id = self.random_id("j-");
        let req = Requirements {
            src_lang: u.src_lang.clone(),
            tgt_lang: u.tgt_lang.clone(),
            dialect: u.dialect.clone(),
            features,
            pipeline,
            paired_node,
        };
        let class = self.classes.id_for(&req);
        // Only when a detector will read it is the audio copied.
        let detect_audio: Option<std::sync::Arc<str>> = (!detect.is_empty()).then(|| u.audio.as_str().into());
        // The frame is built once, with the client's audio spliced in as its
        // raw JSON text (extension 9); retries resend the same frame.
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
            tts_format,
        });
        self.next_seq += 1;
        let job = Job {
            session: id.to_owned(),
            index,
            frame: Frame::node(assign),
            class,
            seq: self.next_seq,
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
        self.classes.enter(class, id);
        if let Some(s) = self.sessions.get_mut(id) {
            s.jobs.insert(job_id.clone());
        }
        match self.place_new(now, &job_id) {
            Placed::OverShare { retry_after_ms } => {
                if let Some(s) = self.sessions.get_mut(id) {
                    s.order.withdraw(index);
                }
                let msg = "this session is over its share of a saturated fleet; send it again later".to_owned();
                return self.refuse(conn, ErrorCode::RateLimited, msg, index, retry_after_ms);
            }
            Placed::Queued => {
                self.timers.arm(now + self.cfg.admission_wait_ms, Timer::Job(job_id.clone()));
            }
            Placed::Running => {}
        }
        self.stats.utterances += 1;
        if let Some(audio) = detect_audio.filter(|_| self.jobs.contains_key(&job_id)) {
            self.out.push(Action::Detect { job_id, audio, format, sample_rate: rate, features: detect });
        }
    }

    pub(super) fn flush_session(&mut self, session: &str) {
        let Some(s) = self.sessions.get_mut(session) else { return };
        // A detached session keeps its outcomes until a resume.
        let Some(conn) = s.conn else { return };
        let stored = self.cluster.is_some();
        while let Some((index, frame)) = s.order.pop_ready() {
            if stored {
                // Kept by the cluster until confirmed: a resume on another
                // dispatcher re-sends it. Stored in send order.
                let op = StoreOp::PutOutcome { session_id: session.to_owned(), index, frame: frame.clone() };
                self.out.push(Action::Store(op));
            }
            self.out.push(Action::Send { conn, frame });
        }
    }

    /// Forgets session `id`; with `forget_stored`, the cluster's copy too
    /// (not when it moved to another dispatcher, which serves it now).
    pub(super) fn drop_session(&mut self, id: &str, why: &str, forget_stored: bool) {
        let Some(s) = self.sessions.get(id) else { return };
        if forget_stored {
            let outcomes = s.order.sent_indexes();
            self.store(|| StoreOp::DeleteSession { session_id: id.to_owned(), outcomes });
        }
        let Some(s) = self.sessions.get(id) else { return };
        let jobs: Vec<String> = s.jobs.iter().cloned().collect();
        for job_id in jobs {
            let running = self.jobs.get(&job_id).is_some_and(|j| matches!(j.state, JobState::Running { .. }));
            if running {
                // The node is still busy with it: keep the job to free the slot later.
                if let Some(j) = self.jobs.get_mut(&job_id) {
                    j.orphaned = true;
                }
            } else {
                self.remove_job(&job_id);
            }
        }
        self.sessions.remove(id);
        tracing::debug!(session = id, why, "session dropped");
    }

    pub(super) fn on_session_timer(&mut self, now: Millis, id: &str) {
        let Some(s) = self.sessions.get(id) else { return };
        let due = match s.detached_at {
            Some(at) => at + self.cfg.resume_grace_ms,
            // Work in flight keeps a session alive.
            None if !s.jobs.is_empty() => now + self.cfg.session_idle_ms,
            None => s.last_activity + self.cfg.session_idle_ms,
        };
        if due > now {
            return self.timers.arm(due, Timer::Session(id.to_owned()));
        }
        if let Some(conn) = s.conn {
            let err = ErrorMessage { code: ErrorCode::InvalidSession, message: "session expired after inactivity".into(), details: None };
            self.send_error(conn, err);
            self.close(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        self.stats.sessions_expired += 1;
        self.drop_session(id, "expired", true);
    }
}

/// Audio length from the base64 length alone for pcm16 and wav (exact for
/// pcm16, close for wav); for Opus, from the stream's final granule position,
/// after validating the stream ([`tolk_protocol::ogg_opus::inspect`]: pages,
/// CRCs, OpusHead, mono, bounded length). Decodes no audio.
pub(super) fn audio_ms(u: &Utterance) -> Result<u64, ProtocolError> {
    let bytes = (u.audio.len() as u64 * 3 / 4).saturating_sub(if u.audio_format == AudioFormat::Wav { 44 } else { 0 });
    match u.audio_format {
        AudioFormat::Pcm16 | AudioFormat::Wav => Ok(bytes / 2 * 1000 / u64::from(u.sample_rate.max(1))),
        AudioFormat::Opus => {
            let raw = tolk_protocol::audio::from_base64(u.audio.as_str())?;
            Ok(tolk_protocol::ogg_opus::inspect(&raw)?.duration_ms())
        }
    }
}
