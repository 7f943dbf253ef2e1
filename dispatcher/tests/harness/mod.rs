//! A driver for the sans-IO core: feeds events, advances time, and collects
//! what the core sends, parsed (and so validated) by `tolk-protocol`.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::core::cluster::{PeerMsg, StoreOp};
use tolk_dispatcher::core::{Action, ConnId, Core, Endpoint, Input, Millis};
use tolk_protocol::common::{ErrorMessage, Features};
use tolk_protocol::node::*;
use tolk_protocol::session::*;
use tolk_protocol::{AudioFormat, ClientToServer, Message, ModelKind, NodeToServer, ServerToClient, ServerToNode};

pub const T0: Millis = 1_700_000_000_000;

pub struct Sim {
    pub core: Core,
    pub now: Millis,
    next_conn: ConnId,
    pub endpoints: HashMap<ConnId, Endpoint>,
    pub inbox: HashMap<ConnId, Vec<String>>,
    pub closed: HashSet<ConnId>,
    /// Detection requests the core made: (job_id, features).
    pub detects: Vec<(String, Features)>,
    /// Cluster mode: messages for other dispatchers, store writes, look-ups.
    pub peer_out: Vec<(Option<String>, PeerMsg)>,
    pub store_ops: Vec<StoreOp>,
    pub lookups: Vec<(ConnId, String, Option<u64>)>,
}

impl Sim {
    pub fn new(cfg: CoreConfig) -> Self {
        Self::seeded(cfg, 7)
    }

    pub fn seeded(cfg: CoreConfig, seed: u64) -> Self {
        let core = Core::new(cfg, StdRng::seed_from_u64(seed), T0);
        Self {
            core,
            now: T0,
            next_conn: 1,
            endpoints: HashMap::new(),
            inbox: HashMap::new(),
            closed: HashSet::new(),
            detects: Vec::new(),
            peer_out: Vec::new(),
            store_ops: Vec::new(),
            lookups: Vec::new(),
        }
    }

    fn collect(&mut self) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                match action {
                    Action::Send { conn, frame } => {
                        assert!(!self.closed.contains(&conn), "frame sent to closed connection {conn}: {frame}");
                        self.inbox.entry(conn).or_default().push(frame.to_string());
                    }
                    Action::Detect { job_id, features, .. } => self.detects.push((job_id, features)),
                    Action::Peer { to, msg } => self.peer_out.push((to, msg)),
                    Action::Store(op) => self.store_ops.push(op),
                    Action::LookupSession { conn, session_id, last } => self.lookups.push((conn, session_id, last)),
                    Action::Close { conn } => {
                        // The shell reports the close back to the core.
                        if self.closed.insert(conn) {
                            self.core.handle(self.now, Input::Closed { conn });
                        }
                    }
                }
            }
        }
    }

    pub fn open(&mut self, endpoint: Endpoint) -> ConnId {
        self.open_from(endpoint, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub fn open_from(&mut self, endpoint: Endpoint, addr: IpAddr) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.endpoints.insert(conn, endpoint);
        self.core.handle(self.now, Input::Opened { conn, endpoint, addr });
        self.collect();
        conn
    }

    /// Sends a frame as text, through the real parser, as the shell does.
    pub fn send_text(&mut self, conn: ConnId, text: &str) {
        let input = match self.endpoints[&conn] {
            Endpoint::Session => match ClientToServer::parse(text) {
                Ok(msg) => Input::Session { conn, msg },
                Err(error) => Input::Invalid { conn, error },
            },
            Endpoint::Node => match NodeToServer::parse(text) {
                Ok(msg) => Input::Node { conn, msg },
                Err(error) => Input::Invalid { conn, error },
            },
        };
        self.core.handle(self.now, input);
        self.collect();
    }

    pub fn client(&mut self, conn: ConnId, msg: ClientToServer) {
        self.send_text(conn, &msg.to_json());
    }

    pub fn node(&mut self, conn: ConnId, msg: NodeToServer) {
        self.send_text(conn, &msg.to_json());
    }

    pub fn disconnect(&mut self, conn: ConnId) {
        if self.closed.insert(conn) {
            self.core.handle(self.now, Input::Closed { conn });
            self.collect();
        }
    }

    pub fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(at) = self.core.next_deadline().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.core.on_timeout(self.now);
            self.collect();
        }
        self.now = end;
    }

    /// Feeds an input from outside the connections (a peer, the store).
    pub fn input(&mut self, input: Input) {
        self.core.handle(self.now, input);
        self.collect();
    }

    pub fn detected(&mut self, job_id: &str, extra: tolk_protocol::common::Extra) {
        self.core.handle(self.now, Input::Detected { job_id: job_id.to_owned(), extra });
        self.collect();
    }

    pub fn admin(&mut self, cmd: tolk_dispatcher::core::AdminCommand) -> Result<(), String> {
        let r = self.core.admin(self.now, cmd);
        self.collect();
        r
    }

    /// Which of `nodes` (conn, node_id) received a job; takes their jobs.
    pub fn holder(&mut self, nodes: &[(ConnId, String)]) -> Option<(ConnId, String, JobAssign)> {
        let mut found = None;
        for (conn, id) in nodes {
            if let Some(job) = self.jobs(*conn).pop() {
                found = Some((*conn, id.clone(), job));
            }
        }
        found
    }

    pub fn take_raw(&mut self, conn: ConnId) -> Vec<String> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    pub fn take_client(&mut self, conn: ConnId) -> Vec<ServerToClient> {
        self.take_raw(conn).iter().map(|f| ServerToClient::parse(f).unwrap_or_else(|e| panic!("invalid frame {f}: {e}"))).collect()
    }

    pub fn take_node(&mut self, conn: ConnId) -> Vec<ServerToNode> {
        self.take_raw(conn).iter().map(|f| ServerToNode::parse(f).unwrap_or_else(|e| panic!("invalid frame {f}: {e}"))).collect()
    }

    /// Opens a session; returns (conn, session_id, resume_token).
    pub fn open_session(&mut self, src: &str, tgt: &str) -> (ConnId, String, String) {
        let conn = self.open(Endpoint::Session);
        self.client(conn, init(src, tgt, None));
        match self.take_client(conn).pop() {
            Some(ServerToClient::SessionInitAck(ack)) => (conn, ack.session_id, ack.resume_token.unwrap_or_default()),
            other => panic!("expected session_init_ack, got {other:?}"),
        }
    }

    /// Registers a node serving `pairs` (src→tgt) with every stage.
    pub fn register_node(&mut self, pairs: &[(&str, &str)], public: bool) -> (ConnId, String, String) {
        let conn = self.open(Endpoint::Node);
        self.node(conn, register(None, None, pairs, public));
        // The ack comes first; queued jobs may follow it at once: leave those.
        let mut frames = self.take_raw(conn);
        assert!(!frames.is_empty(), "no answer to node_register");
        let first = frames.remove(0);
        self.inbox.insert(conn, frames);
        match ServerToNode::parse(&first) {
            Ok(ServerToNode::NodeRegisterAck(ack)) => (conn, ack.node_id, ack.node_token.unwrap_or_default()),
            other => panic!("expected node_register_ack, got {other:?}"),
        }
    }

    pub fn utterance(&mut self, conn: ConnId, session: &str, index: u64) {
        self.client(conn, ClientToServer::Utterance(utterance(session, index, "en", "es")));
    }

    /// Answers `job` from node `node_id` on `conn`.
    pub fn succeed(&mut self, conn: ConnId, node_id: &str, job: &JobAssign) {
        self.node(conn, NodeToServer::JobResult(result_for(node_id, job)));
    }

    pub fn fail(&mut self, conn: ConnId, node_id: &str, job: &JobAssign, code: tolk_protocol::JobErrorCode) {
        let mut r = result_for(node_id, job);
        r.success = false;
        r.text_asr = None;
        r.text_translated = None;
        r.tts_audio = None;
        r.error = Some(JobError { code, message: "failed".into() });
        self.node(conn, NodeToServer::JobResult(r));
    }

    pub fn jobs(&mut self, conn: ConnId) -> Vec<JobAssign> {
        self.take_node(conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerToNode::JobAssign(j) => Some(j),
                _ => None,
            })
            .collect()
    }

    pub fn heartbeat(&mut self, conn: ConnId, node_id: &str, models: Option<Vec<InstalledModel>>) {
        self.heartbeat_running(conn, node_id, models, 0);
    }

    pub fn heartbeat_running(&mut self, conn: ConnId, node_id: &str, models: Option<Vec<InstalledModel>>, running_jobs: u32) {
        self.heartbeat_with(conn, node_id, models.map(|v| v.into_iter().map(Into::into).collect()), running_jobs);
    }

    /// A heartbeat carrying model updates (extension 7).
    pub fn heartbeat_updates(&mut self, conn: ConnId, node_id: &str, updates: Option<Vec<ModelUpdate>>) {
        self.heartbeat_with(conn, node_id, updates, 0);
    }

    fn heartbeat_with(&mut self, conn: ConnId, node_id: &str, updates: Option<Vec<ModelUpdate>>, running_jobs: u32) {
        let hb = NodeHeartbeat {
            node_id: node_id.into(),
            timestamp: self.now,
            resource_usage: ResourceUsage { cpu_percent: 10.0, gpu_percent: None, gpu_mem_percent: None, mem_percent: 20.0, running_jobs },
            installed_models: updates,
        };
        self.node(conn, NodeToServer::NodeHeartbeat(hb));
    }
}

pub fn init(src: &str, tgt: &str, code: Option<&str>) -> ClientToServer {
    ClientToServer::SessionInit(SessionInit {
        client_version: "test".into(),
        platform: ClientPlatform::Android,
        src_lang: src.into(),
        tgt_lang: tgt.into(),
        dialect: None,
        features: None,
        pairing_code: code.map(Into::into),
        session_id: None,
        resume_token: None,
        last_utterance_index: None,
        tts_format: None,
    })
}

pub fn resume(session: &str, token: &str, last: Option<u64>) -> ClientToServer {
    let ClientToServer::SessionInit(mut i) = init("en", "es", None) else { unreachable!() };
    i.session_id = Some(session.into());
    i.resume_token = Some(token.into());
    i.last_utterance_index = last;
    ClientToServer::SessionInit(i)
}

pub fn models(pairs: &[(&str, &str)]) -> Vec<InstalledModel> {
    let m = |id: String, kind, src: &str, tgt: Option<&str>| InstalledModel {
        model_id: id,
        kind,
        src_lang: Some(src.into()),
        tgt_lang: tgt.map(Into::into),
        dialect: None,
        version: "1".into(),
        enabled: None,
    };
    let mut out = Vec::new();
    for (src, tgt) in pairs {
        out.push(m(format!("asr-{src}"), ModelKind::Asr, src, None));
        out.push(m(format!("nmt-{src}-{tgt}"), ModelKind::Nmt, src, Some(tgt)));
        out.push(m(format!("tts-{tgt}"), ModelKind::Tts, tgt, None));
    }
    out
}

pub fn register(id: Option<&str>, token: Option<&str>, pairs: &[(&str, &str)], public: bool) -> NodeToServer {
    NodeToServer::NodeRegister(NodeRegister {
        node_id: id.map(Into::into),
        version: "1.0.0".into(),
        platform: NodePlatform::Linux,
        hardware: Hardware { cpu_cores: 2, memory_gb: 4.0, gpus: vec![] },
        installed_models: models(pairs),
        features_supported: Features::default(),
        accept_public_jobs: public,
        node_token: token.map(Into::into),
        auth_token: None,
        max_jobs: None,
    })
}

pub fn utterance(session: &str, index: u64, src: &str, tgt: &str) -> Utterance {
    Utterance {
        session_id: session.into(),
        utterance_index: index,
        manual_cut: false,
        src_lang: src.into(),
        tgt_lang: tgt.into(),
        dialect: None,
        features: None,
        audio: format!("QUJD{index}=").into(),
        audio_format: AudioFormat::Pcm16,
        sample_rate: 16000,
    }
}

pub fn result_for(node_id: &str, job: &JobAssign) -> JobResult {
    JobResult {
        job_id: job.job_id.clone(),
        node_id: node_id.into(),
        session_id: job.session_id.clone(),
        utterance_index: job.utterance_index,
        success: true,
        text_asr: Some(format!("asr {}", job.utterance_index)),
        text_translated: Some(format!("nmt {}", job.utterance_index)),
        tts_audio: Some("AAAA".into()),
        tts_format: Some(AudioFormat::Pcm16),
        tts_sample_rate: Some(16000),
        extra: None,
        processing_time_ms: Some(5),
        error: None,
    }
}

/// The utterance index an outcome frame is about, if it is an outcome.
pub fn outcome_index(msg: &ServerToClient) -> Option<u64> {
    match msg {
        ServerToClient::TranslationResult(r) => Some(r.utterance_index),
        ServerToClient::Error(e) => e.utterance_index(),
        _ => None,
    }
}

pub fn error_of(msg: &ServerToClient) -> Option<&ErrorMessage> {
    match msg {
        ServerToClient::Error(e) => Some(e),
        _ => None,
    }
}
