//! Randomized invariant test of the core: thousands of random event
//! sequences (nodes joining, leaving, crashing, going silent, slow and failing
//! jobs, duplicate and out-of-order sends, lost frames, reconnects, resumes,
//! drains, pairing, forged results), checking after every step that:
//!
//! - no job is sent to an ineligible node (dead, draining, missing a model,
//!   public/paired rules, or a node that already had this job);
//! - outcomes reach each client in strictly increasing index order, never
//!   twice;
//! - every bounded collection stays bounded;
//!
//! and at the end, once the network calms down, that every accepted
//! utterance got exactly one outcome.
//!
//! `TOLK_INVARIANT_SEQUENCES=N` sets the number of sequences (default 2000).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use std::collections::{BTreeSet, HashMap};

use harness::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::core::{AdminCommand, ConnId, Endpoint};
use tolk_protocol::node::{InstalledModel, JobAssign, PairingCodeRequest};
use tolk_protocol::session::{ClientHeartbeat, SessionClose};
use tolk_protocol::{ClientToServer, JobErrorCode, Message, NodeToServer, ServerToClient, ServerToNode};

const PAIRS: [(&str, &str); 3] = [("en", "es"), ("en", "fr"), ("es", "en")];

struct NodeM {
    conn: ConnId,
    id: String,
    token: String,
    pairs: Vec<(&'static str, &'static str)>,
    enabled: Vec<bool>,
    public: bool,
    draining: bool,
    alive: bool,
    silent: bool,
    jobs: Vec<JobAssign>,
}

struct SessionM {
    id: String,
    token: String,
    conn: Option<ConnId>,
    pair: (&'static str, &'static str),
    paired: Option<String>,
    next: u64,
    accepted: BTreeSet<u64>,
    received: BTreeSet<u64>,
    last: Option<u64>,
    closed: bool,
}

struct World {
    sim: Sim,
    rng: StdRng,
    nodes: Vec<NodeM>,
    sessions: Vec<SessionM>,
    codes: Vec<(String, String)>,
    /// (job_id, node_id) pairs ever assigned.
    assigned: BTreeSet<(String, String)>,
    cfg: CoreConfig,
    steps: usize,
}

impl World {
    fn new(seed: u64) -> Self {
        let cfg = CoreConfig {
            resume_grace_ms: 3_600_000,
            session_idle_ms: 3_600_000,
            max_jobs_per_node: 2,
            max_attempts: 3,
            admission_wait_ms: 4_000,
            max_pending_per_session: 8,
            max_retained_outcomes: 8,
            ..CoreConfig::default()
        };
        Self {
            sim: Sim::seeded(cfg.clone(), seed),
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            sessions: Vec::new(),
            codes: Vec::new(),
            assigned: BTreeSet::new(),
            cfg,
            steps: 0,
        }
    }

    fn node_models(n: &NodeM) -> Vec<InstalledModel> {
        let mut list = models(&n.pairs);
        for (i, enabled) in n.enabled.iter().enumerate() {
            if !enabled {
                list[i * 3 + 1].enabled = Some(false); // the pair's nmt model
            }
        }
        list
    }

    fn serves(n: &NodeM, src: &str, tgt: &str) -> bool {
        let asr = n.pairs.iter().any(|p| p.0 == src);
        let tts = n.pairs.iter().any(|p| p.1 == tgt);
        let nmt = n.pairs.iter().zip(&n.enabled).any(|(p, e)| *e && p.0 == src && p.1 == tgt);
        asr && nmt && tts
    }

    /// Reads every frame the core sent and checks it against the model.
    fn deliver(&mut self) {
        for ni in 0..self.nodes.len() {
            let conn = self.nodes[ni].conn;
            // Frames queued before a close were sent while the node was
            // connected (the harness asserts none follow a close): read them first.
            for msg in self.sim.take_node(conn) {
                match msg {
                    ServerToNode::JobAssign(job) => self.check_assignment(ni, job),
                    ServerToNode::PairingCode(p) => self.codes.push((p.code, p.node_id)),
                    _ => {}
                }
            }
            if self.sim.closed.contains(&conn) && self.nodes[ni].alive {
                self.nodes[ni].alive = false;
                self.nodes[ni].jobs.clear();
            }
        }
        for si in 0..self.sessions.len() {
            let Some(conn) = self.sessions[si].conn else { continue };
            if self.sim.closed.contains(&conn) {
                self.sessions[si].conn = None;
            }
            for msg in self.sim.take_client(conn) {
                self.check_outcome(si, &msg);
            }
        }
    }

    fn check_assignment(&mut self, ni: usize, job: JobAssign) {
        let n = &self.nodes[ni];
        let ctx = format!("step {} job {} on {}", self.steps, job.job_id, n.id);
        assert!(n.alive, "{ctx}: node is not alive");
        assert!(!n.draining, "{ctx}: node is draining");
        assert!(Self::serves(n, &job.src_lang, &job.tgt_lang), "{ctx}: node lacks a model for {}→{}", job.src_lang, job.tgt_lang);
        let s = self.sessions.iter().find(|s| s.id == job.session_id).unwrap_or_else(|| panic!("{ctx}: unknown session"));
        match &s.paired {
            Some(p) => assert_eq!(p, &n.id, "{ctx}: paired session's job on another node"),
            None => assert!(n.public, "{ctx}: public job on a private node"),
        }
        assert!(self.assigned.insert((job.job_id.clone(), n.id.clone())), "{ctx}: the same job twice on one node");
        self.nodes[ni].jobs.push(job);
    }

    fn check_outcome(&mut self, si: usize, msg: &ServerToClient) {
        let s = &mut self.sessions[si];
        let Some(idx) = outcome_index(msg) else { return };
        let ctx = format!("step {} session {} index {idx}", self.steps, s.id);
        assert!(s.accepted.contains(&idx), "{ctx}: outcome for an index never accepted");
        assert!(s.received.insert(idx), "{ctx}: outcome received twice");
        assert!(s.last.is_none_or(|l| idx > l), "{ctx}: out of order after {:?}", s.last);
        s.last = Some(idx);
    }

    fn check_bounds(&self) {
        let z = self.sim.core.sizes();
        let live_conns = self.nodes.iter().filter(|n| !self.sim.closed.contains(&n.conn)).count()
            + self.sessions.iter().filter(|s| s.conn.is_some_and(|c| !self.sim.closed.contains(&c))).count();
        assert!(z.conns <= live_conns + 2, "conns {} > live {live_conns}", z.conns);
        assert!(z.sessions <= self.sessions.len());
        assert!(z.max_session_buffer <= self.cfg.max_pending_per_session + self.cfg.max_retained_outcomes + 1, "{z:?}");
        let open_sessions = self.sessions.iter().filter(|s| !s.closed).count();
        assert!(
            z.jobs <= open_sessions * self.cfg.max_pending_per_session + self.nodes.len() * self.cfg.max_jobs_per_node as usize,
            "{z:?}"
        );
        assert!(z.queue <= z.jobs);
        assert!(z.codes <= self.nodes.len());
        let entities = z.conns + z.sessions + z.nodes + z.jobs + z.codes + 1;
        assert!(z.timers <= 64 * entities, "timers {} for {entities} entities", z.timers);
    }

    fn pick<T>(rng: &mut StdRng, v: &[T]) -> Option<usize> {
        (!v.is_empty()).then(|| rng.random_range(0..v.len()))
    }

    fn step(&mut self) {
        self.steps += 1;
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=4 if self.nodes.iter().filter(|n| n.alive).count() < 5 => {
                let k = self.rng.random_range(1..=2);
                let pairs: Vec<_> = (0..k).map(|_| PAIRS[self.rng.random_range(0..PAIRS.len())]).collect();
                let public = self.rng.random_bool(0.8);
                let (conn, id, token) = self.sim.register_node(&pairs, public);
                let enabled = vec![true; pairs.len()];
                self.nodes.push(NodeM {
                    conn,
                    id,
                    token,
                    pairs,
                    enabled,
                    public,
                    draining: false,
                    alive: true,
                    silent: false,
                    jobs: Vec::new(),
                });
            }
            5..=29 => {
                // A node answers one of its jobs.
                let busy: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].alive && !self.nodes[i].silent && !self.nodes[i].jobs.is_empty())
                    .collect();
                if let Some(k) = Self::pick(&mut self.rng, &busy) {
                    let ni = busy[k];
                    let j = self.rng.random_range(0..self.nodes[ni].jobs.len());
                    let job = self.nodes[ni].jobs.remove(j);
                    let (conn, id) = (self.nodes[ni].conn, self.nodes[ni].id.clone());
                    match self.rng.random_range(0..20) {
                        0..=13 => self.sim.succeed(conn, &id, &job),
                        14..=16 => self.sim.fail(conn, &id, &job, JobErrorCode::InferenceBackendError),
                        17 => self.sim.fail(conn, &id, &job, JobErrorCode::InvalidAudio),
                        _ => {} // slow: never answers; the deadline moves it
                    }
                }
            }
            30..=32 => {
                if let Some(ni) = self.live_node() {
                    if self.rng.random_bool(0.5) {
                        self.sim.disconnect(self.nodes[ni].conn);
                    } else {
                        self.nodes[ni].silent = true; // crashed without a close
                    }
                }
            }
            33..=34 => {
                // A lost node comes back with its identity.
                let gone: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.nodes[i].alive).collect();
                if let Some(k) = Self::pick(&mut self.rng, &gone) {
                    let ni = gone[k];
                    let conn = self.sim.open(Endpoint::Node);
                    let n = &mut self.nodes[ni];
                    let NodeToServer::NodeRegister(mut reg) = register(Some(&n.id), Some(&n.token), &n.pairs, n.public) else {
                        unreachable!()
                    };
                    n.enabled = vec![true; n.pairs.len()];
                    reg.installed_models = Self::node_models(n);
                    n.conn = conn;
                    n.alive = true;
                    n.silent = false;
                    n.draining = false;
                    n.jobs.clear();
                    self.sim.node(conn, NodeToServer::NodeRegister(reg));
                }
            }
            35..=37 => {
                if let Some(ni) = self.live_node() {
                    let n = &mut self.nodes[ni];
                    let i = self.rng.random_range(0..n.enabled.len());
                    n.enabled[i] = !n.enabled[i];
                    let (conn, id, list) = (n.conn, n.id.clone(), Self::node_models(n));
                    self.sim.heartbeat(conn, &id, Some(list));
                }
            }
            38 => {
                if let Some(ni) = self.live_node() {
                    let id = self.nodes[ni].id.clone();
                    self.nodes[ni].draining = true;
                    self.sim.admin(AdminCommand::Drain { node_id: id }).unwrap();
                }
            }
            39..=40 => {
                if let Some(ni) = self.live_node() {
                    let (conn, id) = (self.nodes[ni].conn, self.nodes[ni].id.clone());
                    self.sim.node(conn, NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id: id }));
                }
            }
            41 => {
                // A forged result: a node answers a job another node holds.
                let holders: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.nodes[i].jobs.is_empty()).collect();
                if let (Some(k), Some(thief)) = (Self::pick(&mut self.rng, &holders), self.live_node()) {
                    let job = self.nodes[holders[k]].jobs[0].clone();
                    if holders[k] != thief {
                        let (conn, id) = (self.nodes[thief].conn, self.nodes[thief].id.clone());
                        self.sim.succeed(conn, &id, &job);
                    }
                }
            }
            42..=46 if self.sessions.len() < 12 => self.new_session(),
            47..=79 => self.send_utterance(),
            80..=83 => {
                if let Some(si) = self.connected_session() {
                    let s = &self.sessions[si];
                    let hb = ClientHeartbeat { session_id: s.id.clone(), timestamp: 1, last_utterance_index: s.last };
                    let conn = s.conn.unwrap_or_default();
                    self.sim.client(conn, ClientToServer::ClientHeartbeat(hb));
                }
            }
            84..=86 => {
                // The client's connection dies; frames in flight may be lost.
                if let Some(si) = self.connected_session() {
                    let conn = self.sessions[si].conn.unwrap_or_default();
                    let mut frames = self.sim.take_raw(conn);
                    let keep = self.rng.random_range(0..=frames.len());
                    frames.truncate(keep);
                    for f in frames {
                        let msg = ServerToClient::parse(&f).unwrap();
                        self.check_outcome(si, &msg);
                    }
                    self.sim.disconnect(conn);
                    self.sessions[si].conn = None;
                }
            }
            87..=89 => self.resume_one(),
            90 => {
                if let Some(si) = self.connected_session() {
                    let s = &mut self.sessions[si];
                    let conn = s.conn.unwrap_or_default();
                    s.closed = true;
                    let close = SessionClose { session_id: s.id.clone(), reason: Some("user_finished".into()) };
                    self.sim.client(conn, ClientToServer::SessionClose(close));
                    self.sim.take_raw(conn);
                    self.sessions[si].conn = None;
                    self.sim.disconnect(conn);
                }
            }
            91 => {
                if let Some(si) = self.connected_session() {
                    let conn = self.sessions[si].conn.unwrap_or_default();
                    self.sim.send_text(conn, r#"{"type":"utterance","utterance_index":-1}"#);
                }
            }
            92..=93 => {
                // An overload phase: one session sends a burst far beyond
                // what the fleet can take at once (extension 10).
                if let Some(si) = self.connected_session() {
                    for _ in 0..self.rng.random_range(8..48) {
                        self.send_utterance_for(si);
                    }
                }
            }
            94 => {
                // The dispatcher's own CPU: lag readings as the shell takes
                // them, 100 ms apart, now and then long enough to shed.
                for _ in 0..self.rng.random_range(1..8) {
                    let lag_ms = [0.2, 3.0, 8.0, 40.0, 200.0][self.rng.random_range(0..5)];
                    self.sim.input(tolk_dispatcher::core::Input::Load { lag_ms, least_lag_ms: lag_ms });
                    self.advance(100);
                }
            }
            _ => {
                let ms = self.rng.random_range(0..3_000);
                self.advance(ms);
            }
        }
        self.deliver();
        self.check_bounds();
    }

    fn live_node(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].alive && !self.nodes[i].silent).collect();
        Self::pick(&mut self.rng, &live).map(|k| live[k])
    }

    fn connected_session(&mut self) -> Option<usize> {
        let open: Vec<usize> = (0..self.sessions.len()).filter(|&i| self.sessions[i].conn.is_some() && !self.sessions[i].closed).collect();
        Self::pick(&mut self.rng, &open).map(|k| open[k])
    }

    fn new_session(&mut self) {
        let pair = PAIRS[self.rng.random_range(0..PAIRS.len())];
        let conn = self.sim.open(Endpoint::Session);
        let code = match self.rng.random_range(0..10) {
            0..=2 => Self::pick(&mut self.rng, &self.codes).map(|k| self.codes[k].0.clone()),
            3 => Some("999999".to_owned()),
            _ => None,
        };
        self.sim.client(conn, init(pair.0, pair.1, code.as_deref()));
        if let Some(ServerToClient::SessionInitAck(ack)) = self.sim.take_client(conn).pop() {
            if let Some(p) = &ack.assigned_node_id {
                let entry = self.codes.iter().find(|c| Some(&c.0) == code.as_ref());
                assert_eq!(entry.map(|c| &c.1), Some(p), "bound to the node that issued the code");
            }
            self.sessions.push(SessionM {
                id: ack.session_id,
                token: ack.resume_token.unwrap_or_default(),
                conn: Some(conn),
                pair,
                paired: ack.assigned_node_id,
                next: 0,
                accepted: BTreeSet::new(),
                received: BTreeSet::new(),
                last: None,
                closed: false,
            });
        } else {
            self.sim.disconnect(conn);
        }
    }

    fn send_utterance(&mut self) {
        let Some(si) = self.connected_session() else { return };
        self.send_utterance_for(si);
    }

    fn send_utterance_for(&mut self, si: usize) {
        let s = &mut self.sessions[si];
        let conn = s.conn.unwrap_or_default();
        let index = match self.rng.random_range(0..10) {
            0 => s.next.saturating_sub(1), // duplicate of the last sent
            1 => s.next.saturating_sub(2), // out of order
            2 => {
                s.next += 2; // the client skips an index
                s.next - 1
            }
            _ => {
                s.next += 1;
                s.next - 1
            }
        };
        let (src, tgt) = s.pair;
        let before = self.sim.inbox.get(&conn).map_or(0, Vec::len);
        self.sim.client(conn, ClientToServer::Utterance(utterance(&s.id.clone(), index, src, tgt)));
        // A refusal is immediate and names the field (and the index); anything
        // else means accepted. Only the frames this utterance caused count.
        let frames = self.sim.inbox.get(&conn).cloned().unwrap_or_default();
        let refused = frames.iter().skip(before).any(|f| {
            matches!(ServerToClient::parse(f), Ok(ServerToClient::Error(e))
                if e.utterance_index().is_none()
                    && e.details.as_ref().is_some_and(|d| d["field"] == "utterance_index"
                        && d.get("refused_index").is_none_or(|i| i.as_u64() == Some(index))))
        });
        if !refused {
            self.sessions[si].accepted.insert(index);
        }
    }

    fn resume_one(&mut self) {
        let away: Vec<usize> = (0..self.sessions.len()).filter(|&i| self.sessions[i].conn.is_none() && !self.sessions[i].closed).collect();
        let Some(k) = Self::pick(&mut self.rng, &away) else { return };
        let si = away[k];
        let conn = self.sim.open(Endpoint::Session);
        let s = &self.sessions[si];
        self.sim.client(conn, resume(&s.id, &s.token, s.last));
        let frames = self.sim.take_client(conn);
        assert!(matches!(frames.first(), Some(ServerToClient::SessionInitAck(_))), "resume refused: {frames:?}");
        self.sessions[si].conn = Some(conn);
        for f in &frames {
            self.check_outcome(si, f);
        }
    }

    fn advance(&mut self, ms: u64) {
        // Live, non-silent nodes heartbeat as time passes.
        let mut left = ms;
        while left > 0 {
            let dt = left.min(2_000);
            for n in self.nodes.iter().filter(|n| n.alive && !n.silent) {
                let (conn, id) = (n.conn, n.id.clone());
                self.sim.heartbeat(conn, &id, None);
            }
            self.sim.advance(dt);
            self.deliver();
            left -= dt;
        }
    }

    /// The network calms down: every client reconnects, every live node
    /// answers everything, time passes every deadline.
    fn settle(&mut self) {
        for n in &mut self.nodes {
            n.silent = false;
        }
        for _ in 0..120 {
            while self.sessions.iter().any(|s| s.conn.is_none() && !s.closed) {
                self.resume_one();
            }
            for ni in 0..self.nodes.len() {
                if !self.nodes[ni].alive {
                    continue;
                }
                let jobs = std::mem::take(&mut self.nodes[ni].jobs);
                let (conn, id) = (self.nodes[ni].conn, self.nodes[ni].id.clone());
                for job in jobs {
                    self.sim.succeed(conn, &id, &job);
                }
            }
            self.deliver();
            self.advance(1_000);
        }
        for s in self.sessions.iter().filter(|s| !s.closed) {
            assert_eq!(s.accepted, s.received, "session {}: every accepted utterance gets exactly one outcome", s.id);
        }
        let z = self.sim.core.sizes();
        assert_eq!((z.jobs, z.queue), (0, 0), "no job left behind: {z:?}");
    }
}

#[test]
fn random_event_sequences_keep_every_invariant() {
    let sequences: u64 = std::env::var("TOLK_INVARIANT_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut stats: HashMap<&str, usize> = HashMap::new();
    for seed in 0..sequences {
        let mut w = World::new(seed);
        let steps = w.rng.random_range(50..250);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps {
                w.step();
            }
            w.settle();
            w
        }));
        match result {
            Ok(w) => {
                *stats.entry("steps").or_default() += w.steps;
                *stats.entry("utterances").or_default() += w.sessions.iter().map(|s| s.accepted.len()).sum::<usize>();
                *stats.entry("assignments").or_default() += w.assigned.len();
                *stats.entry("retries").or_default() += w.sim.core.stats().retries as usize;
                *stats.entry("resumes").or_default() += w.sim.core.stats().sessions_resumed as usize;
                *stats.entry("overload refusals").or_default() += w.sim.core.stats().refusals.values().sum::<u64>() as usize;
                *stats.entry("cpu sheds").or_default() += w.sim.core.stats().cpu_shed as usize;
                *stats.entry("unavailable").or_default() += w.sim.core.stats().unavailable_reasons.values().sum::<u64>() as usize;
            }
            Err(e) => {
                let why =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                panic!("sequence with seed {seed} broke an invariant: {why}");
            }
        }
    }
    eprintln!("invariants held over {sequences} random sequences: {stats:?}");
}
