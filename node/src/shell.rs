//! The async shell around [`NodeCore`]: one WebSocket to the dispatcher,
//! timers, blocking threads for jobs, the state directory. It moves bytes
//! and carries out the core's actions; it decides nothing.
//!
//! One task owns the socket and the core and loops over: a frame from the
//! dispatcher, a finished job or reload, the core's next wake-up, the
//! reconnect timer, a pairing request, the shutdown future. Jobs run on
//! tokio's blocking pool (engine calls are synchronous FFI) and report back
//! through a channel bounded by `max_jobs`-many senders at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tolk_protocol::{Features, Message, ServerToNode};

use crate::config::Config;
use crate::core::{Action, CoreConfig, Event, NodeCore};
use crate::engine::{EngineSet, Hosting, StartFailure};
use crate::machine::{self, LoadSampler};
use crate::{Error, identity, pipeline};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `ws://HOST:PORT` (the `/ws/node` path is added when none is given).
    pub dispatcher: String,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    /// Ask for a pairing code once registered, and print it.
    pub pair: bool,
}

/// The node endpoint for a dispatcher address: `ws://h:p` → `ws://h:p/ws/node`.
pub fn node_url(dispatcher: &str) -> Result<String, Error> {
    let Some((scheme, rest)) = dispatcher.split_once("://") else {
        return Err(Error::Usage(format!("dispatcher address {dispatcher:?} must start with ws:// or wss://")));
    };
    if scheme != "ws" && scheme != "wss" {
        return Err(Error::Usage(format!("dispatcher address {dispatcher:?} must start with ws:// or wss://")));
    }
    match rest.find('/') {
        None => Ok(format!("{dispatcher}/ws/node")),
        Some(i) if rest[i..] == *"/" => Ok(format!("{}ws/node", dispatcher)),
        Some(_) => Ok(dispatcher.to_owned()),
    }
}

enum ShellEvent {
    JobDone(String, pipeline::Outcome),
    Reloaded(Result<(EngineSet, Vec<StartFailure>), String>),
}

/// Engines in child processes report their health here (from their
/// supervisor's lock: the send must not block, hence unbounded; a restart's
/// back-off bounds the rate).
fn hosting() -> (Hosting, mpsc::UnboundedReceiver<(Vec<String>, crate::engine::process::Notice)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let notify: crate::engine::NoticeFn = std::sync::Arc::new(move |ids: &[String], notice| {
        let _ = tx.send((ids.to_vec(), notice));
    });
    (Hosting::this_binary(Some(notify)), rx)
}

fn failures(list: Vec<StartFailure>) -> Vec<(String, String)> {
    list.into_iter().map(|f| (f.model_id, f.message)).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs the node until `shutdown` resolves (then finishes running jobs) or
/// the dispatcher says `shutdown`. Each message on `pair_requests` asks for a
/// pairing code (the binary wires SIGUSR1 to it).
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>, mut pair_requests: mpsc::Receiver<()>) -> Result<(), Error> {
    let url = node_url(&opts.dispatcher)?;
    let config = Config::load(&opts.config_path)?;
    let load_config = config.clone();
    let (hosting, mut engine_notices) = hosting();
    let load_hosting = hosting.clone();
    let (engines, startup_failures) = tokio::task::spawn_blocking(move || EngineSet::load(&load_config, &load_hosting))
        .await
        .map_err(|e| Error::Usage(format!("engine loading: {e}")))?;
    let mut engines = Arc::new(engines);
    let stored = identity::load(&opts.state_dir)?;
    // `wss://`: the public roots plus the configured private ones (checked now, not at the first connection).
    let tls = crate::tls::client_config(config.tls_ca_file.as_deref())?;
    let hardware = machine::detect_hardware();
    let mut sampler = LoadSampler::new(!hardware.gpus.is_empty());
    tracing::info!(cores = hardware.cpu_cores, memory_gb = hardware.memory_gb, gpus = hardware.gpus.len(), models = engines.models().len(), %url, "node starting");
    let cfg = CoreConfig {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        platform: machine::platform(),
        hardware,
        features: Features::default(),
        accept_public_jobs: config.accept_public_jobs,
        auth_token: config.auth_token.clone(),
        max_jobs: config.max_jobs,
        heartbeat_ms: config.heartbeat_ms,
        default_deadline_ms: config.default_deadline_ms,
        reconnect_min_ms: config.reconnect_min_ms,
        reconnect_max_ms: config.reconnect_max_ms,
        request_pairing_code: opts.pair,
        seed: unix_ms() ^ u64::from(std::process::id()).rotate_left(32),
    };
    let mut core = NodeCore::new(cfg, stored, engines.models(), failures(startup_failures));

    let clock = Instant::now();
    let now = move || clock.elapsed().as_millis() as u64;
    let (tx, mut rx) = mpsc::channel::<ShellEvent>(64);
    let mut ws: Option<Socket> = None;
    let mut connect_at: Option<tokio::time::Instant> = None;
    let mut cancels: HashMap<String, Arc<AtomicBool>> = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutdown_seen = false;
    let mut pairing_open = true;
    // The owner's status view: rewritten when it changes (and every 30 s).
    let mut last_connect_error: Option<String> = None;
    let (mut shown, mut shown_at) = (crate::status::NodeStatus::default(), 0u64);

    loop {
        // Carry out every queued action (some feed the core again).
        loop {
            let actions = core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Send(msg) => {
                        let Some(socket) = ws.as_mut() else { continue };
                        if let Err(e) = socket.send(Ws::text(msg.to_json())).await {
                            tracing::warn!(error = %e, "send failed");
                            ws = None;
                            core.handle(now(), Event::Disconnected);
                        }
                    }
                    Action::Connect { after_ms } => connect_at = Some(tokio::time::Instant::now() + Duration::from_millis(after_ms)),
                    Action::Close => {
                        if let Some(mut socket) = ws.take() {
                            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                        }
                    }
                    Action::StartJob(job) => {
                        let cancel = Arc::new(AtomicBool::new(false));
                        cancels.insert(job.job_id.clone(), cancel.clone());
                        let (engines, tx) = (engines.clone(), tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let outcome = pipeline::run(&engines, &job, &cancel);
                            let _ = tx.blocking_send(ShellEvent::JobDone(job.job_id, outcome));
                        });
                    }
                    Action::AbandonJob(job_id) => {
                        if let Some(c) = cancels.get(&job_id) {
                            c.store(true, Ordering::Relaxed);
                        }
                    }
                    Action::SaveIdentity(id) => {
                        if let Err(e) = identity::save(&opts.state_dir, &id) {
                            tracing::error!(error = %e, "cannot store the node identity");
                        }
                    }
                    Action::ForgetIdentity => {
                        if let Err(e) = identity::forget(&opts.state_dir) {
                            tracing::error!(error = %e, "cannot remove the stored node identity");
                        }
                    }
                    Action::ReloadConfig => {
                        let (path, tx, hosting) = (opts.config_path.clone(), tx.clone(), hosting.clone());
                        tokio::task::spawn_blocking(move || {
                            let loaded = Config::load(&path).map(|c| EngineSet::load(&c, &hosting)).map_err(|e| e.to_string());
                            let _ = tx.blocking_send(ShellEvent::Reloaded(loaded));
                        });
                    }
                    Action::ShowPairingCode { code, expires_at } => {
                        let minutes = expires_at.saturating_sub(unix_ms()).div_ceil(60_000);
                        println!("Pairing code: {code} (valid for {minutes} min; enter it in the app to use this node)");
                        tracing::info!(%code, expires_at, "pairing code");
                    }
                    Action::Exit => {
                        if let Some(mut socket) = ws.take() {
                            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                        }
                        tracing::info!("node stopped");
                        return Ok(());
                    }
                }
            }
        }

        let mut status = core.status();
        status.dispatcher.clone_from(&url);
        status.why_not_connected = if status.connected { None } else { last_connect_error.clone() };
        status.pid = std::process::id();
        if status != shown || unix_ms() >= shown_at + 30_000 {
            shown_at = unix_ms();
            shown = status.clone();
            status.updated_at = shown_at;
            if let Err(e) = crate::status::write(&opts.state_dir, &status) {
                tracing::warn!(error = %e, "cannot write the status file");
            }
        }

        let wake = core.next_wakeup().map(|at| tokio::time::Instant::from_std(clock + Duration::from_millis(at)));
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                core.handle(now(), Event::Shutdown);
            }
            Some(ev) = rx.recv() => match ev {
                ShellEvent::JobDone(job_id, outcome) => {
                    cancels.remove(&job_id);
                    core.handle(now(), Event::JobFinished { job_id, outcome });
                }
                ShellEvent::Reloaded(Ok((set, failed))) => {
                    engines = Arc::new(set);
                    core.handle(now(), Event::ModelsChanged { models: engines.models(), failures: failures(failed) });
                }
                ShellEvent::Reloaded(Err(message)) => core.handle(now(), Event::ReloadFailed(message)),
            },
            Some((model_ids, notice)) = engine_notices.recv() => core.handle(now(), Event::EngineHealth { model_ids, notice }),
            frame = next_frame(&mut ws), if ws.is_some() => match frame {
                Some(Ok(Ws::Text(text))) => match ServerToNode::parse(text.as_str()) {
                    Ok(msg) => core.handle(now(), Event::Frame(msg)),
                    Err(e) => tracing::warn!(error = %e.message, "unreadable frame from the dispatcher"),
                },
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => {
                    last_connect_error = Some("the dispatcher closed the connection".to_owned());
                    ws = None;
                    core.handle(now(), Event::Disconnected);
                }
                Some(Ok(_)) => {} // ping/pong (answered by tungstenite), binary: not in the protocol
            },
            () = tokio::time::sleep_until(connect_at.unwrap_or(far)), if connect_at.is_some() && ws.is_none() => {
                connect_at = None;
                let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
                let connecting = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, false, Some(connector));
                match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok((socket, _))) => {
                        tracing::info!(%url, "connected");
                        last_connect_error = None;
                        ws = Some(socket);
                        core.handle(now(), Event::Connected);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%url, error = %e, "cannot connect");
                        last_connect_error = Some(format!("cannot connect: {e}"));
                        core.handle(now(), Event::Disconnected);
                    }
                    Err(_) => {
                        tracing::warn!(%url, "connection attempt timed out");
                        last_connect_error = Some("the connection attempt timed out".to_owned());
                        core.handle(now(), Event::Disconnected);
                    }
                }
            }
            () = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {
                let load = sampler.sample();
                core.handle(now(), Event::Tick { unix_ms: unix_ms(), load });
            }
            req = pair_requests.recv(), if pairing_open => match req {
                Some(()) => core.handle(now(), Event::PairingRequested),
                None => pairing_open = false,
            },
        }
    }
}

async fn next_frame(ws: &mut Option<Socket>) -> Option<Result<Ws, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_path_is_added_when_missing() {
        assert_eq!(node_url("ws://h:1").unwrap(), "ws://h:1/ws/node");
        assert_eq!(node_url("ws://h:1/").unwrap(), "ws://h:1/ws/node");
        assert_eq!(node_url("wss://h/custom/ws/node").unwrap(), "wss://h/custom/ws/node");
        assert!(node_url("http://h").is_err() && node_url("h:1").is_err());
    }
}
