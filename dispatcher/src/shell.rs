//! The async shell around the core: it moves bytes and nothing more.
//!
//! - one task per WebSocket that reads and writes it (`ws::drive`); when
//!   it ends the core hears `Closed` once;
//! - one timer task that sleeps until the core's next deadline;
//! - HTTP: `/healthz`, `/readyz`, `/metrics`, and the admin API;
//! - TLS from PEM files; graceful shutdown.
//!
//! The core sits behind a `std::sync::Mutex`: every critical section is a
//! synchronous call into the core plus non-blocking `try_send`s, never an
//! `.await`, so a blocking mutex is the cheapest correct choice.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tolk_protocol::{ClientToServer, Message, NodeToServer, ProtocolError};

use crate::Error;
use crate::config::Config;
use crate::core::{Action, AdminCommand, ConnId, Core, Endpoint, Input, Millis};
use crate::metrics::{ShellMetrics, StatsSlot};
use crate::plugins::PluginHost;
use crate::ws::{self, Out, Upgrade};

/// `/app/` and `/dashboard` (dispatcher/src/web/): a child module so it reads this state without it being exported.
#[path = "web/mod.rs"]
pub mod web;

/// Wall-clock milliseconds that follow tokio's clock, so tests can pause
/// and advance time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_ms: Millis,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        let base_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis);
        Self { base_ms, base: tokio::time::Instant::now() }
    }

    fn now(&self) -> Millis {
        self.base_ms + self.base.elapsed().as_millis() as Millis
    }

    fn instant_at(&self, ms: Millis) -> tokio::time::Instant {
        self.base + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }
}

/// A connection as the shell holds it. Dropping it ends the connection:
/// the send task sees its channel close, and the receive loop sees `_kill`
/// dropped (so a peer stuck in a blocked write is cut off too).
struct Peer {
    tx: mpsc::Sender<Out>,
    _kill: tokio::sync::oneshot::Sender<()>,
}

struct State_ {
    core: Core,
    peers: HashMap<ConnId, Peer>,
}

struct Shared {
    state: Mutex<State_>,
    config: Config,
    registry: Registry,
    metrics: ShellMetrics,
    /// The core's counters as of the last scrape (read by the collector).
    stats: StatsSlot,
    clock: Clock,
    next_conn: AtomicU64,
    connections: Arc<Semaphore>,
    timer_wake: Notify,
    shutting_down: AtomicBool,
    plugins: Option<PluginHost>,
    /// The NATS link in cluster mode (set when `run` starts it).
    link: Arc<std::sync::OnceLock<crate::cluster::Link>>,
}

/// A running dispatcher's shared handle (cheap to clone).
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher with a core seeded from the operating system's CSPRNG.
    /// Fails when the configured canary set cannot be loaded: running
    /// without the verification the operator asked for would be worse.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    fn with_rng(config: Config, rng: StdRng) -> Result<Self, Error> {
        let canaries = config.trust.canaries.as_deref().map(crate::canaries::load).transpose()?;
        let clock = Clock::new();
        let metrics = ShellMetrics::default();
        let stats = StatsSlot::default();
        let mut registry = Registry::default();
        crate::metrics::register(&mut registry, &metrics, stats.clone());
        let mut core = Core::new(config.core.clone(), rng, clock.now());
        if let Some(set) = &canaries {
            tracing::info!(canaries = set.canaries.len(), "trust: new public nodes are on probation until they pass their canaries");
        }
        core.set_trust(config.trust.clone(), canaries);
        let link = Arc::new(std::sync::OnceLock::new());
        if config.cluster.nats_url.is_some() {
            let mut rng = StdRng::from_os_rng();
            let random_name = || {
                let mut b = [0u8; 6];
                rand::RngCore::fill_bytes(&mut rng, &mut b);
                format!("d-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            };
            let (name, secret) = crate::cluster::settings(&config.cluster, random_name)?;
            core.set_secret(secret.as_bytes());
            core.set_cluster(crate::core::cluster::ClusterSettings { id: name, peer_timeout_ms: config.cluster.peer_timeout_ms });
            registry.sub_registry_with_prefix("tolk").register_collector(Box::new(crate::cluster::LinkCollector(link.clone())));
        }
        let plugins = match PluginHost::new(config.plugins.clone(), &mut registry) {
            Ok(host) => host,
            Err(e) => {
                // Without a working engine the dispatcher still serves, with built-ins.
                tracing::error!("wasm plugins disabled: {e}");
                None
            }
        };
        if let Some(host) = &plugins {
            core.set_policy(Box::new(host.policy()));
        }
        let connections = Arc::new(Semaphore::new(config.max_connections));
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State_ { core, peers: HashMap::new() }),
                config,
                registry,
                metrics,
                stats,
                clock,
                next_conn: AtomicU64::new(1),
                connections,
                timer_wake: Notify::new(),
                shutting_down: AtomicBool::new(false),
                plugins,
                link,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock would be a bug in the core; keep
        // serving with the state as it is rather than poisoning every task.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `stats` what the registry's core collector reports.
    fn store_stats(&self, stats: crate::core::CoreStats) {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// Runs `f` on the core, then carries out the actions it queued.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        self.with_core_from(None, f)
    }

    /// [`Dispatcher::with_core`] for the input read at `read_at`: the frames
    /// it causes carry that time to their send tasks.
    fn with_core_from<R>(&self, read_at: Option<std::time::Instant>, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let asked = std::time::Instant::now();
        let mut state = self.lock();
        let got = std::time::Instant::now();
        // Read under the lock, so the core's time never runs backwards.
        let now = self.shared.clock.now();
        let before = state.core.next_deadline();
        let r = f(&mut state.core, now);
        self.apply(&mut state, now, read_at);
        if state.core.next_deadline() < before || before.is_none() {
            self.shared.timer_wake.notify_one();
        }
        drop(state);
        let done = std::time::Instant::now();
        self.shared.metrics.lock_wait_seconds.inc_by((got - asked).as_secs_f64());
        self.shared.metrics.lock_held_seconds.inc_by((done - got).as_secs_f64());
        r
    }

    fn apply(&self, state: &mut State_, now: Millis, read_at: Option<std::time::Instant>) {
        loop {
            let actions = state.core.take_actions();
            if actions.is_empty() {
                return;
            }
            let mut dropped = Vec::new();
            let mut undetected = Vec::new();
            let mut unfound = Vec::new();
            let link = self.shared.link.get();
            for action in actions {
                let (conn, out) = match action {
                    Action::Send { conn, frame } => (conn, Out::Frame(frame, read_at)),
                    Action::Close { conn } => (conn, Out::Close),
                    Action::Peer { to, msg } => {
                        if let Some(link) = link {
                            link.send(to, msg);
                        }
                        continue;
                    }
                    Action::Store(op) => {
                        if let Some(link) = link {
                            link.store(op);
                        }
                        continue;
                    }
                    Action::LookupSession { conn, session_id, last } => {
                        match link {
                            Some(link) => link.lookup(conn, session_id, last, self.clone()),
                            None => unfound.push((conn, session_id, last)),
                        }
                        continue;
                    }
                    Action::Detect { job_id, audio, format, sample_rate, features } => {
                        match &self.shared.plugins {
                            Some(host) => self.spawn_detection(host.clone(), job_id, audio, format, sample_rate, features),
                            None => undetected.push(job_id),
                        }
                        continue;
                    }
                };
                let Some(peer) = state.peers.get(&conn) else { continue };
                if let Err(mpsc::error::TrySendError::Full(_)) = peer.tx.try_send(out) {
                    // The peer does not read: cut it off; memory stays bounded.
                    self.shared.metrics.slow_peers.inc();
                    tracing::warn!(conn, "peer is not reading: disconnecting");
                    dropped.push(conn);
                }
            }
            for job_id in undetected {
                state.core.handle(now, Input::Detected { job_id, extra: Default::default() });
            }
            for (conn, session_id, last) in unfound {
                state.core.handle(now, Input::SessionFound { conn, session_id, last, found: None });
            }
            for conn in dropped {
                // Dropping the peer ends both of its tasks and closes the socket.
                state.peers.remove(&conn);
                state.core.handle(now, Input::Closed { conn });
            }
        }
    }

    /// Runs the detectors on a blocking thread (decoding and wasm take
    /// milliseconds: never under the core's lock), then reports back —
    /// always, even if the detector panicked, so no result waits in vain.
    fn spawn_detection(
        &self,
        host: PluginHost,
        job_id: String,
        audio: Arc<str>,
        format: tolk_protocol::AudioFormat,
        sample_rate: u32,
        features: tolk_protocol::Features,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let found = tokio::task::spawn_blocking(move || host.detect(&audio, format, sample_rate, features)).await.unwrap_or_default();
            this.with_core(|core, now| core.handle(now, Input::Detected { job_id, extra: found }));
        });
    }

    /// Scans the plugin folder once (blocking: call it off the runtime).
    fn scan_plugins(&self) {
        let Some(host) = &self.shared.plugins else { return };
        let report = host.scan();
        if !report.loaded.is_empty() || !report.removed.is_empty() || report.scheduler_changed {
            let supplied = host.supplied_features();
            self.with_core(|core, _| core.set_supplied_features(supplied));
        }
    }

    async fn watch_plugins(self) {
        let poll = Duration::from_millis(self.shared.config.plugins.poll_ms.max(50));
        loop {
            tokio::time::sleep(poll).await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.scan_plugins()).await;
        }
    }

    /// The router with every route.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws/session", any(ws_session))
            .route("/ws/node", any(ws_node))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/admin/nodes", get(admin_nodes))
            .route("/admin/sessions", get(admin_sessions))
            .route("/admin/plugins", get(admin_plugins))
            .route("/admin/explain", get(admin_explain))
            .route("/admin/policy/promote", post(admin_promote))
            .route("/admin/nodes/{node_id}/{command}", post(admin_node_command))
            .with_state(self.clone())
            .merge(web::router(self.clone()))
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting,
    /// waits up to `shutdown_grace_ms` for running jobs, and closes every
    /// connection.
    pub async fn run(self, listener: std::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        listener.set_nonblocking(true)?;
        let cluster_name = self.lock().core.cluster_id().map(str::to_owned);
        if let Some(name) = cluster_name {
            let link =
                crate::cluster::Link::start(&self.shared.config.cluster, name.clone(), self.shared.config.max_frame_bytes, self.clone())
                    .await?;
            let _ = self.shared.link.set(link);
            tracing::info!(name = %name, "cluster mode: one fleet with the other dispatchers over NATS");
        }
        let handle = axum_server::Handle::new();
        let timers = tokio::spawn(self.clone().timer_task());
        let load = tokio::spawn(self.clone().load_task());
        // Plugins present at start are loaded before the first connection.
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.scan_plugins()).await;
        let watcher = self.shared.plugins.is_some().then(|| tokio::spawn(self.clone().watch_plugins()));
        let app = self.router().into_make_service_with_connect_info::<SocketAddr>();
        let server = {
            let handle = handle.clone();
            let config = &self.shared.config;
            match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    let tls = tls_config(cert, key)?;
                    // No Nagle delay: small frames (heartbeats, short results) leave at once.
                    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(axum_server::accept::NoDelayAcceptor::new());
                    let server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle);
                    tokio::spawn(async move { server.serve(app).await })
                }
                (None, None) => {
                    let server = axum_server::from_tcp(listener)?.acceptor(axum_server::accept::NoDelayAcceptor::new()).handle(handle);
                    tokio::spawn(async move { server.serve(app).await })
                }
                _ => return Err(Error::Config("tls_cert and tls_key go together".into())),
            }
        };
        shutdown.await;
        tracing::info!("shutting down: no new connections; waiting for running jobs");
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let grace = Duration::from_millis(self.shared.config.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && self.lock().core.running_jobs() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        {
            let mut state = self.lock();
            for peer in state.peers.values() {
                let _ = peer.tx.try_send(Out::Close);
            }
            state.peers.clear();
        }
        handle.graceful_shutdown(Some(Duration::from_secs(1)));
        timers.abort();
        load.abort();
        if let Some(w) = watcher {
            w.abort();
        }
        match server.await {
            Ok(result) => result.map_err(Error::Io),
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        }
    }

    /// Every 100 ms: the scheduling lag (a task that yields waits behind
    /// every task ready to run: connections with frames waiting, when the
    /// dispatcher is behind), sampled every 10 ms, for the core's CPU
    /// shedder; and how busy the worker threads were, for `/metrics`.
    async fn load_task(self) {
        /// How often the lag is sampled, and how often the samples are read.
        const SAMPLE_EVERY: Duration = Duration::from_millis(10);
        const READING_EVERY: Duration = Duration::from_millis(100);
        // In a current-thread runtime (tests) the one thread also runs
        // whatever else the process does: its lag says nothing of the
        // dispatcher's own load.
        let runtime = tokio::runtime::Handle::current();
        // (With shedding off the readings still go to `/metrics`.)
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return;
        }
        let metrics = runtime.metrics();
        let workers = metrics.num_workers().max(1);
        let busy_total = || (0..workers).map(|w| metrics.worker_total_busy_duration(w)).sum::<Duration>();
        let mut last = (std::time::Instant::now(), busy_total());
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // (sum, least, count) of the reading's samples, ms.
        let mut samples = (0.0, f64::INFINITY, 0u32);
        loop {
            tick.tick().await;
            let asked = std::time::Instant::now();
            tokio::task::yield_now().await;
            let lag_ms = asked.elapsed().as_secs_f64() * 1000.0;
            samples = (samples.0 + lag_ms, samples.1.min(lag_ms), samples.2 + 1);
            let now = (std::time::Instant::now(), busy_total());
            if now.0.duration_since(last.0) < READING_EVERY {
                continue;
            }
            // The least sample tells a standing queue (every sample waits)
            // from a burst (some do), as CoDel's minimum sojourn does.
            let (sum, least_lag_ms, count) = std::mem::replace(&mut samples, (0.0, f64::INFINITY, 0));
            let lag_ms = sum / f64::from(count.max(1));
            let wall = now.0.duration_since(last.0).as_secs_f64() * workers as f64;
            let busy = if wall > 0.0 { now.1.saturating_sub(last.1).as_secs_f64() / wall } else { 0.0 };
            last = now;
            self.shared.metrics.worker_busy.set(busy.min(1.0));
            self.shared.metrics.scheduling_lag.set(lag_ms);
            self.with_core(|core, now| core.handle(now, Input::Load { lag_ms, least_lag_ms }));
        }
    }

    async fn timer_task(self) {
        loop {
            let next = self.lock().core.next_deadline();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.shared.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => self.with_core(|core, now| core.on_timeout(now)),
                () = self.shared.timer_wake.notified() => {}
            }
        }
    }

    /// Drives one connection in one task ([`ws::drive`]): frames read go to
    /// the core, frames the core queues are written, both at once.
    async fn serve_socket(self, io: ws::Io, endpoint: Endpoint, addr: IpAddr, _permit: tokio::sync::OwnedSemaphorePermit) {
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Out>(self.outbound_capacity(endpoint));
        let (kill, mut killed) = tokio::sync::oneshot::channel::<()>();
        // Frames up to twice the limit are read and answered with an error;
        // larger ones end the connection at the WebSocket layer (1009).
        let limit = self.shared.config.max_frame_bytes.saturating_mul(2);
        let mut socket = ws::Socket::new(io, limit, self.shared.config.ws_read_buffer_bytes);
        self.lock().peers.insert(conn, Peer { tx, _kill: kill });
        self.with_core(|core, now| core.handle(now, Input::Opened { conn, endpoint, addr }));
        let dispatch_seconds = self.shared.metrics.dispatch_seconds.clone();
        let max = self.shared.config.max_frame_bytes;
        let on_message = |msg: WsMessage| {
            let read_at = std::time::Instant::now();
            let input = match msg {
                WsMessage::Text(text) if text.len() > max => {
                    Input::Invalid { conn, error: ProtocolError::frame_too_large(text.len(), max) }
                }
                WsMessage::Text(text) => {
                    // The frame's own buffer: the audio is parsed as a slice of it.
                    let owner = bytes::Bytes::from(text.clone());
                    match endpoint {
                        Endpoint::Session => match ClientToServer::parse_shared(text.as_str(), &owner) {
                            Ok(msg) => Input::Session { conn, msg },
                            Err(error) => Input::Invalid { conn, error },
                        },
                        Endpoint::Node => match NodeToServer::parse_shared(text.as_str(), &owner) {
                            Ok(msg) => Input::Node { conn, msg },
                            Err(error) => Input::Invalid { conn, error },
                        },
                    }
                }
                WsMessage::Binary(_) => Input::Invalid { conn, error: ProtocolError::binary_frame() },
                // Pings are answered by `ws::drive`; a close ends it.
                WsMessage::Close(_) | WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return,
            };
            self.with_core_from(Some(read_at), |core, now| core.handle(now, input));
        };
        let sent = |at: std::time::Instant| dispatch_seconds.observe(at.elapsed().as_secs_f64());
        let end = ws::drive(&mut socket, &mut rx, &mut killed, on_message, sent).await;
        self.lock().peers.remove(&conn);
        self.with_core(|core, now| core.handle(now, Input::Closed { conn }));
        ws::close(&mut socket, end).await;
    }

    /// Frames queued to one peer before it counts as not reading. For a
    /// node never below what the core may legitimately send it at once
    /// (`max_jobs_per_node` jobs, plus control frames), so a busy but healthy
    /// node with many slots is not cut off for what we sent it. A session's
    /// bound stays `outbound_queue`: a phone that does not read is cut off.
    fn outbound_capacity(&self, endpoint: Endpoint) -> usize {
        let c = &self.shared.config;
        match endpoint {
            Endpoint::Node => c.outbound_queue.max(2 * c.core.max_jobs_per_node as usize + 64),
            Endpoint::Session => c.outbound_queue.max(1),
        }
    }

    fn upgrade(&self, ws: Upgrade, endpoint: Endpoint, addr: SocketAddr) -> Response {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
        }
        let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
        };
        let this = self.clone();
        ws.on_upgrade(move |io| this.serve_socket(io, endpoint, addr.ip(), permit))
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
        let Some(token) = &self.shared.config.admin_token else { return Err(StatusCode::NOT_FOUND) };
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq::constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }
}

async fn ws_session(State(d): State<Dispatcher>, ConnectInfo(addr): ConnectInfo<SocketAddr>, ws: Upgrade) -> Response {
    d.upgrade(ws, Endpoint::Session, addr)
}

async fn ws_node(State(d): State<Dispatcher>, ConnectInfo(addr): ConnectInfo<SocketAddr>, ws: Upgrade) -> Response {
    d.upgrade(ws, Endpoint::Node, addr)
}

async fn readyz(State(d): State<Dispatcher>) -> impl IntoResponse {
    if d.shared.shutting_down.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if d.shared.link.get().is_some_and(|l| !l.connected()) {
        // Still serving its own sessions and nodes: ready, but say so.
        (StatusCode::OK, "degraded: the cluster's NATS is unreachable; serving local sessions and nodes")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(d): State<Dispatcher>) -> impl IntoResponse {
    let stats = d.lock().core.stats();
    d.store_stats(stats);
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &d.shared.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), String::new());
    }
    let mut headers = HeaderMap::new();
    headers.insert("content-type", axum::http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    (StatusCode::OK, headers, body)
}

async fn admin_nodes(State(d): State<Dispatcher>, headers: HeaderMap) -> Response {
    match d.authorized(&headers) {
        Ok(()) => Json(d.lock().core.list_nodes()).into_response(),
        Err(status) => status.into_response(),
    }
}

async fn admin_plugins(State(d): State<Dispatcher>, headers: HeaderMap) -> Response {
    match d.authorized(&headers) {
        Ok(()) => Json(d.shared.plugins.as_ref().map(PluginHost::list).unwrap_or_default()).into_response(),
        Err(status) => status.into_response(),
    }
}

/// `GET /admin/explain?src_lang=zh&tgt_lang=en[&dialect=…][&session=ID]`:
/// every node and why it would or would not get that job.
async fn admin_explain(
    State(d): State<Dispatcher>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<crate::core::eligibility::ExplainQuery>,
) -> Response {
    if let Err(status) = d.authorized(&headers) {
        return status.into_response();
    }
    if q.src_lang.is_empty() || q.tgt_lang.is_empty() || q.src_lang.len() > 32 || q.tgt_lang.len() > 32 {
        return (StatusCode::BAD_REQUEST, "src_lang and tgt_lang are required (language codes)").into_response();
    }
    match d.with_core(|core, now| core.explain(now, &q)) {
        Ok(e) => Json(e).into_response(),
        Err(message) => (StatusCode::NOT_FOUND, message).into_response(),
    }
}

/// `POST /admin/policy/promote`: the shadow policy takes effect; the one it
/// replaces becomes the shadow.
async fn admin_promote(State(d): State<Dispatcher>, headers: HeaderMap) -> Response {
    if let Err(status) = d.authorized(&headers) {
        return status.into_response();
    }
    let Some(host) = d.shared.plugins.clone() else {
        return (StatusCode::NOT_FOUND, "plugins are off ([plugins] dir)").into_response();
    };
    // A scan reads the plugin folder: off the async threads.
    match tokio::task::spawn_blocking(move || host.promote()).await {
        Ok(Ok((policy, shadow))) => Json(serde_json::json!({ "policy": policy, "shadow": shadow })).into_response(),
        Ok(Err(message)) => (StatusCode::CONFLICT, message).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "promotion failed").into_response(),
    }
}

async fn admin_sessions(State(d): State<Dispatcher>, headers: HeaderMap) -> Response {
    match d.authorized(&headers) {
        Ok(()) => Json(d.lock().core.list_sessions()).into_response(),
        Err(status) => status.into_response(),
    }
}

async fn admin_node_command(State(d): State<Dispatcher>, headers: HeaderMap, Path((node_id, command)): Path<(String, String)>) -> Response {
    if let Err(status) = d.authorized(&headers) {
        return status.into_response();
    }
    let cmd = match command.as_str() {
        "drain" => AdminCommand::Drain { node_id },
        "shutdown" => AdminCommand::Shutdown { node_id },
        "reload_config" => AdminCommand::ReloadConfig { node_id },
        "probation" => AdminCommand::Probation { node_id },
        "vouch" => AdminCommand::Vouch { node_id },
        _ => return (StatusCode::NOT_FOUND, "commands: drain, shutdown, reload_config, probation, vouch").into_response(),
    };
    match d.with_core(|core, now| core.admin(now, cmd)) {
        Ok(()) => (StatusCode::OK, "sent").into_response(),
        Err(message) => (StatusCode::NOT_FOUND, message).into_response(),
    }
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<axum_server::tls_rustls::RustlsConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
}

/// For tests: a dispatcher whose ids come from a seeded RNG.
#[doc(hidden)]
#[allow(clippy::expect_used)] // tests only: a configuration that does not load fails the test
pub fn seeded(config: Config, seed: u64) -> Dispatcher {
    Dispatcher::with_rng(config, StdRng::seed_from_u64(seed)).expect("a test configuration that loads")
}
