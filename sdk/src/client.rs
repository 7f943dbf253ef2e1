//! The tokio shell: a [`Session`] and a [`Chunker`] on one worker thread.
//!
//! [`Client::start`] spawns one OS thread per client that runs a
//! current-thread tokio runtime. The thread owns the chunker, the session
//! state machine and the WebSocket; the app talks to it over a bounded
//! command channel ([`Client::push_audio`], [`Client::cut`],
//! [`Client::close`]) and hears back through its [`Listener`], called on that
//! thread.
//!
//! **Why a thread and not `unsafe impl Send`.** [`Chunker`] holds the
//! `webrtc-vad` C handle, a raw pointer, so it is not `Send`, and this
//! workspace denies `unsafe`. Keeping it on the one thread that created it
//! needs no `unsafe` at all, and the app-facing [`Client`] (a channel sender)
//! is `Send + Sync`, as uniffi objects must be. The thread also keeps the
//! app's audio callback free of network work: a push is a channel send.
//!
//! The shell only moves bytes: it opens and drops connections, writes the
//! frames the session asks for, reads frames and timer wake-ups into it, and
//! hands events to the listener. Every decision is [`Session`]'s, except
//! which dispatcher URL a connection goes to: that is `UrlRotation`'s, plain
//! synchronous code below.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt as _, StreamExt as _};
use rand::{Rng as _, SeedableRng as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::session::{Action, ConnectionState, Event, Input, Millis, Session, SessionConfig};
use crate::{Chunker, ChunkerConfig, SdkError, Utterance};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Socket, String>>>>;

/// Receives a client's events, on the client's worker thread, in order.
///
/// Keep it quick (hand the event to the UI thread): the worker waits for it.
/// Calling the [`Client`] from inside is fine (its calls never block).
pub trait Listener: Send + 'static {
    /// One event; [`ConnectionState::Closed`](crate::ConnectionState::Closed)
    /// is the last.
    fn on_event(&self, event: Event);
}

impl<F: Fn(Event) + Send + 'static> Listener for F {
    fn on_event(&self, event: Event) {
        self(event)
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// `ws://HOST:PORT/ws/session` or `wss://...`: the first choice.
    pub url: String,
    /// Other dispatchers of the same cluster (same form as `url`), empty by
    /// default. After a failed attempt or a lost connection the next
    /// connection goes to the next URL (`url`, then these in order, then
    /// `url` again), where the session resumes: dispatchers of a cluster
    /// share session state.
    pub fallback_urls: Vec<String>,
    pub session: SessionConfig,
    /// The sample rate of the audio pushed is `chunker.sample_rate`.
    pub chunker: ChunkerConfig,
    /// PEM certificates trusted for `wss://` besides the built-in public
    /// roots (Mozilla's, from `webpki-roots`): for a private or test server.
    pub extra_root_certs_pem: Option<String>,
    /// Commands (audio pushes, cuts) queued for the worker thread.
    pub command_queue: usize,
    /// Seed of the reconnect jitter; random when `None`.
    pub seed: Option<u64>,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            fallback_urls: Vec::new(),
            session: SessionConfig::default(),
            chunker: ChunkerConfig::default(),
            extra_root_certs_pem: None,
            command_queue: 1024,
            seed: None,
        }
    }
}

#[derive(Debug)]
enum Command {
    Audio(Vec<i16>),
    Utterance(Utterance),
    Cut,
    Close,
}

/// A running session client: feed it audio, hear results through the
/// [`Listener`].
///
/// Dropping it without [`close`](Self::close) aborts the session (outcomes
/// still pending fail with [`failure::CLOSED`](crate::failure::CLOSED)); after
/// `close`, the worker finishes draining on its own.
#[derive(Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    /// Disconnected when the worker thread ends.
    done: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Client {
    /// Validates `config`, then starts the worker thread, which connects at
    /// once.
    pub fn start(config: ClientConfig, listener: impl Listener) -> Result<Self, SdkError> {
        config.chunker.validate()?;
        config.session.validate()?;
        let url = ws_url(&config.url).ok_or_else(|| SdkError::client_config("url", "must start with ws:// or wss://"))?;
        let mut fallbacks = Vec::with_capacity(config.fallback_urls.len());
        for (i, fallback) in config.fallback_urls.iter().enumerate() {
            let url = ws_url(fallback).ok_or_else(|| {
                SdkError::client_config("fallback_urls", format!("entry {i} ({fallback:?}) must start with ws:// or wss://"))
            })?;
            fallbacks.push(url);
        }
        if config.command_queue == 0 {
            return Err(SdkError::client_config("command_queue", "must be positive"));
        }
        let tls = tls_config(config.extra_root_certs_pem.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SdkError::client_config("runtime", format!("cannot start a tokio runtime: {e}")))?;
        let seed = match config.seed {
            Some(seed) => seed,
            None => rand::rngs::StdRng::from_os_rng().random(),
        };
        let (tx, rx) = mpsc::channel(config.command_queue);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker =
            Worker { urls: UrlRotation::new(url, fallbacks), tls, session: config.session, chunker: config.chunker, seed, listener };
        std::thread::Builder::new()
            .name("tolk-client".to_owned())
            .spawn(move || {
                let _done = done_tx;
                runtime.block_on(worker.run(rx));
            })
            .map_err(|e| SdkError::client_config("thread", format!("cannot start the worker thread: {e}")))?;
        Ok(Self { tx, done: Mutex::new(done_rx) })
    }

    fn command(&self, command: Command) -> Result<(), SdkError> {
        self.tx.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SdkError::Busy,
            mpsc::error::TrySendError::Closed(_) => SdkError::Closed,
        })
    }

    /// Mono PCM16 at `chunker.sample_rate`, any length: the chunker cuts it
    /// into utterances and each is sent.
    pub fn push_audio(&self, samples: &[i16]) -> Result<(), SdkError> {
        self.command(Command::Audio(samples.to_vec()))
    }

    /// Like [`push_audio`](Self::push_audio), from little-endian PCM16 bytes
    /// (what bindings pass: a byte array crosses FFI in one copy).
    pub fn push_pcm16_le(&self, bytes: &[u8]) -> Result<(), SdkError> {
        if !bytes.len().is_multiple_of(2) {
            return Err(SdkError::OddPcmLength(bytes.len()));
        }
        self.command(Command::Audio(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()))
    }

    /// Sends an utterance cut elsewhere, bypassing the chunker.
    pub fn push_utterance(&self, utterance: Utterance) -> Result<(), SdkError> {
        self.command(Command::Utterance(utterance))
    }

    /// Ends the current utterance now (a push-to-talk release).
    pub fn cut(&self) -> Result<(), SdkError> {
        self.command(Command::Cut)
    }

    /// Flushes the chunker, waits for every outcome (up to
    /// `close_timeout_ms`), closes the session. Returns at once; the listener
    /// hears `Closed` at the end.
    pub fn close(&self) -> Result<(), SdkError> {
        // A full queue must not lose the close: wait for room on a helper
        // thread rather than fail.
        match self.tx.try_send(Command::Close) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.blocking_send(cmd);
                });
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` for the worker to stop; true when it has.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(done.recv_timeout(timeout), Err(std::sync::mpsc::RecvTimeoutError::Disconnected) | Ok(()))
    }
}

/// `url` trimmed, if it is a WebSocket URL.
fn ws_url(url: &str) -> Option<String> {
    let url = url.trim();
    (url.starts_with("ws://") || url.starts_with("wss://")).then(|| url.to_owned())
}

/// Which dispatcher each connection goes to: the first URL first; after a
/// failed attempt or a lost connection, the next one (wrapping around), so a
/// dead dispatcher costs one back-off step; a working one is kept.
///
/// The session asks for a connection ([`Action::Connect`]) once at start
/// and afterwards only after the previous attempt failed or the connection
/// was lost, whoever noticed (the shell: refused, closed, a failed write; the
/// session: no `session_init_ack`, silence, a refused `session_init`). So
/// every connection after the first moves on, and the shell needs no
/// bookkeeping of why the last one ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlRotation {
    /// The first choice, then the fallbacks: never empty.
    urls: Vec<String>,
    /// Below `urls.len()`.
    current: usize,
    started: bool,
}

impl UrlRotation {
    fn new(first: String, fallbacks: Vec<String>) -> Self {
        let mut urls = vec![first];
        urls.extend(fallbacks);
        Self { urls, current: 0, started: false }
    }

    /// The URL of the connection the session asks for now.
    fn connect(&mut self) -> &str {
        if self.started {
            self.current = (self.current + 1) % self.urls.len();
        }
        self.started = true;
        &self.urls[self.current]
    }

    /// The URL of the last connection asked for (the first before any).
    fn current(&self) -> &str {
        &self.urls[self.current]
    }
}

/// Public roots plus `extra_pem`, with the ring provider.
fn tls_config(extra_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, SdkError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| SdkError::client_config("extra_root_certs_pem", format!("not a PEM certificate: {e}")))?;
            roots.add(cert).map_err(|e| SdkError::client_config("extra_root_certs_pem", format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(SdkError::client_config("extra_root_certs_pem", "holds no certificate"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SdkError::client_config("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect(url: String, tls: Arc<rustls::ClientConfig>) -> Result<Socket, String> {
    let connector = Connector::Rustls(tls);
    match tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector)).await {
        Ok((socket, _response)) => Ok(socket),
        Err(e) => Err(e.to_string()),
    }
}

/// What woke the worker.
enum Wake {
    Command(Option<Command>),
    Connect(Box<Result<Socket, String>>),
    Read(Option<Result<Ws, tokio_tungstenite::tungstenite::Error>>),
    Timer,
}

struct Worker<L> {
    urls: UrlRotation,
    tls: Arc<rustls::ClientConfig>,
    session: SessionConfig,
    chunker: ChunkerConfig,
    seed: u64,
    listener: L,
}

impl<L: Listener> Worker<L> {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let start = Instant::now();
        let now = || Millis::try_from(start.elapsed().as_millis()).unwrap_or(Millis::MAX);
        let epoch_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0);
        // Both configs were validated by `Client::start`.
        let mut chunker = match Chunker::new(self.chunker.clone()) {
            Ok(c) => c,
            Err(e) => return self.listener.on_event(Event::Error(e)),
        };
        let mut session = match Session::new(self.session.clone(), self.seed, epoch_ms, now()) {
            Ok(s) => s,
            Err(e) => return self.listener.on_event(Event::Error(e)),
        };
        // A write that takes longer than this means a dead connection.
        let write_timeout = Duration::from_millis(self.session.dead_after_ms);
        let mut socket: Option<Socket> = None;
        let mut connecting: Option<Connecting> = None;
        let mut commands_open = true;
        let mut close_requested = false;
        loop {
            // Carry out what the session asked for; a failed write feeds
            // back in and may queue more.
            loop {
                let actions = session.take_actions();
                if actions.is_empty() {
                    break;
                }
                for action in actions {
                    match action {
                        Action::Connect => {
                            socket = None;
                            let url = self.urls.connect().to_owned();
                            connecting = Some(Box::pin(connect(url, self.tls.clone())));
                        }
                        Action::Send(text) => {
                            let Some(ws) = socket.as_mut() else { continue };
                            let failure = match tokio::time::timeout(write_timeout, ws.send(Ws::text(text))).await {
                                Ok(Ok(())) => None,
                                Ok(Err(e)) => Some(e.to_string()),
                                Err(_) => Some("write timed out".to_owned()),
                            };
                            if let Some(reason) = failure {
                                socket = None;
                                session.handle(now(), Input::ConnectionLost(reason));
                            }
                        }
                        Action::Disconnect => {
                            connecting = None;
                            if let Some(mut ws) = socket.take() {
                                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                            }
                        }
                        // The app learns which dispatcher failed (the session
                        // does not know URLs); the next attempt goes to the
                        // next one.
                        Action::Deliver(Event::State(ConnectionState::Disconnected { reason, retry_in_ms })) => {
                            let reason = format!("{reason} (at {})", self.urls.current());
                            self.listener.on_event(Event::State(ConnectionState::Disconnected { reason, retry_in_ms }));
                        }
                        Action::Deliver(event) => self.listener.on_event(event),
                    }
                }
            }
            if session.is_closed() {
                return;
            }
            let deadline = session.next_deadline().map(|d| start + Duration::from_millis(d));
            let wake = {
                let connect_done = async {
                    match connecting.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                let read = async {
                    match socket.as_mut() {
                        Some(ws) => ws.next().await,
                        None => std::future::pending().await,
                    }
                };
                let timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    cmd = rx.recv(), if commands_open => Wake::Command(cmd),
                    res = connect_done => Wake::Connect(Box::new(res)),
                    msg = read => Wake::Read(msg),
                    () = timer => Wake::Timer,
                }
            };
            match wake {
                Wake::Command(Some(Command::Audio(samples))) => {
                    for u in chunker.push(&samples) {
                        session.handle(now(), Input::Utterance(u));
                    }
                }
                Wake::Command(Some(Command::Utterance(u))) => session.handle(now(), Input::Utterance(u)),
                Wake::Command(Some(Command::Cut)) => {
                    if let Some(u) = chunker.cut() {
                        session.handle(now(), Input::Utterance(u));
                    }
                }
                Wake::Command(Some(Command::Close)) => {
                    if !close_requested {
                        close_requested = true;
                        if let Some(u) = chunker.flush() {
                            session.handle(now(), Input::Utterance(u));
                        }
                        session.handle(now(), Input::Close);
                    }
                }
                Wake::Command(None) => {
                    // Every `Client` handle is gone.
                    commands_open = false;
                    if !close_requested {
                        session.handle(now(), Input::Abort);
                    }
                }
                Wake::Connect(res) => {
                    connecting = None;
                    match *res {
                        Ok(ws) => {
                            socket = Some(ws);
                            session.handle(now(), Input::Connected);
                        }
                        Err(reason) => session.handle(now(), Input::ConnectFailed(reason)),
                    }
                }
                Wake::Read(Some(Ok(Ws::Text(text)))) => session.handle(now(), Input::Frame(text.as_str())),
                Wake::Read(Some(Ok(Ws::Binary(_)))) => {
                    self.listener.on_event(Event::Error(SdkError::BadFrame("binary frame ignored".to_owned())));
                }
                Wake::Read(Some(Ok(Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_)))) => {}
                Wake::Read(Some(Ok(Ws::Close(frame)))) => {
                    socket = None;
                    let why = frame.map_or_else(|| "closed by the server".to_owned(), |f| format!("closed by the server: {}", f.reason));
                    session.handle(now(), Input::ConnectionLost(why));
                }
                Wake::Read(Some(Err(e))) => {
                    socket = None;
                    session.handle(now(), Input::ConnectionLost(e.to_string()));
                }
                Wake::Read(None) => {
                    socket = None;
                    session.handle(now(), Input::ConnectionLost("connection closed".to_owned()));
                }
                Wake::Timer => session.on_timeout(now()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(urls: &[&str]) -> UrlRotation {
        UrlRotation::new(urls[0].to_owned(), urls[1..].iter().map(|u| (*u).to_owned()).collect())
    }

    #[test]
    fn the_first_url_first_then_the_next_after_each_loss_wrapping_around() {
        let mut r = rotation(&["ws://a", "ws://b", "ws://c"]);
        assert_eq!(r.current(), "ws://a");
        let order: Vec<String> = (0..7).map(|_| r.connect().to_owned()).collect();
        assert_eq!(order, ["ws://a", "ws://b", "ws://c", "ws://a", "ws://b", "ws://c", "ws://a"]);
        // A Disconnected names the URL that just failed.
        assert_eq!(r.current(), "ws://a");
    }

    #[test]
    fn one_url_is_always_that_url() {
        let mut r = rotation(&["ws://only"]);
        for _ in 0..3 {
            assert_eq!(r.connect(), "ws://only");
        }
    }

    /// Runs the session's actions; the URLs connected to.
    fn run(s: &mut Session, r: &mut UrlRotation) -> Vec<String> {
        s.take_actions().into_iter().filter(|a| *a == Action::Connect).map(|_| r.connect().to_owned()).collect()
    }

    /// Fires the session's timers up to `to`; the URLs connected to.
    fn wait(s: &mut Session, r: &mut UrlRotation, now: &mut Millis, to: Millis) -> Vec<String> {
        let mut urls = vec![];
        while let Some(d) = s.next_deadline().filter(|&d| d <= to) {
            *now = (*now).max(d);
            s.on_timeout(*now);
            urls.extend(run(s, r));
        }
        *now = to;
        urls
    }

    /// Driven by a real [`Session`]: a working dispatcher is kept, and each
    /// failure or loss, noticed by the shell or by the session, moves on
    /// exactly once.
    #[test]
    fn each_failure_or_loss_moves_to_the_next_url_once() {
        let cfg = SessionConfig { src_lang: "en".into(), tgt_lang: "de".into(), ..SessionConfig::default() };
        let (handshake, dead) = (cfg.handshake_timeout_ms, cfg.dead_after_ms);
        let mut s = Session::new(cfg, 1, 0, 0).unwrap();
        let mut r = rotation(&["ws://a", "ws://b"]);
        let mut now = 0;
        let ack = r#"{"type":"session_init_ack","session_id":"s1","assigned_node_id":null,"message":"ok","resume_token":"t1"}"#;

        assert_eq!(run(&mut s, &mut r), ["ws://a"]);
        // Refused by the shell: the retry goes to b.
        s.handle(now, Input::ConnectFailed("refused".into()));
        assert!(run(&mut s, &mut r).is_empty());
        assert_eq!(wait(&mut s, &mut r, &mut now, 1_000), ["ws://b"]);
        // b works: heartbeats and time pass, b is kept.
        s.handle(now, Input::Connected);
        s.handle(now, Input::Frame(ack));
        assert!(run(&mut s, &mut r).is_empty());
        for _ in 0..10 {
            let to = now + dead / 2;
            assert!(wait(&mut s, &mut r, &mut now, to).is_empty());
            s.handle(now, Input::Frame(r#"{"type":"server_heartbeat","session_id":"s1","timestamp":0}"#));
        }
        // The session notices b went silent: the next connection goes to a.
        let to = now + dead + 1_000;
        assert_eq!(wait(&mut s, &mut r, &mut now, to), ["ws://a"]);
        // a accepts the connection but never acks: back to b.
        s.handle(now, Input::Connected);
        let to = now + handshake + 2_000;
        assert_eq!(wait(&mut s, &mut r, &mut now, to), ["ws://b"]);
        // b resumes; then the shell loses the connection: a once more.
        s.handle(now, Input::Connected);
        s.handle(now, Input::Frame(ack));
        assert!(run(&mut s, &mut r).is_empty());
        s.handle(now, Input::ConnectionLost("reset".into()));
        let to = now + 1_000;
        assert_eq!(wait(&mut s, &mut r, &mut now, to), ["ws://a"]);
    }
}
