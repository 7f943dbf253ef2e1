//! Cluster mode's link to NATS: the shell side of [`crate::core::cluster`].
//! It moves bytes only — the core decides what to send, to whom, and what
//! to store.
//!
//! - **Subjects.** `{prefix}.all` carries what every dispatcher hears
//!   (fleet announcements, sessions that moved, wrong pairing guesses);
//!   `{prefix}.d.{name}` what one dispatcher is sent (forwarded jobs and
//!   their results). Metadata travels in headers and the payload is the
//!   protocol frame itself: a forwarded `job_assign` is the very text the
//!   node will read, its audio never re-encoded.
//! - **Store.** Two JetStream KV buckets: `{prefix}-sessions` (a session's
//!   record, by id) and `{prefix}-outcomes` (each sent, unconfirmed outcome
//!   frame, by `{session}.{index}`, kept `outcome_ttl_ms`). Writes go out in
//!   the core's order on one connection (JetStream stores them in that
//!   order) with a window of acknowledgements outstanding, so a session's
//!   stored outcomes are always a prefix of what was sent.
//! - **NATS trouble.** Nothing here blocks the core: messages and writes
//!   wait in bounded queues (dropped and counted beyond), the client
//!   reconnects by itself, `/readyz` says `degraded` meanwhile, and each
//!   dispatcher keeps serving the sessions and nodes connected to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tolk_protocol::{Message, NodeToServer, ServerToNode};

use crate::Error;
use crate::config::ClusterConfig;
use crate::core::cluster::{PeerMsg, SessionRecord, StoreOp};
use crate::core::{ConnId, Frame, Input};
use crate::shell::Dispatcher;

/// Store writes awaiting their acknowledgement at once.
const ACK_WINDOW: usize = 256;

/// Counters of the link, for `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Messages or writes dropped: the queue was full (NATS slow or away).
    pub dropped: AtomicU64,
    /// Publishes and store writes NATS refused or failed.
    pub failed: AtomicU64,
    /// Messages from peers that did not decode.
    pub undecodable: AtomicU64,
}

/// The running link (cheap to clone).
#[derive(Clone)]
pub struct Link {
    name: String,
    client: async_nats::Client,
    peers_tx: mpsc::Sender<(Option<String>, PeerMsg)>,
    store_tx: mpsc::Sender<StoreOp>,
    stores: Arc<tokio::sync::OnceCell<Stores>>,
    pub stats: Arc<LinkStats>,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("name", &self.name).finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Stores {
    js: jetstream::Context,
    sessions: kv::Store,
    outcomes: kv::Store,
}

/// Checks `[cluster]` and picks this dispatcher's name.
pub fn settings(cfg: &ClusterConfig, random_name: impl FnOnce() -> String) -> Result<(String, String), Error> {
    let secret = cfg.secret.clone().unwrap_or_default();
    if secret.len() < 16 {
        return Err(Error::Config("cluster.secret (TOLK_CLUSTER_SECRET): at least 16 bytes, the same on every dispatcher".into()));
    }
    let name = cfg.name.clone().unwrap_or_else(random_name);
    let valid = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid(&name) {
        return Err(Error::Config(format!("cluster.name {name:?}: 1 to 64 of [A-Za-z0-9_-]")));
    }
    if !valid(&cfg.prefix) {
        return Err(Error::Config(format!("cluster.prefix {:?}: 1 to 64 of [A-Za-z0-9_-]", cfg.prefix)));
    }
    Ok((name, secret))
}

impl Link {
    /// Connects (in the background: a NATS that is down at start is
    /// retried for ever) and starts the tasks that carry messages both ways.
    pub async fn start(cfg: &ClusterConfig, name: String, max_frame_bytes: usize, dispatcher: Dispatcher) -> Result<Self, Error> {
        let url = cfg.nats_url.clone().unwrap_or_default();
        let client = async_nats::ConnectOptions::new()
            .name(format!("tolk-dispatcher {name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("cluster: connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("cluster: NATS unreachable; serving local sessions and nodes"),
                    other => tracing::debug!("cluster: NATS {other}"),
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| Error::Config(format!("cluster.nats_url {url:?}: {e}")))?;
        let (peers_tx, peers_rx) = mpsc::channel(cfg.queue.max(16));
        let (store_tx, store_rx) = mpsc::channel(cfg.queue.max(16));
        let link = Self {
            name: name.clone(),
            client: client.clone(),
            peers_tx,
            store_tx,
            stores: Arc::new(tokio::sync::OnceCell::new()),
            stats: Arc::new(LinkStats::default()),
            max_frame_bytes,
        };
        let prefix = cfg.prefix.clone();
        let all = client.subscribe(format!("{prefix}.all")).await.map_err(|e| Error::Config(format!("NATS subscribe: {e}")))?;
        let mine = client.subscribe(format!("{prefix}.d.{name}")).await.map_err(|e| Error::Config(format!("NATS subscribe: {e}")))?;
        tokio::spawn(link.clone().receive(futures_util::stream::select(all, mine), dispatcher.clone()));
        tokio::spawn(link.clone().publish(prefix.clone(), peers_rx, dispatcher.clone()));
        tokio::spawn(link.clone().open_stores(cfg.clone()));
        tokio::spawn(link.clone().write_store(store_rx));
        tokio::spawn(link.clone().announce(Duration::from_millis(cfg.announce_ms.max(10)), dispatcher));
        Ok(link)
    }

    /// Whether NATS is reachable now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Queues a message for a peer (`None`: all of them). Never waits.
    pub fn send(&self, to: Option<String>, msg: PeerMsg) {
        if self.peers_tx.try_send((to, msg)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a store write. Never waits.
    pub fn store(&self, op: StoreOp) {
        if self.store_tx.try_send(op).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Looks a session up in the store and tells the core, whatever happens.
    pub fn lookup(&self, conn: ConnId, session_id: String, last: Option<u64>, dispatcher: Dispatcher) {
        let this = self.clone();
        tokio::spawn(async move {
            let found = match tokio::time::timeout(Duration::from_secs(5), this.find_session(&session_id)).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    tracing::warn!(session = %session_id, "cluster: session look-up failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(session = %session_id, "cluster: session look-up timed out");
                    None
                }
            };
            dispatcher.with_core(|core, now| core.handle(now, Input::SessionFound { conn, session_id, last, found }));
        });
    }

    async fn find_session(&self, id: &str) -> Result<Option<(SessionRecord, Vec<(u64, Frame)>)>, String> {
        let stores = self.stores.get().ok_or("the store is not open yet")?;
        let Some(record) = stores.sessions.get(id).await.map_err(|e| e.to_string())? else { return Ok(None) };
        let record: SessionRecord = serde_json::from_slice(&record).map_err(|e| format!("bad session record: {e}"))?;
        // The session's stored outcomes: the last message of each of its
        // keys, read through a short-lived consumer on the bucket's stream.
        let filter = format!("{}{id}.*", stores.outcomes.prefix);
        let consumer = stores
            .outcomes
            .stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: filter,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let pending = consumer.cached_info().num_pending as usize;
        let mut outcomes = Vec::new();
        if pending > 0 {
            let mut messages =
                consumer.fetch().max_messages(pending).expires(Duration::from_secs(2)).messages().await.map_err(|e| e.to_string())?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let deleted = m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some();
                let index = m.subject.rsplit('.').next().and_then(|i| i.parse::<u64>().ok());
                let (Some(index), false) = (index, deleted) else { continue };
                let Ok(text) = String::from_utf8(m.payload.to_vec()) else { continue };
                outcomes.push((index, Frame::from_text(text)));
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        Ok(Some((record, outcomes)))
    }

    async fn open_stores(self, cfg: ClusterConfig) {
        let js = jetstream::new(self.client.clone());
        let bucket = |name: String, age_ms: u64| kv::Config {
            bucket: name,
            history: 1,
            max_age: Duration::from_millis(age_ms),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let mut delay = Duration::from_millis(200);
        loop {
            let sessions = js.create_key_value(bucket(format!("{}-sessions", cfg.prefix), cfg.session_ttl_ms)).await;
            let outcomes = js.create_key_value(bucket(format!("{}-outcomes", cfg.prefix), cfg.outcome_ttl_ms)).await;
            match (sessions, outcomes) {
                (Ok(sessions), Ok(outcomes)) => {
                    let _ = self.stores.set(Stores { js, sessions, outcomes });
                    tracing::info!("cluster: session store open");
                    let max = self.client.server_info().max_payload;
                    if max < self.max_frame_bytes {
                        tracing::warn!(
                            max_payload = max,
                            max_frame_bytes = self.max_frame_bytes,
                            "cluster: NATS's max_payload is below the largest frame: larger jobs run only on this dispatcher's nodes, larger outcomes are not kept for a resume elsewhere (raise max_payload in nats-server's config)"
                        );
                    }
                    return;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("cluster: cannot open the session store (is JetStream on?): {e}");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn write_store(self, mut rx: mpsc::Receiver<StoreOp>) {
        let mut acks = FuturesOrdered::new();
        loop {
            tokio::select! {
                op = rx.recv() => {
                    let Some(op) = op else { return };
                    let Some(stores) = self.stores.get() else {
                        // Not open yet (NATS down at start): this write is lost;
                        // a resume elsewhere then re-runs what it would have kept.
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    for (subject, headers, payload) in writes(stores, op) {
                        let sent = match headers {
                            Some(h) => stores.js.publish_with_headers(subject, h, payload).await,
                            None => stores.js.publish(subject, payload).await,
                        };
                        match sent {
                            Ok(ack) => acks.push_back(ack.into_future()),
                            Err(e) => {
                                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("cluster: store write failed: {e}");
                            }
                        }
                        while acks.len() >= ACK_WINDOW {
                            if let Some(Err(e)) = acks.next().await {
                                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("cluster: store write not acknowledged: {e}");
                            }
                        }
                    }
                }
                Some(ack) = acks.next(), if !acks.is_empty() => {
                    if let Err(e) = ack {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("cluster: store write not acknowledged: {e}");
                    }
                }
            }
        }
    }

    async fn publish(self, prefix: String, mut rx: mpsc::Receiver<(Option<String>, PeerMsg)>, dispatcher: Dispatcher) {
        while let Some((to, msg)) = rx.recv().await {
            let subject = match &to {
                Some(peer) => format!("{prefix}.d.{peer}"),
                None => format!("{prefix}.all"),
            };
            // A job that cannot leave (larger than NATS's max_payload, say)
            // fails at once rather than at its deadline: the origin retries it.
            let undeliverable = match (&to, &msg) {
                (Some(peer), PeerMsg::Job { job_id, node_id, session_id, utterance_index, .. }) => {
                    Some((peer.clone(), job_id.clone(), node_id.clone(), session_id.clone(), *utterance_index))
                }
                _ => None,
            };
            let (headers, payload) = encode(&self.name, msg);
            match self.client.publish_with_headers(subject, headers, payload).await {
                Ok(()) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cluster: publish failed: {e}");
                    if let Some((peer, job_id, node_id, session_id, index)) = undeliverable {
                        let error = tolk_protocol::node::JobError {
                            code: tolk_protocol::JobErrorCode::InferenceBackendError,
                            message: format!("could not forward the job to dispatcher {peer}: {e}"),
                        };
                        let result = tolk_protocol::node::JobResult::failure(job_id.clone(), node_id.clone(), session_id, index, error);
                        let msg = PeerMsg::Result { job_id, node_id, result: Box::new(result) };
                        dispatcher.with_core(|core, now| core.handle(now, Input::Peer { from: peer, msg }));
                    }
                }
            }
        }
    }

    async fn receive(self, mut subs: impl futures_util::Stream<Item = async_nats::Message> + Unpin, dispatcher: Dispatcher) {
        while let Some(m) = subs.next().await {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            match decode(&m) {
                Some((from, _)) if from == self.name => {}
                Some((from, msg)) => dispatcher.with_core(|core, now| core.handle(now, Input::Peer { from, msg })),
                None => {
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(subject = %m.subject, "cluster: a message that does not decode");
                }
            }
        }
    }

    async fn announce(self, every: Duration, dispatcher: Dispatcher) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ad = dispatcher.with_core(|core, now| core.fleet_ad(now));
            self.send(None, PeerMsg::Fleet(ad));
        }
    }
}

/// Encodes the link's state and counters at scrape time.
#[derive(Debug)]
pub struct LinkCollector(pub Arc<std::sync::OnceLock<Link>>);

impl prometheus_client::collector::Collector for LinkCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        let Some(link) = self.0.get() else { return Ok(()) };
        let s = &link.stats;
        gauge(&mut e, "cluster_connected", "1 while NATS is reachable (else /readyz says degraded)", u64::from(link.connected()))?;
        counter(&mut e, "cluster_published", "Messages published to other dispatchers", s.published.load(Ordering::Relaxed))?;
        counter(&mut e, "cluster_received", "Messages received from NATS", s.received.load(Ordering::Relaxed))?;
        counter(&mut e, "cluster_dropped", "Messages and store writes dropped: their queue was full", s.dropped.load(Ordering::Relaxed))?;
        counter(&mut e, "cluster_failed", "Publishes and store writes that failed", s.failed.load(Ordering::Relaxed))?;
        counter(&mut e, "cluster_undecodable", "Messages from NATS that did not decode", s.undecodable.load(Ordering::Relaxed))?;
        Ok(())
    }
}

/// One store operation as JetStream publishes on the KV buckets' subjects.
fn writes(stores: &Stores, op: StoreOp) -> Vec<(String, Option<HeaderMap>, Bytes)> {
    let deleted = || {
        let mut h = HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        Some(h)
    };
    let outcome = |session: &str, index: u64| format!("{}{session}.{index}", stores.outcomes.prefix);
    match op {
        StoreOp::PutSession { session_id, record } => {
            let body = serde_json::to_vec(&record).unwrap_or_default();
            vec![(format!("{}{session_id}", stores.sessions.prefix), None, Bytes::from(body))]
        }
        StoreOp::DeleteSession { session_id, outcomes } => {
            let mut w = vec![(format!("{}{session_id}", stores.sessions.prefix), deleted(), Bytes::new())];
            w.extend(outcomes.into_iter().map(|i| (outcome(&session_id, i), deleted(), Bytes::new())));
            w
        }
        StoreOp::PutOutcome { session_id, index, frame } => {
            vec![(outcome(&session_id, index), None, Bytes::from_owner(frame))]
        }
        StoreOp::DeleteOutcomes { session_id, indexes } => {
            indexes.into_iter().map(|i| (outcome(&session_id, i), deleted(), Bytes::new())).collect()
        }
    }
}

const FROM: &str = "Tolk-From";
const KIND: &str = "Tolk-Kind";

/// A peer message as NATS headers and payload.
fn encode(from: &str, msg: PeerMsg) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(FROM, from);
    let payload = match msg {
        PeerMsg::Fleet(ad) => {
            h.insert(KIND, "fleet");
            Bytes::from(serde_json::to_vec(&ad).unwrap_or_default())
        }
        PeerMsg::Job { job_id, node_id, session_id, utterance_index, deadline_ms, frame } => {
            h.insert(KIND, "job");
            h.insert("Tolk-Job", job_id.as_str());
            h.insert("Tolk-Node", node_id.as_str());
            h.insert("Tolk-Session", session_id.as_str());
            h.insert("Tolk-Index", utterance_index.to_string().as_str());
            h.insert("Tolk-Deadline", deadline_ms.to_string().as_str());
            // The frame's own text: the node reads exactly what the phone's audio became.
            Bytes::from_owner(frame)
        }
        PeerMsg::Result { result, .. } => {
            h.insert(KIND, "result");
            Bytes::from(NodeToServer::JobResult(*result).to_json())
        }
        PeerMsg::SessionMoved { session_id } => {
            h.insert(KIND, "moved");
            Bytes::from(session_id)
        }
        PeerMsg::PairingFailure { addr } => {
            h.insert(KIND, "guess");
            Bytes::from(addr.to_string())
        }
    };
    (h, payload)
}

/// A peer message from NATS, or `None` when it does not decode (a broken
/// or foreign sender: never a panic, never half a message).
fn decode(m: &async_nats::Message) -> Option<(String, PeerMsg)> {
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    let from = get(FROM)?;
    let text = std::str::from_utf8(&m.payload).ok()?;
    let msg = match get(KIND)?.as_str() {
        "fleet" => PeerMsg::Fleet(serde_json::from_str(text).ok()?),
        "job" => {
            let job_id = get("Tolk-Job")?;
            // Checked before a node sees it: a job_assign for the job named.
            match ServerToNode::parse(text).ok()? {
                ServerToNode::JobAssign(j) if j.job_id == job_id => {}
                _ => return None,
            }
            PeerMsg::Job {
                job_id,
                node_id: get("Tolk-Node")?,
                session_id: get("Tolk-Session")?,
                utterance_index: get("Tolk-Index")?.parse().ok()?,
                deadline_ms: get("Tolk-Deadline")?.parse().ok()?,
                frame: Frame::from_text(text.to_owned()),
            }
        }
        "result" => match NodeToServer::parse(text).ok()? {
            NodeToServer::JobResult(r) => PeerMsg::Result { job_id: r.job_id.clone(), node_id: r.node_id.clone(), result: Box::new(r) },
            _ => return None,
        },
        "moved" => PeerMsg::SessionMoved { session_id: text.to_owned() },
        "guess" => PeerMsg::PairingFailure { addr: text.parse().ok()? },
        _ => return None,
    };
    Some((from, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tolk_protocol::node::{JobAssign, JobError, JobResult, Pipeline};

    fn round_trip(msg: PeerMsg) -> Option<(String, PeerMsg)> {
        let (headers, payload) = encode("d1", msg);
        let m = async_nats::Message {
            subject: "tolk.all".into(),
            reply: None,
            payload,
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        decode(&m)
    }

    #[test]
    fn peer_messages_survive_the_wire_and_bad_ones_are_refused() {
        let assign = JobAssign {
            job_id: "j-1".into(),
            session_id: "s-1".into(),
            utterance_index: 3,
            src_lang: "en".into(),
            tgt_lang: "es".into(),
            dialect: None,
            features: Default::default(),
            pipeline: Pipeline { use_asr: true, use_nmt: true, use_tts: true },
            audio: "AAAA".into(),
            audio_format: tolk_protocol::AudioFormat::Pcm16,
            sample_rate: 16_000,
            deadline_ms: Some(5_000),
            tts_format: None,
        };
        let frame = Frame::node(ServerToNode::JobAssign(assign));
        let job = PeerMsg::Job {
            job_id: "j-1".into(),
            node_id: "n-1".into(),
            session_id: "s-1".into(),
            utterance_index: 3,
            deadline_ms: 5_000,
            frame: frame.clone(),
        };
        let (from, back) = round_trip(job.clone()).unwrap();
        assert_eq!(from, "d1");
        assert_eq!(back, job, "the frame's text arrives verbatim");
        let wrong = PeerMsg::Job {
            job_id: "j-2".into(),
            node_id: "n-1".into(),
            session_id: "s-1".into(),
            utterance_index: 3,
            deadline_ms: 5_000,
            frame,
        };
        assert!(round_trip(wrong).is_none(), "a job frame for another job id is refused");
        let error = JobError { code: tolk_protocol::JobErrorCode::NodeBusy, message: "busy".into() };
        let result = PeerMsg::Result {
            job_id: "j-1".into(),
            node_id: "n-1".into(),
            result: Box::new(JobResult::failure("j-1".into(), "n-1".into(), "s-1".into(), 3, error)),
        };
        assert_eq!(round_trip(result.clone()).map(|(_, m)| m), Some(result));
        let moved = PeerMsg::SessionMoved { session_id: "s-9".into() };
        assert_eq!(round_trip(moved.clone()).map(|(_, m)| m), Some(moved));
        let guess = PeerMsg::PairingFailure { addr: [10, 0, 0, 1].into() };
        assert_eq!(round_trip(guess.clone()).map(|(_, m)| m), Some(guess));
        let bare = async_nats::Message {
            subject: "tolk.all".into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        assert!(decode(&bare).is_none(), "no headers: refused");
    }
}
