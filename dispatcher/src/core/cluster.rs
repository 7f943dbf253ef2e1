//! The cluster (extension 13): the other dispatchers, the nodes they hold,
//! jobs forwarded to them, jobs run here for them, and the session state
//! a cluster keeps so that a phone may resume on any dispatcher.
//!
//! Sans-IO like the rest of the core. The shell carries [`PeerMsg`]s over
//! NATS and [`StoreOp`]s into JetStream KV, and feeds back what arrives;
//! this module decides:
//! - **One fleet.** Every dispatcher announces its nodes ([`FleetAd`], every
//!   `announce_ms`). Another dispatcher's nodes enter `Core::nodes` as
//!   *remote* nodes ([`Remote`]): the one eligibility rule, the class
//!   caches and the policy treat them as any node; only the route differs.
//!   A job placed on a remote node leaves as [`PeerMsg::Job`] to the
//!   dispatcher holding it, which runs it on the node as a *proxied* job
//!   and returns the node's answer as [`PeerMsg::Result`]. The origin keeps
//!   the job: its deadline, retries, ordering and exactly-one-outcome stay
//!   where the session is.
//! - **Liveness.** A peer silent for `peer_timeout_ms` is gone: its nodes are
//!   lost (their jobs retried) and kept, disconnected, only to remember
//!   their trust. A node that registers here wins over any announcement.
//! - **Sessions.** New sessions, every outcome sent and every confirmation
//!   become [`StoreOp`]s; a resume of a session unknown here asks the shell
//!   to look it up ([`super::Action::LookupSession`]) and rebuilds it from
//!   what was stored ([`super::Input::SessionFound`]), then tells the other
//!   dispatchers it moved. Outcomes are stored when sent, in send order, so
//!   the stored ones are exactly those a client may lack.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tolk_protocol::common::Features;
use tolk_protocol::node::{InstalledModel, JobError, JobResult};
use tolk_protocol::{AudioFormat, JobErrorCode};

use super::nodes::Node;
use super::timer::Timer;
use super::trust::{NodeTrust, TrustState};
use super::{Action, Core, Frame, Millis};

/// Peers remembered at once (dispatchers of one cluster).
const MAX_PEERS: usize = 256;
/// Session look-ups waiting for the store at once.
const MAX_LOOKUPS: usize = 10_000;

/// What the core needs to know of its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This dispatcher's name in the cluster (unique).
    pub id: String,
    /// A peer not heard from for this long is gone.
    pub peer_timeout_ms: Millis,
}

/// A dispatcher's announcement of the nodes it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetAd {
    pub nodes: Vec<NodeAd>,
    /// Live pairing codes of its nodes: any dispatcher redeems them.
    pub codes: Vec<CodeAd>,
}

/// One node as its dispatcher announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAd {
    pub node_id: String,
    /// False for a node that left recently (its trust is remembered).
    pub connected: bool,
    pub max_jobs: u32,
    /// Jobs it runs now, for every dispatcher together.
    pub running: u32,
    pub models: Vec<InstalledModel>,
    pub features: Features,
    pub accept_public: bool,
    pub draining: bool,
    pub trust: TrustState,
    pub verified: bool,
    pub ms_per_audio_s: Option<f64>,
    pub version: String,
    /// Its last reported CPU and memory load, 0–100 (for policies' tie-breaks).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub mem_percent: Option<f64>,
}

/// A live pairing code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeAd {
    pub code: String,
    pub node_id: String,
    pub expires_at: Millis,
}

/// A message between dispatchers.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMsg {
    Fleet(FleetAd),
    /// Run this `job_assign` frame (verbatim) on your node `node_id`.
    Job {
        job_id: String,
        node_id: String,
        session_id: String,
        utterance_index: u64,
        deadline_ms: u64,
        frame: Frame,
    },
    /// The node's answer to a forwarded job, or the holder's refusal.
    Result {
        job_id: String,
        node_id: String,
        result: Box<JobResult>,
    },
    /// This session is served by the sender now: drop it (not its stored state).
    SessionMoved {
        session_id: String,
    },
    /// A wrong pairing code from this address: the guess limit is cluster-wide.
    PairingFailure {
        addr: IpAddr,
    },
}

/// A session as the cluster stores it (no secret: resume tokens are derived).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub src_lang: String,
    pub tgt_lang: String,
    pub features: Features,
    pub tts_format: Option<AudioFormat>,
    pub paired_node: Option<String>,
}

/// A change to the cluster's stored session state, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    PutSession {
        session_id: String,
        record: SessionRecord,
    },
    /// The session ended: its record and its stored outcomes go.
    DeleteSession {
        session_id: String,
        outcomes: Vec<u64>,
    },
    /// An outcome was sent: kept until the client confirms it.
    PutOutcome {
        session_id: String,
        index: u64,
        frame: Frame,
    },
    DeleteOutcomes {
        session_id: String,
        indexes: Vec<u64>,
    },
}

/// Where another dispatcher's node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Remote {
    pub dispatcher: String,
    pub connected: bool,
}

/// A job run here for another dispatcher.
#[derive(Debug)]
struct Proxied {
    origin: String,
    node: String,
    session_id: String,
    index: u64,
    deadline: Millis,
}

/// The cluster part of the core's state.
#[derive(Debug)]
pub(super) struct Cluster {
    pub id: String,
    peer_timeout_ms: Millis,
    /// Peer → when last heard.
    peers: HashMap<String, Millis>,
    proxied: HashMap<String, Proxied>,
    /// Resumes waiting for the store: connection → session id.
    lookups: HashMap<super::ConnId, String>,
}

impl Cluster {
    pub(super) fn new(s: ClusterSettings) -> Self {
        Self { id: s.id, peer_timeout_ms: s.peer_timeout_ms, peers: HashMap::new(), proxied: HashMap::new(), lookups: HashMap::new() }
    }

    pub(super) fn peers(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn proxied(&self) -> usize {
        self.proxied.len()
    }
}

impl Core {
    /// Joins a cluster: from now on this core announces, forwards and
    /// stores as a member named `settings.id`.
    pub fn set_cluster(&mut self, settings: ClusterSettings) {
        self.cluster = Some(Cluster::new(settings));
    }

    /// This dispatcher's name in its cluster, if it is in one.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.id.as_str())
    }

    /// The announcement of this dispatcher's own nodes (connected, and
    /// recently left ones for their trust), for the shell to publish.
    pub fn fleet_ad(&self, now: Millis) -> FleetAd {
        let nodes = self
            .nodes
            .iter()
            .filter(|(_, n)| n.remote.is_none())
            .map(|(id, n)| NodeAd {
                node_id: id.clone(),
                connected: n.conn.is_some(),
                max_jobs: n.max_jobs,
                running: n.load(),
                models: n.models.clone(),
                features: n.features,
                accept_public: n.accept_public,
                draining: n.draining,
                trust: n.trust.state,
                verified: n.trust.verified,
                ms_per_audio_s: n.ms_per_audio_s,
                version: n.version.clone(),
                cpu_percent: n.usage.as_ref().map(|u| u.cpu_percent),
                mem_percent: n.usage.as_ref().map(|u| u.mem_percent),
            })
            .collect();
        let codes =
            self.pairing.local_codes(now).into_iter().map(|(code, node_id, expires_at)| CodeAd { code, node_id, expires_at }).collect();
        FleetAd { nodes, codes }
    }

    pub(super) fn on_peer(&mut self, now: Millis, from: String, msg: PeerMsg) {
        let Some(cl) = &mut self.cluster else { return };
        if from == cl.id {
            return;
        }
        if cl.peers.len() >= MAX_PEERS && !cl.peers.contains_key(&from) {
            self.stats.peer_messages_refused += 1;
            return;
        }
        cl.peers.insert(from.clone(), now);
        match msg {
            PeerMsg::Fleet(ad) => self.on_fleet(now, &from, ad),
            PeerMsg::Job { job_id, node_id, session_id, utterance_index, deadline_ms, frame } => {
                self.on_peer_job(now, from, job_id, node_id, session_id, utterance_index, deadline_ms, frame);
            }
            PeerMsg::Result { job_id, node_id, result } => {
                let holds = self.nodes.get(&node_id).and_then(|n| n.remote.as_ref()).is_some_and(|r| r.dispatcher == from);
                if !holds || result.job_id != job_id || result.node_id != node_id {
                    self.stats.peer_messages_refused += 1;
                    return;
                }
                self.stats.forwarded_results += 1;
                self.on_job_result(now, None, &node_id, *result);
            }
            PeerMsg::SessionMoved { session_id } => {
                let Some(s) = self.sessions.get(&session_id) else { return };
                if let Some(conn) = s.conn {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.session = None;
                    }
                    self.close(conn);
                }
                self.stats.sessions_moved_away += 1;
                self.drop_session(&session_id, "resumed on another dispatcher", false);
            }
            PeerMsg::PairingFailure { addr } => self.pairing.count_failure(now, addr, self.cfg.pairing_window_ms),
        }
    }

    fn on_fleet(&mut self, now: Millis, from: &str, ad: FleetAd) {
        let mut listed = HashSet::new();
        let mut changed = false;
        for a in ad.nodes.into_iter().take(self.cfg.max_nodes) {
            listed.insert(a.node_id.clone());
            let exempt = self.trust.cfg.exempt_paired;
            match self.nodes.get_mut(&a.node_id) {
                // Connected here: this dispatcher's own view wins.
                Some(n) if n.conn.is_some() => {}
                // Live elsewhere, and this peer only remembers it.
                Some(n) if !a.connected && n.remote.as_ref().is_some_and(|r| r.connected && r.dispatcher != from) => {}
                Some(n) => {
                    let was_live = n.remote.as_ref().is_some_and(|r| r.connected);
                    let relevant = n.remote.as_ref().is_none_or(|r| r.dispatcher != from || r.connected != a.connected)
                        || n.models != a.models
                        || n.features != a.features
                        || n.accept_public != a.accept_public
                        || n.draining != a.draining
                        || n.trust.state != a.trust
                        || n.max_jobs != a.max_jobs;
                    n.remote = Some(Remote { dispatcher: from.to_owned(), connected: a.connected });
                    n.reported_running = a.running;
                    n.max_jobs = a.max_jobs;
                    n.ms_per_audio_s = a.ms_per_audio_s;
                    n.usage = remote_usage(&a);
                    n.last_seen = now;
                    n.version = a.version;
                    if relevant {
                        n.models = a.models;
                        n.features = a.features;
                        n.accept_public = a.accept_public;
                        n.draining = a.draining;
                        let mut t = NodeTrust::new(a.trust, exempt);
                        t.verified = a.verified;
                        n.trust = t;
                        changed = true;
                    }
                    if was_live && !a.connected {
                        let id = a.node_id.clone();
                        self.remote_lost(now, &id, "left its dispatcher");
                    }
                }
                None => {
                    if self.nodes.len() >= self.cfg.max_nodes {
                        continue;
                    }
                    self.next_node_key = self.next_node_key.wrapping_add(1);
                    let mut trust = NodeTrust::new(a.trust, exempt);
                    trust.verified = a.verified;
                    let id = a.node_id.clone();
                    let node = Node::remote(self.next_node_key, from, a, now, trust);
                    self.nodes.insert(id, node);
                    changed = true;
                }
            }
        }
        // Nodes this peer held and no longer lists are gone from it.
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.remote.as_ref().is_some_and(|r| r.dispatcher == from) && !listed.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remote_lost(now, &id, "no longer announced");
            self.nodes.remove(&id);
            changed = true;
        }
        if changed {
            self.node_epoch += 1;
        }
        self.pairing.learn(from, ad.codes.into_iter().map(|c| (c.code, c.node_id, c.expires_at)), now);
        // Announced free slots may run queued jobs.
        if self.classes.queued() > 0 {
            let free: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.remote.as_ref().is_some_and(|r| r.dispatcher == from && r.connected) && n.has_room(now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in free {
                self.pump_node(now, &id);
            }
        }
    }

    /// A remote node is gone (its dispatcher said so, or went silent): the
    /// jobs this dispatcher had on it are retried elsewhere.
    fn remote_lost(&mut self, now: Millis, id: &str, why: &str) {
        if !self.nodes.get(id).is_some_and(|n| n.remote.as_ref().is_some_and(|r| r.connected)) {
            return;
        }
        self.node_lost(now, id, why);
        if let Some(r) = self.nodes.get_mut(id).and_then(|n| n.remote.as_mut()) {
            r.connected = false;
        }
    }

    /// Peers silent too long are gone, with their nodes.
    pub(super) fn sweep_peers(&mut self, now: Millis) {
        let Some(cl) = &mut self.cluster else { return };
        let timeout = cl.peer_timeout_ms;
        let silent: Vec<String> = cl.peers.iter().filter(|&(_, &at)| now >= at + timeout).map(|(p, _)| p.clone()).collect();
        for p in &silent {
            cl.peers.remove(p);
        }
        if silent.is_empty() {
            return;
        }
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.remote.as_ref().is_some_and(|r| r.connected && silent.contains(&r.dispatcher)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            tracing::warn!(node = %id, "its dispatcher went silent: node lost");
            self.remote_lost(now, &id, "its dispatcher went silent");
        }
        self.pairing.forget_origins(&silent);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_peer_job(
        &mut self,
        now: Millis,
        origin: String,
        job_id: String,
        node_id: String,
        session_id: String,
        index: u64,
        deadline_ms: u64,
        frame: Frame,
    ) {
        let refuse = |core: &mut Self, code: JobErrorCode, message: &str| {
            core.stats.peer_jobs_refused += 1;
            let error = JobError { code, message: message.to_owned() };
            let result = JobResult::failure(job_id.clone(), node_id.clone(), session_id.clone(), index, error);
            core.out.push(Action::Peer {
                to: Some(origin.clone()),
                msg: PeerMsg::Result { job_id: job_id.clone(), node_id: node_id.clone(), result: Box::new(result) },
            });
        };
        let known = self.cluster.as_ref().is_some_and(|c| c.proxied.contains_key(&job_id));
        let Some(n) = self.nodes.get(&node_id).filter(|n| n.remote.is_none()) else {
            return refuse(self, JobErrorCode::InferenceBackendError, "the node is not connected to this dispatcher");
        };
        let Some(conn) = n.conn.filter(|_| !n.draining) else {
            return refuse(self, JobErrorCode::InferenceBackendError, "the node is not connected to this dispatcher");
        };
        if known || !n.has_room(now) || self.cluster.as_ref().is_some_and(|c| c.proxied.len() >= self.cfg.max_queued_jobs) {
            return refuse(self, JobErrorCode::NodeBusy, "the node is at capacity");
        }
        let deadline = now + deadline_ms + 1_000;
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.running.insert(job_id.clone());
        }
        if let Some(cl) = &mut self.cluster {
            cl.proxied.insert(job_id.clone(), Proxied { origin, node: node_id, session_id, index, deadline });
        }
        self.stats.jobs_proxied += 1;
        self.timers.arm(deadline, Timer::Proxied(job_id));
        self.out.push(Action::Send { conn, frame });
    }

    /// Whether `r` answers a job run here for another dispatcher.
    pub(super) fn holds_proxied(&self, node_id: &str, r: &JobResult) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.proxied.get(&r.job_id))
            .is_some_and(|p| p.node == node_id && p.session_id == r.session_id && p.index == r.utterance_index)
    }

    /// The node's answer to a job run here for another dispatcher
    /// ([`Core::holds_proxied`]): passed back to it.
    pub(super) fn on_proxied_result(&mut self, now: Millis, node_id: &str, r: JobResult) {
        let Some(p) = self.cluster.as_mut().and_then(|c| c.proxied.remove(&r.job_id)) else { return };
        let busy = r.error.as_ref().is_some_and(|e| e.code == JobErrorCode::NodeBusy);
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running.remove(&r.job_id);
            if !busy {
                n.reported_running = n.reported_running.saturating_sub(1);
            }
        }
        self.stats.proxied_results += 1;
        let msg = PeerMsg::Result { job_id: r.job_id.clone(), node_id: node_id.to_owned(), result: Box::new(r) };
        self.out.push(Action::Peer { to: Some(p.origin), msg });
        self.pump_node(now, node_id);
        self.canary_tick(now, node_id);
    }

    /// A proxied job's node is gone or its time is up: the origin hears a
    /// retryable failure at once. False when `job_id` is not proxied here.
    pub(super) fn fail_proxied(&mut self, job_id: &str, why: &str) -> bool {
        let Some(p) = self.cluster.as_mut().and_then(|c| c.proxied.remove(job_id)) else { return false };
        if let Some(n) = self.nodes.get_mut(&p.node) {
            n.running.remove(job_id);
        }
        let error = JobError { code: JobErrorCode::InferenceBackendError, message: why.to_owned() };
        let result = JobResult::failure(job_id.to_owned(), p.node.clone(), p.session_id, p.index, error);
        self.out.push(Action::Peer {
            to: Some(p.origin),
            msg: PeerMsg::Result { job_id: job_id.to_owned(), node_id: p.node, result: Box::new(result) },
        });
        true
    }

    pub(super) fn on_proxied_timer(&mut self, now: Millis, job_id: &str) {
        let due = self.cluster.as_ref().and_then(|c| c.proxied.get(job_id)).map(|p| (p.deadline, p.node.clone()));
        if let Some((deadline, node)) = due
            && deadline <= now
        {
            self.fail_proxied(job_id, "deadline passed on the node's dispatcher");
            self.pump_node(now, &node);
        }
    }

    /// Queues a store operation when in a cluster.
    pub(super) fn store(&mut self, op: impl FnOnce() -> StoreOp) {
        if self.cluster.is_some() {
            self.out.push(Action::Store(op()));
        }
    }

    /// A resume of a session this dispatcher does not hold: ask the
    /// cluster's store. False when not in a cluster (or too many wait).
    pub(super) fn lookup_session(&mut self, conn: super::ConnId, id: &str, last: Option<u64>) -> bool {
        let Some(cl) = &mut self.cluster else { return false };
        if cl.lookups.len() >= MAX_LOOKUPS {
            return false;
        }
        cl.lookups.insert(conn, id.to_owned());
        self.out.push(Action::LookupSession { conn, session_id: id.to_owned(), last });
        true
    }

    /// Whether `conn` waits for a look-up of `id` (consumed).
    pub(super) fn take_lookup(&mut self, conn: super::ConnId, id: &str) -> bool {
        let Some(cl) = &mut self.cluster else { return false };
        match cl.lookups.get(&conn) {
            Some(s) if s == id => {
                cl.lookups.remove(&conn);
                true
            }
            _ => false,
        }
    }

    pub(super) fn forget_lookup(&mut self, conn: super::ConnId) {
        if let Some(cl) = &mut self.cluster {
            cl.lookups.remove(&conn);
        }
    }
}

/// A remote node's load as its dispatcher announced it.
fn remote_usage(a: &NodeAd) -> Option<tolk_protocol::node::ResourceUsage> {
    let cpu_percent = a.cpu_percent?;
    Some(tolk_protocol::node::ResourceUsage {
        cpu_percent,
        gpu_percent: None,
        gpu_mem_percent: None,
        mem_percent: a.mem_percent.unwrap_or(0.0),
        running_jobs: a.running,
    })
}

impl Node {
    /// Another dispatcher's node, as it announced it.
    pub(super) fn remote(key: u32, dispatcher: &str, a: NodeAd, now: Millis, trust: NodeTrust) -> Self {
        let usage = remote_usage(&a);
        Self {
            key,
            max_jobs: a.max_jobs,
            conn: None,
            remote: Some(Remote { dispatcher: dispatcher.to_owned(), connected: a.connected }),
            version: a.version,
            models: a.models,
            features: a.features,
            accept_public: a.accept_public,
            draining: a.draining,
            last_seen: now,
            usage,
            running: HashSet::new(),
            disconnected_at: (!a.connected).then_some(now),
            ms_per_audio_s: a.ms_per_audio_s,
            recent_failures: 0,
            reported_running: a.running,
            busy_until: 0,
            trust,
        }
    }
}
