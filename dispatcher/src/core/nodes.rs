//! Nodes: registration and identity (extension 4), heartbeats with model
//! updates (extension 7), liveness, loss, and the pairing codes they ask for.

use std::collections::HashSet;

use tolk_protocol::common::{ErrorCode, ErrorMessage, Features};
use tolk_protocol::node::{InstalledModel, NodeHeartbeat, NodeRegister, NodeRegisterAck, PairingCode, ResourceUsage};
use tolk_protocol::{NodeToServer, ProtocolError, ServerToNode};

use super::jobs::FailKind;
use super::timer::Timer;
use super::trust::TrustState;
use super::{ConnId, Core, Millis};

#[derive(Debug)]
pub(super) struct Node {
    /// Stable number for policies (cheaper to pass than the id).
    pub key: u32,
    /// Jobs it may run at once: the node's own limit within ours.
    pub max_jobs: u32,
    pub conn: Option<ConnId>,
    /// Held by another dispatcher of the cluster (then `conn` is `None`).
    pub remote: Option<super::cluster::Remote>,
    pub version: String,
    pub models: Vec<InstalledModel>,
    pub features: Features,
    pub accept_public: bool,
    pub draining: bool,
    pub last_seen: Millis,
    pub usage: Option<ResourceUsage>,
    pub running: HashSet<String>,
    pub disconnected_at: Option<Millis>,
    pub ms_per_audio_s: Option<f64>,
    pub recent_failures: u32,
    /// Jobs the node says it runs (its last heartbeat): after a dispatcher
    /// restart it may still be busy with jobs this core never knew.
    pub reported_running: u32,
    /// After a `NODE_BUSY`, no new job before this time.
    pub busy_until: Millis,
    /// Canary verification (kept across reconnects of the same identity).
    pub trust: super::trust::NodeTrust,
}

impl Node {
    /// Connected: here, or to another dispatcher of the cluster.
    pub fn live(&self) -> bool {
        self.conn.is_some() || self.remote.as_ref().is_some_and(|r| r.connected)
    }

    /// Jobs counted against its capacity.
    pub fn load(&self) -> u32 {
        (self.running.len() as u32).max(self.reported_running)
    }

    /// Whether it can take one more job now.
    pub fn has_room(&self, now: Millis) -> bool {
        self.load() < self.max_jobs && now >= self.busy_until
    }
}

/// How long a node that answered `NODE_BUSY` gets no new job.
pub(super) const BUSY_BACKOFF_MS: Millis = 1_000;

impl Core {
    pub(super) fn on_node_msg(&mut self, now: Millis, conn: ConnId, msg: NodeToServer) {
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
        // Any frame proves the node alive, results included: a node busy
        // sending results under load is never declared dead.
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.last_seen = now;
        }
        match msg {
            NodeToServer::NodeHeartbeat(h) => self.on_node_heartbeat(now, &node_id, h),
            NodeToServer::JobResult(r) => self.on_job_result(now, Some(conn), &node_id, r),
            NodeToServer::NodeError(e) => self.on_node_error(&node_id, &e),
            NodeToServer::PairingCodeRequest(_) => self.issue_pairing_code(now, conn, &node_id),
            NodeToServer::NodeRegister(_) => {}
        }
    }

    fn on_node_register(&mut self, now: Millis, conn: ConnId, reg: NodeRegister) {
        let unauthorized = |core: &mut Self, message: &str| {
            core.stats.unauthorized += 1;
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
        let node_id = match reg.claimed_node_id() {
            Some(id) => {
                // Tokens are derived from the id: valid on every dispatcher
                // sharing the secret, so a node may reconnect to any of them.
                let ok = reg.node_token.as_deref().is_some_and(|t| self.token_valid("node", id, t));
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
                // It moved here from another dispatcher: what was sent there is retried.
                if self.nodes.get(&id).is_some_and(|n| n.remote.as_ref().is_some_and(|r| r.connected)) {
                    self.node_lost(now, &id, "moved to another dispatcher");
                }
                id
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
                self.random_id("n-")
            }
        };
        let token = self.derive_token("node", &node_id);
        let previous = self.nodes.remove(&node_id);
        let key = previous.as_ref().map_or_else(
            || {
                self.next_node_key = self.next_node_key.wrapping_add(1);
                self.next_node_key
            },
            |n| n.key,
        );
        // Trust belongs to the identity: a reconnect neither clears a
        // quarantine nor repeats a passed probation.
        let trust = match &previous {
            Some(p)
                if reg.accept_public_jobs
                    && matches!(p.trust.state, TrustState::Probation | TrustState::Trusted | TrustState::Quarantined) =>
            {
                let mut t = p.trust.clone();
                t.inflight = None;
                t
            }
            _ => self.trust.initial(reg.accept_public_jobs),
        };
        let running = previous.map(|n| n.running).unwrap_or_default();
        let max_jobs = reg.max_jobs.map_or(self.cfg.max_jobs_per_node, |m| m.min(self.cfg.max_jobs_per_node));
        self.nodes.insert(
            node_id.clone(),
            Node {
                key,
                max_jobs,
                conn: Some(conn),
                remote: None,
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
                trust,
            },
        );
        self.node_epoch += 1;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.node = Some(node_id.clone());
        }
        self.timers.arm(now + self.cfg.node_heartbeat_timeout_ms, Timer::Node(node_id.clone()));
        let ack = NodeRegisterAck { node_id: node_id.clone(), message: "registered".into(), node_token: Some(token) };
        self.send_node(conn, ServerToNode::NodeRegisterAck(ack));
        self.pump_node(now, &node_id);
        self.canary_tick(now, &node_id);
    }

    fn on_node_heartbeat(&mut self, now: Millis, node_id: &str, h: NodeHeartbeat) {
        let Some(n) = self.nodes.get_mut(node_id) else { return };
        let freed = h.resource_usage.running_jobs < n.reported_running;
        n.reported_running = h.resource_usage.running_jobs;
        n.usage = Some(h.resource_usage);
        let models_changed = h.installed_models.is_some();
        if let Some(updates) = h.installed_models {
            // Extension 7: updates matched by model_id; additions bounded
            // like a registration's list.
            for u in &updates {
                if n.models.len() < tolk_protocol::validate::MAX_MODELS || n.models.iter().any(|m| m.model_id == u.model_id) {
                    u.apply(&mut n.models);
                }
            }
            self.node_epoch += 1;
        }
        // New models or freed slots may let queued jobs run.
        if models_changed || freed {
            self.pump_node(now, node_id);
        }
    }

    /// A `node_error` naming a model (`details.model_id`) with
    /// `INFERENCE_BACKEND_ERROR` reports that engine broken: the model is
    /// switched off for routing, as a heartbeat's `enabled:false` would, so
    /// no job needing it goes there until the node reports it again (a
    /// heartbeat update or a registration that lists it enabled). Other
    /// node errors are counted and logged.
    fn on_node_error(&mut self, node_id: &str, e: &tolk_protocol::node::NodeError) {
        self.stats.node_errors += 1;
        let model = e.details.as_ref().and_then(|d| d.get("model_id")).and_then(|m| m.as_str());
        let broken = e.code == tolk_protocol::JobErrorCode::InferenceBackendError.as_str();
        if let (true, Some(model_id), Some(n)) = (broken, model, self.nodes.get_mut(node_id))
            && tolk_protocol::node::ModelUpdate::disable(model_id).apply(&mut n.models)
        {
            self.stats.models_disabled_by_errors += 1;
            self.node_epoch += 1;
            tracing::warn!(node = %node_id, model = model_id, message = %e.message, "engine reported broken: its model takes no jobs until the node reports it again");
            return;
        }
        tracing::warn!(node = %node_id, code = %e.code, message = %e.message, "node error");
    }

    fn issue_pairing_code(&mut self, now: Millis, conn: ConnId, node_id: &str) {
        let expires_at = now + self.cfg.pairing_code_ttl_ms;
        let Some(code) = self.pairing.issue(&mut self.rng, node_id, expires_at) else {
            let err =
                ErrorMessage { code: ErrorCode::InternalError, message: "no pairing code available; try again".into(), details: None };
            return self.send_error(conn, err);
        };
        self.send_node(conn, ServerToNode::PairingCode(PairingCode { node_id: node_id.to_owned(), code, expires_at }));
    }

    pub(super) fn on_node_timer(&mut self, now: Millis, id: &str) {
        let Some(n) = self.nodes.get(id) else { return };
        if n.conn.is_none() {
            return;
        }
        let due = n.last_seen + self.cfg.node_heartbeat_timeout_ms;
        if due > now {
            return self.timers.arm(due, Timer::Node(id.to_owned()));
        }
        tracing::warn!(node = id, "node missed its heartbeats: declared dead");
        self.stats.nodes_dead += 1;
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
    pub(super) fn node_lost(&mut self, now: Millis, id: &str, why: &str) {
        self.canary_lost(id);
        let Some(n) = self.nodes.get_mut(id) else { return };
        n.conn = None;
        n.disconnected_at = Some(now);
        n.recent_failures += 1;
        let jobs: Vec<String> = n.running.drain().collect();
        self.node_epoch += 1;
        for job_id in jobs {
            if self.fail_proxied(&job_id, &format!("node {why}")) {
                continue;
            }
            self.job_failed(now, &job_id, id, FailKind::Retry(format!("node {why}")));
        }
    }
}
