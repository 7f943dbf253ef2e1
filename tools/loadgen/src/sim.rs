//! The simulated phones and nodes, and one timed run of them against a
//! target (the dispatcher or the bare relay).
//!
//! Every timestamp comes from this process's monotonic clock: a session
//! stamps `t0` just before it sends an utterance and `t3` when the result is
//! read; a node stamps `t1` when it has read the job and `t2` just before it
//! sends the result. Nodes publish `t1`/`t2` in a shared table (one slot per
//! session and index), so **out** = t1 − t0 and **back** = t3 − t2: the time
//! the frame spent between the two simulated peers (target + loopback + both
//! WebSocket stacks), without the node's own delay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tolk_protocol::{Message, ServerToClient, ServerToNode};

use crate::Error;
use crate::frames::{self, ResultFrames, UtteranceFrames, key};
use crate::procstat::{Memory, Pid};
use crate::stats::Percentiles;
pub use crate::wsclient::Socket;
use crate::wsclient::TextFrame;

/// Where the simulated peers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `tolk-dispatcher`: sessions on `/ws/session`, nodes on `/ws/node`.
    Dispatcher(SocketAddr),
    /// The bare relay ([`crate::relay`]): `/s/{session}/{node}`, `/n/{node}`.
    Relay(SocketAddr),
    /// Two dispatchers of one cluster: sessions on the first, nodes on the
    /// second, so every job crosses NATS (forwarded and its result back).
    Cluster { sessions: SocketAddr, nodes: SocketAddr },
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Dispatcher(_) => "dispatcher",
            Target::Relay(_) => "bare relay",
            Target::Cluster { .. } => "2 dispatchers",
        }
    }

    fn is_relay(self) -> bool {
        matches!(self, Target::Relay(_))
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Simulated phones, each with its own connection and session.
    pub sessions: usize,
    /// Simulated nodes. The relay pairs session `i` with node `i mod nodes`.
    pub nodes: usize,
    /// Length of each utterance (pcm16 at `sample_rate`, base64).
    pub utterance_ms: u32,
    /// Length of the synthesised speech in each result (0: no `tts_audio`).
    pub tts_ms: u32,
    pub sample_rate: u32,
    /// Utterances per second per session; 0 is a closed loop (the next one
    /// as soon as the previous result arrives).
    pub rate: f64,
    /// How long each node holds a job before it answers.
    pub node_delay: Duration,
    /// Load before the measured window (not counted).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// After the window, how long outstanding results are waited for.
    pub drain: Duration,
    /// `max_jobs` each node registers with.
    pub max_jobs: u32,
    /// Unanswered utterances per session (the dispatcher refuses more than
    /// its `max_pending_per_session`, 64 by default). At the rate, an
    /// utterance due while the phone may not send (this many unanswered, or
    /// told to wait) is dropped and counted; with `hold_unsent`, it is held
    /// and sent as soon as the phone may, as the SDK's queue holds it.
    pub max_pending: usize,
    /// Hold an utterance the phone may not send when it is due and send it
    /// as soon as it may (the SDK's queue), instead of dropping it: the
    /// offered rate is then what the phones produce, not what reaches the
    /// server.
    pub hold_unsent: bool,
    /// Connection handshakes in flight at once.
    pub connect_parallel: usize,
    /// Each session's `client_heartbeat` period, carrying `last_utterance_index`
    /// as the SDK does (it lets the dispatcher drop the outcomes it retains for a
    /// resume); `None`: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// A result later than this after its utterance was sent is useless to a
    /// speaker: counted as timed out, not as served.
    pub timeout: Duration,
    /// Also scrape the dispatcher's `/metrics` every [`TIMELINE_STEP`] for
    /// the timeline's scheduling lag, shed window and jobs running (it costs the
    /// dispatcher a little CPU, so only when asked).
    pub scrape_timeline: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            sessions: 100,
            nodes: 4,
            utterance_ms: 1000,
            tts_ms: 1000,
            sample_rate: 16_000,
            rate: 0.0,
            node_delay: Duration::ZERO,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(10),
            max_jobs: 1024,
            max_pending: 64,
            hold_unsent: false,
            connect_parallel: 128,
            heartbeat: Some(Duration::from_secs(5)),
            timeout: Duration::from_secs(5),
            scrape_timeline: false,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub target: &'static str,
    pub sessions: usize,
    pub nodes: usize,
    /// Utterances sent, whole run.
    pub sent: u64,
    /// Results received, whole run.
    pub answered: u64,
    /// `error` outcomes (an error naming an utterance index).
    pub failed: u64,
    /// Utterances refused (`RATE_LIMITED`, no outcome follows).
    pub refused: u64,
    /// Utterances due at the rate that were never sent: dropped (or, with
    /// `hold_unsent`, still held when sending stopped) because
    /// `max_pending` were unanswered or the phone was told to wait.
    pub skipped: u64,
    /// Sent, and neither answered, failed nor refused by the end of the drain.
    pub lost: u64,
    /// Results whose node timestamps were missing (should be 0).
    pub untimed: u64,
    /// Results in the window that came later than `timeout` (not served).
    pub timed_out: u64,
    /// Frames the peers did not expect (errors without an index, results for unknown indexes, …).
    pub unexpected: u64,
    /// The first unexpected frame, for the reader.
    pub first_unexpected: Option<String>,
    /// Jobs the nodes received.
    pub jobs: u64,
    /// The measured window and what completed in it.
    pub window: Duration,
    pub window_answered: u64,
    /// Utterances refused (`RATE_LIMITED`) in the window: past capacity,
    /// what the refusals cost once the start's burst is over.
    pub window_refused: u64,
    /// Bytes of the utterance frames and result frames completed in the window.
    pub window_bytes: u64,
    /// Latency of the results completed in the window.
    pub out: Percentiles,
    pub back: Percentiles,
    /// out + back per utterance.
    pub total: Percentiles,
    /// Send → result of what was served in the window (queueing and the
    /// node's delay included): what the speaker waits.
    pub served: Percentiles,
    /// The dispatcher's own figures over the window, from its `/metrics`.
    pub dispatcher: Option<crate::scrape::Window>,
    /// The target process's CPU over the window, % of one core.
    pub server_cpu: Option<f64>,
    /// The target process's memory at the end of the window.
    pub server_memory: Option<Memory>,
    /// This process's CPU over the window (the simulated peers), % of one core.
    pub loadgen_cpu: Option<f64>,
    /// The machine's 1-minute load average at the end of the window.
    pub load_average: Option<f64>,
    /// The whole run (warm-up, window, drain) step by step.
    pub timeline: Vec<TimelineStep>,
}

/// The timeline's step.
pub const TIMELINE_STEP: Duration = Duration::from_millis(250);

/// One [`TIMELINE_STEP`] of a run, by when outcomes arrived: what an
/// overload controller did over time, which a run's totals hide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimelineStep {
    /// Start of the step, seconds since the load started (the window starts at the warm-up's end).
    pub at_s: f64,
    pub served: u64,
    pub refused: u64,
    /// Send → result of what was served in the step.
    pub latency: Percentiles,
    /// The dispatcher's `tolk_scheduling_lag_ms` and `tolk_shed_window` at
    /// the step's end (with `scrape_timeline`).
    pub lag_ms: Option<f64>,
    pub shed_window: Option<f64>,
    pub jobs_running: Option<f64>,
}

impl LoadReport {
    pub fn utterances_per_s(&self) -> f64 {
        self.window_answered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Refusals in the measured window per utterance served in it.
    pub fn window_refused_share(&self) -> f64 {
        self.window_refused as f64 / self.window_answered.max(1) as f64
    }

    /// Frame bytes (utterances out + results back) per second, in MB (10^6).
    pub fn mb_per_s(&self) -> f64 {
        self.window_bytes as f64 / 1e6 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Slots per session in the timestamp table (more than `max_pending`).
const RING: usize = 128;

/// State shared by the simulated peers of one run.
struct Shared {
    base: Instant,
    /// `[t1, t2]` per (session, index mod RING), nanoseconds since `base` + 1; 0 = unset.
    stamps: Vec<[AtomicU64; 2]>,
    /// Session id → session number (filled while connecting, read by nodes).
    ids: RwLock<HashMap<String, u32>>,
}

impl Shared {
    fn new(sessions: usize) -> Self {
        Self {
            base: Instant::now(),
            stamps: (0..sessions * RING).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
            ids: RwLock::new(HashMap::with_capacity(sessions)),
        }
    }

    fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    fn slot(&self, session: u32, index: u64) -> Option<&[AtomicU64; 2]> {
        self.stamps.get(session as usize * RING + (index % RING as u64) as usize)
    }

    fn session_number(&self, id: &str) -> Option<u32> {
        self.ids.read().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }
}

/// Opens a WebSocket to `addr` with `TCP_NODELAY` (the load generator must not add Nagle delays).
pub async fn connect(addr: SocketAddr, path: &str) -> Result<Socket, Error> {
    Socket::connect(addr, path).await
}

/// The next text frame; an error on close or after `within`.
async fn next_text(ws: &mut Socket, within: Duration) -> Result<String, Error> {
    match tokio::time::timeout(within, ws.next_text()).await {
        Err(_) => Err("no answer in time".into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => Err("connection closed".into()),
        Ok(Ok(Some(t))) => Ok(t.as_str().ok_or("the target sent text that is not UTF-8")?.to_owned()),
    }
}

const HANDSHAKE: Duration = Duration::from_secs(30);

/// Opens one session: `session_init` → `session_init_ack` (dispatcher), or a
/// paired connection (relay). Returns the socket and the session id.
pub(crate) async fn open_session(target: Target, number: u32, nodes: usize) -> Result<(Socket, String), Error> {
    match target {
        Target::Dispatcher(addr) | Target::Cluster { sessions: addr, .. } => {
            let mut ws = connect(addr, "/ws/session").await?;
            ws.send(frames::session_init().into()).await?;
            loop {
                let text = next_text(&mut ws, HANDSHAKE).await?;
                match ServerToClient::parse_unvalidated(&text) {
                    Ok(ServerToClient::SessionInitAck(ack)) => return Ok((ws, ack.session_id)),
                    Ok(ServerToClient::Error(e)) => return Err(format!("session_init refused: {} {}", e.code.as_str(), e.message).into()),
                    _ => continue,
                }
            }
        }
        Target::Relay(addr) => {
            let node = number as usize % nodes.max(1);
            let ws = connect(addr, &format!("/s/{number}/{node}")).await?;
            Ok((ws, format!("r-{number}")))
        }
    }
}

/// Registers one node; returns the socket and its node id.
async fn open_node(target: Target, number: usize, max_jobs: u32) -> Result<(Socket, String), Error> {
    match target {
        Target::Dispatcher(addr) | Target::Cluster { nodes: addr, .. } => {
            let mut ws = connect(addr, "/ws/node").await?;
            ws.send(frames::node_register(max_jobs).into()).await?;
            loop {
                let text = next_text(&mut ws, HANDSHAKE).await?;
                match ServerToNode::parse_unvalidated(&text) {
                    Ok(ServerToNode::NodeRegisterAck(ack)) => return Ok((ws, ack.node_id)),
                    Ok(ServerToNode::Error(e)) => return Err(format!("node_register refused: {} {}", e.code.as_str(), e.message).into()),
                    _ => continue,
                }
            }
        }
        Target::Relay(addr) => Ok((connect(addr, &format!("/n/{number}")).await?, format!("relay-n{number}"))),
    }
}

/// Opens `count` sessions numbered from `first`, `parallel` handshakes at a
/// time. Returns the open ones (by number) and the errors.
pub(crate) async fn open_sessions(
    target: Target,
    first: u32,
    count: usize,
    nodes: usize,
    parallel: usize,
) -> (Vec<(u32, Socket, String)>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for number in first..first + count as u32 {
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (number, open_session(target, number, nodes).await)
        });
    }
    let (mut open, mut errors) = (Vec::with_capacity(count), Vec::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((number, Ok((ws, id)))) => open.push((number, ws, id)),
            Ok((number, Err(e))) => errors.push(format!("session {number}: {e}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    open.sort_by_key(|(n, _, _)| *n);
    (open, errors)
}

/// When a session sends and what it counts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    measure_from: Instant,
    /// End of the window and of sending.
    measure_until: Instant,
    give_up: Instant,
    /// Time between utterances (open loop); `None`: closed loop.
    period: Option<Duration>,
    /// Offset of the first send in the open loop, a fraction of `period`.
    phase: f64,
    max_pending: usize,
    hold_unsent: bool,
    heartbeat: Option<Duration>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct SessionStats {
    sent: u64,
    answered: u64,
    failed: u64,
    refused: u64,
    skipped: u64,
    lost: u64,
    untimed: u64,
    unexpected: u64,
    first_unexpected: Option<String>,
    window_answered: u64,
    window_refused: u64,
    window_bytes: u64,
    timed_out: u64,
    out: Vec<u64>,
    back: Vec<u64>,
    total: Vec<u64>,
    served: Vec<u64>,
    /// `(step, send → result)` of every result, warm-up and drain included.
    results_at: Vec<(u32, u64)>,
    /// The step of every refusal.
    refused_at: Vec<u32>,
}

impl SessionStats {
    fn unexpected(&mut self, what: impl FnOnce() -> String) {
        self.unexpected += 1;
        if self.first_unexpected.is_none() {
            self.first_unexpected = Some(what());
        }
    }
}

struct Pending {
    index: u64,
    t0: u64,
    bytes: usize,
}

struct SimSession {
    ws: Socket,
    number: u32,
    id: String,
    shared: Arc<Shared>,
    frames: Arc<UtteranceFrames>,
    pending: VecDeque<Pending>,
    next_index: u64,
    /// The highest index with an outcome (outcomes arrive in order).
    last_outcome: Option<u64>,
    /// Unanswered utterances the phone may have, as the SDK keeps it: up to
    /// `max_pending`, cut to what the server had accepted by a
    /// `RATE_LIMITED` refusal, one more per outcome once `grow_after` has passed.
    window: usize,
    /// Utterances due (open loop) that the phone could not send yet, oldest
    /// first, as the SDK's queue holds them.
    held: u64,
    /// After a `RATE_LIMITED` refusal, as the SDK does: no sends until the
    /// server's `retry_after_ms` has passed or the next outcome arrives.
    paused_until: Option<Instant>,
    /// After a `RATE_LIMITED` refusal, as the SDK does: the window does not
    /// grow before the server's `retry_after_ms` has passed.
    grow_after: Option<Instant>,
    stats: SessionStats,
    plan: Plan,
}

impl SimSession {
    async fn send_next(&mut self) -> Result<(), Error> {
        let index = self.next_index;
        self.next_index += 1;
        let frame = self.frames.render(&self.id, index);
        let bytes = frame.len();
        let t0 = self.shared.now_ns();
        self.pending.push_back(Pending { index, t0, bytes });
        self.stats.sent += 1;
        self.ws.send(frame).await?;
        Ok(())
    }

    /// Handles one frame from the target; true when an utterance got its outcome.
    fn on_frame(&mut self, text: &str) -> bool {
        let t3 = self.shared.now_ns();
        match frames::str_field(text, key::TYPE) {
            // The relay passes the node's `job_result` through unchanged.
            Some("translation_result" | "job_result") => {
                let Some(index) = frames::u64_field(text, key::UTTERANCE_INDEX) else {
                    self.stats.unexpected(|| text.chars().take(200).collect());
                    return false;
                };
                self.complete(index, t3, Some(text.len()))
            }
            Some("error") => {
                if let Some(index) = frames::u64_field(text, key::UTTERANCE_INDEX) {
                    self.stats.failed += 1;
                    self.stats.first_unexpected.get_or_insert_with(|| text.chars().take(200).collect());
                    self.complete(index, t3, None)
                } else if let Some(index) = frames::u64_field(text, key::REFUSED_INDEX) {
                    self.stats.refused += 1;
                    self.stats.refused_at.push(self.step_of(t3));
                    if self.in_window(t3) {
                        self.stats.window_refused += 1;
                    }
                    self.pending.retain(|p| p.index != index);
                    if frames::str_field(text, key::CODE) == Some("RATE_LIMITED") {
                        // The SDK's answer to being over its share (it would also
                        // send the utterance again; here it is counted refused).
                        self.window = self.pending.iter().filter(|p| p.index < index).count().max(1);
                        let wait = frames::u64_field(text, key::RETRY_AFTER_MS).unwrap_or(100).min(30_000);
                        self.paused_until = Some(Instant::now() + Duration::from_millis(wait));
                        self.grow_after = self.paused_until;
                    }
                    true
                } else {
                    self.stats.unexpected(|| text.chars().take(200).collect());
                    false
                }
            }
            Some("server_heartbeat") => false,
            _ => {
                self.stats.unexpected(|| text.chars().take(200).collect());
                false
            }
        }
    }

    /// Records an outcome: a result (`result_bytes`) or an error (`None`).
    fn complete(&mut self, index: u64, t3: u64, result_bytes: Option<usize>) -> bool {
        let Some(pos) = self.pending.iter().position(|p| p.index == index) else {
            self.stats.unexpected(|| format!("an outcome for index {index}, which is not pending"));
            return false;
        };
        let Some(p) = self.pending.remove(pos) else { return false };
        self.last_outcome = self.last_outcome.max(Some(index));
        if self.grow_after.is_none_or(|t| Instant::now() >= t) {
            self.grow_after = None;
            self.window = (self.window + 1).min(self.plan.max_pending);
        }
        self.paused_until = None;
        let stamps = self.shared.slot(self.number, index).map(|s| [s[0].swap(0, Ordering::AcqRel), s[1].swap(0, Ordering::AcqRel)]);
        let Some(result_bytes) = result_bytes else { return true };
        self.stats.answered += 1;
        let waited = t3.saturating_sub(p.t0);
        let step = self.step_of(t3);
        self.stats.results_at.push((step, waited));
        let in_window = self.in_window(t3);
        if in_window && waited > self.plan.timeout.as_nanos() as u64 {
            self.stats.timed_out += 1;
        } else if in_window {
            self.stats.window_answered += 1;
            self.stats.served.push(waited);
            self.stats.window_bytes += (p.bytes + result_bytes) as u64;
            match stamps {
                Some([t1, t2]) if t1 != 0 && t2 != 0 => {
                    let out = t1.saturating_sub(p.t0);
                    let back = t3.saturating_sub(t2);
                    self.stats.out.push(out);
                    self.stats.back.push(back);
                    self.stats.total.push(out + back);
                }
                _ => self.stats.untimed += 1,
            }
        }
        true
    }

    /// Whether `t` (this process's clock, ns) is in the measured window.
    fn in_window(&self, t: u64) -> bool {
        t >= self.shared.ns_at(self.plan.measure_from) && t <= self.shared.ns_at(self.plan.measure_until)
    }

    /// The timeline step of `t` (this process's clock, ns).
    fn step_of(&self, t: u64) -> u32 {
        let since = t.saturating_sub(self.shared.ns_at(self.plan.start));
        (since / TIMELINE_STEP.as_nanos() as u64).min(u64::from(u32::MAX)) as u32
    }

    async fn run(mut self) -> SessionStats {
        if let Err(e) = self.drive().await {
            self.stats.unexpected(|| format!("session {}: {e}", self.number));
        }
        self.stats.lost = self.pending.len() as u64;
        let _ = self.ws.close().await;
        self.stats
    }

    async fn drive(&mut self) -> Result<(), Error> {
        let plan = self.plan;
        tokio::time::sleep_until(plan.start).await;
        let mut next_send = match plan.period {
            Some(period) => plan.start + period.mul_f64(plan.phase),
            None => {
                self.send_next().await?;
                plan.measure_until
            }
        };
        let give_up = tokio::time::sleep_until(plan.give_up);
        tokio::pin!(give_up);
        let far = plan.give_up + Duration::from_secs(86_400);
        let mut next_heartbeat = plan.heartbeat.map_or(far, |p| plan.start + p.mul_f64(plan.phase));
        let mut blocked_since: Option<Instant> = None;
        loop {
            let sending = Instant::now() < plan.measure_until;
            if !sending && self.pending.is_empty() {
                // Blocked to the end: what fell due meanwhile, and what it
                // still held, was never sent.
                if let (Some(period), Some(_)) = (plan.period, blocked_since) {
                    while next_send < plan.measure_until {
                        self.held += 1;
                        next_send += period;
                    }
                }
                self.stats.skipped += std::mem::take(&mut self.held);
                return Ok(());
            }
            let timed = plan.period.is_some() && next_send < plan.measure_until;
            // A phone that cannot send (window full, or told to wait) does
            // not wake for each utterance falling due: they are counted
            // when it can send again. Waking 300 times a second per phone
            // would take the load generator's share of the two cores from
            // the server under test.
            let now = Instant::now();
            let paused = self.paused_until.is_some_and(|t| now < t);
            let blocked = paused || self.pending.len() >= self.window;
            if timed && !blocked && blocked_since.take().is_some() {
                let period = plan.period.unwrap_or_default();
                while next_send <= now && next_send < plan.measure_until {
                    self.held += 1;
                    next_send += period;
                }
            } else if timed && blocked {
                blocked_since.get_or_insert(now);
            }
            if !plan.hold_unsent {
                self.stats.skipped += std::mem::take(&mut self.held);
            } else if !blocked && sending {
                // What it holds goes as soon as the window and the wait
                // allow, as the SDK's queue sends it.
                while self.held > 0 && self.pending.len() < self.window {
                    self.held -= 1;
                    self.send_next().await?;
                }
            }
            let blocked = paused || self.pending.len() >= self.window;
            let timed = plan.period.is_some() && next_send < plan.measure_until;
            tokio::select! {
                msg = self.ws.next_text() => match msg? {
                    Some(text) => {
                        let text = text.as_str().ok_or("the target sent text that is not UTF-8")?;
                        let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
                        if self.on_frame(text) && plan.period.is_none() && self.pending.is_empty() && !paused && Instant::now() < plan.measure_until {
                            self.send_next().await?;
                        }
                    }
                    None => return Err("the target closed the connection".into()),
                },
                () = tokio::time::sleep_until(next_send), if timed && !blocked => {
                    let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
                    if !paused && self.pending.len() < self.window {
                        self.send_next().await?;
                    } else {
                        self.held += 1;
                    }
                    next_send += plan.period.unwrap_or_default();
                }
                () = tokio::time::sleep_until(next_heartbeat), if plan.heartbeat.is_some() => {
                    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    self.ws.send(frames::client_heartbeat(&self.id, ms, self.last_outcome).into()).await?;
                    next_heartbeat += plan.heartbeat.unwrap_or_default();
                }
                // Open loop, told to wait with room in the window: wake when the wait ends.
                () = tokio::time::sleep_until(self.paused_until.map_or(plan.give_up, Into::into)),
                    if plan.period.is_some() && paused && self.pending.len() < self.window => {}
                // Closed loop, refused: the next one goes when the pause ends.
                () = tokio::time::sleep_until(self.paused_until.map_or(plan.give_up, Into::into)),
                    if plan.period.is_none() && self.pending.is_empty() && self.paused_until.is_some() && sending => {
                    self.paused_until = None;
                    self.send_next().await?;
                }
                // Wakes the loop at the end of sending to check for the end.
                () = tokio::time::sleep_until(plan.measure_until), if sending => {}
                () = &mut give_up => return Ok(()),
            }
        }
    }
}

#[derive(Debug, Default)]
struct NodeStats {
    jobs: u64,
    unexpected: u64,
    first_unexpected: Option<String>,
}

struct SimNode {
    node_id: String,
    relay: bool,
    shared: Arc<Shared>,
    frames: ResultFrames,
    delay: Duration,
    /// Jobs it works on at once (more wait in arrival order, as on a real
    /// machine; the dispatcher never sends more, the relay does).
    slots: usize,
    stop: watch::Receiver<bool>,
    stats: NodeStats,
}

/// A built result waiting for its node's delay.
struct Due {
    at: Instant,
    frame: TextFrame,
    session: u32,
    index: u64,
}

impl SimNode {
    /// Reads a job (a `job_assign`, or the raw `utterance` through the relay)
    /// and builds its result.
    fn on_frame(&mut self, text: &str) -> Option<Due> {
        let t1 = self.shared.now_ns();
        let ty = frames::str_field(text, key::TYPE);
        if ty == Some("client_heartbeat") {
            // Through the relay, the sessions' heartbeats arrive here.
            return None;
        }
        if !matches!(ty, Some("job_assign" | "utterance")) {
            self.stats.unexpected += 1;
            if self.stats.first_unexpected.is_none() {
                self.stats.first_unexpected = Some(format!("node {}: {}", self.node_id, text.chars().take(200).collect::<String>()));
            }
            return None;
        }
        let session_id = frames::str_field(text, key::SESSION_ID)?;
        let index = frames::u64_field(text, key::UTTERANCE_INDEX)?;
        let session = self.shared.session_number(session_id)?;
        if let Some(slot) = self.shared.slot(session, index) {
            slot[0].store(t1, Ordering::Release);
        }
        self.stats.jobs += 1;
        let frame = if self.relay {
            self.frames.render_for_relay(session, session_id, index)
        } else {
            self.frames.render(frames::str_field(text, key::JOB_ID)?, session_id, index)
        };
        Some(Due { at: Instant::now() + self.delay, frame, session, index })
    }

    fn stamp_sent(&self, due: &Due) {
        if let Some(slot) = self.shared.slot(due.session, due.index) {
            slot[1].store(self.shared.now_ns(), Ordering::Release);
        }
    }

    async fn run(mut self, ws: Socket) -> NodeStats {
        if let Err(e) = self.drive(ws).await {
            self.stats.unexpected += 1;
            self.stats.first_unexpected.get_or_insert_with(|| format!("node {}: {e}", self.node_id));
        }
        self.stats
    }

    async fn drive(&mut self, ws: Socket) -> Result<(), Error> {
        let (mut stream, mut sink) = ws.split();
        let mut due: VecDeque<Due> = VecDeque::new();
        // Jobs beyond `slots`, waiting for one (only the relay sends them).
        let mut waiting: VecDeque<Due> = VecDeque::new();
        // The dispatcher declares a node dead after 15 s of silence.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let next_due = due.front().map_or(far, |d| d.at);
            tokio::select! {
                msg = stream.next_text() => match msg? {
                    Some(text) => {
                        let text = text.as_str().ok_or("the target sent text that is not UTF-8")?;
                        let Some(d) = self.on_frame(text) else { continue };
                        if self.delay.is_zero() {
                            self.stamp_sent(&d);
                            sink.send(d.frame).await?;
                        } else if due.len() < self.slots {
                            due.push_back(d);
                        } else {
                            waiting.push_back(d);
                        }
                    }
                    None => return Ok(()),
                },
                () = tokio::time::sleep_until(next_due), if !due.is_empty() => {
                    let now = Instant::now();
                    while due.front().is_some_and(|d| d.at <= now) {
                        let Some(d) = due.pop_front() else { break };
                        self.stamp_sent(&d);
                        sink.send(d.frame).await?;
                        if let Some(mut next) = waiting.pop_front() {
                            next.at = now + self.delay;
                            due.push_back(next);
                        }
                    }
                }
                _ = heartbeat.tick(), if !self.relay => {
                    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    sink.send(frames::node_heartbeat(&self.node_id, ms, due.len().min(self.slots) as u32).into()).await?;
                }
                _ = self.stop.changed() => {
                    let _ = sink.close().await;
                    return Ok(());
                }
            }
        }
    }
}

/// Runs one load test against `target`; `pid` is the target's process (for CPU and RSS).
pub async fn run(target: Target, cfg: &LoadConfig, pid: Option<Pid>) -> Result<LoadReport, Error> {
    run_with(target, cfg, pid.into_iter().collect()).await
}

/// [`run`], with the CPU and memory of several server processes added up
/// (a cluster's dispatchers).
pub async fn run_with(target: Target, cfg: &LoadConfig, pids: Vec<Pid>) -> Result<LoadReport, Error> {
    if cfg.sessions == 0 || cfg.nodes == 0 {
        return Err("sessions and nodes must be at least 1".into());
    }
    let shared = Arc::new(Shared::new(cfg.sessions));
    let mut nodes = Vec::with_capacity(cfg.nodes);
    for j in 0..cfg.nodes {
        nodes.push(open_node(target, j, cfg.max_jobs).await.map_err(|e| format!("node {j}: {e}"))?);
    }
    if matches!(target, Target::Cluster { .. }) {
        // The sessions' dispatcher learns of the nodes from the other's announcements.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (sessions, errors) = open_sessions(target, 0, cfg.sessions, cfg.nodes, cfg.connect_parallel).await;
    if let Some(first) = errors.first() {
        return Err(format!("{} of {} sessions failed to open; first: {first}", errors.len(), cfg.sessions).into());
    }
    {
        let mut ids = shared.ids.write().unwrap_or_else(|e| e.into_inner());
        for (number, _, id) in &sessions {
            ids.insert(id.clone(), *number);
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut node_tasks = Vec::with_capacity(cfg.nodes);
    for (ws, node_id) in nodes {
        let frames = ResultFrames::new(&node_id, cfg.tts_ms, cfg.sample_rate, cfg.node_delay.as_millis() as u64);
        let node = SimNode {
            node_id,
            relay: target.is_relay(),
            shared: shared.clone(),
            frames,
            delay: cfg.node_delay,
            slots: cfg.max_jobs.max(1) as usize,
            stop: stop_rx.clone(),
            stats: NodeStats::default(),
        };
        node_tasks.push(tokio::spawn(node.run(ws)));
    }

    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + cfg.warmup;
    let measure_until = measure_from + cfg.duration;
    let period = (cfg.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.rate));
    let utterances = Arc::new(UtteranceFrames::new(cfg.utterance_ms, cfg.sample_rate));
    let mut session_tasks = Vec::with_capacity(cfg.sessions);
    for (number, ws, id) in sessions {
        let plan = Plan {
            start,
            measure_from,
            measure_until,
            give_up: measure_until + cfg.drain,
            period,
            // Spread the sessions' first sends evenly over one period.
            phase: (f64::from(number) * 0.618_033_988_75).fract(),
            max_pending: cfg.max_pending.clamp(1, RING / 2),
            hold_unsent: cfg.hold_unsent,
            heartbeat: cfg.heartbeat,
            timeout: cfg.timeout,
        };
        let session = SimSession {
            ws,
            number,
            id,
            shared: shared.clone(),
            frames: utterances.clone(),
            pending: VecDeque::new(),
            next_index: 0,
            last_outcome: None,
            window: plan.max_pending,
            held: 0,
            paused_until: None,
            grow_after: None,
            stats: SessionStats::default(),
            plan,
        };
        session_tasks.push(tokio::spawn(session.run()));
    }

    let me = Pid(std::process::id());
    let metrics_at = match target {
        Target::Dispatcher(addr) | Target::Cluster { sessions: addr, .. } => Some(addr),
        Target::Relay(_) => None,
    };
    let cpu_of = move |pids: &[Pid]| -> Option<crate::procstat::CpuSample> {
        pids.iter().map(|p| p.cpu().ok()).try_fold(None, |sum: Option<crate::procstat::CpuSample>, s| {
            let s = s?;
            Some(Some(sum.map_or(s, |t| t.plus(s))))
        })?
    };
    let probe = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let before = (cpu_of(&pids), me.cpu().ok());
        let scrape_before = match metrics_at {
            Some(addr) => crate::scrape::metrics(addr).await.ok(),
            None => None,
        };
        tokio::time::sleep_until(measure_until).await;
        let after = (cpu_of(&pids), me.cpu().ok());
        let scrape_after = match metrics_at {
            Some(addr) => crate::scrape::metrics(addr).await.ok(),
            None => None,
        };
        let memory = pids.iter().map(|p| p.memory().ok()).try_fold(crate::procstat::Memory::default(), |sum, m| {
            m.map(|m| crate::procstat::Memory { rss_kib: sum.rss_kib + m.rss_kib, peak_kib: sum.peak_kib + m.peak_kib })
        });
        let memory = memory.filter(|_| !pids.is_empty());
        let cpu_s = before.0.zip(after.0).map(|(a, b)| a.seconds_until(b));
        let server = before.0.zip(after.0).map(|(a, b)| a.percent_until(b));
        let loadgen = before.1.zip(after.1).map(|(a, b)| a.percent_until(b));
        let window = scrape_before.zip(scrape_after).map(|(a, b)| crate::scrape::Window::between(&a, &b, cpu_s));
        (server, loadgen, memory, crate::procstat::load_average(), window)
    });

    let (scrape_timeline, give_up) = (cfg.scrape_timeline, measure_until + cfg.drain);
    let stop_scrapes = stop_rx.clone();
    let timeline_scrapes = tokio::spawn(async move {
        let mut scrapes = Vec::new();
        let Some(addr) = metrics_at.filter(|_| scrape_timeline) else { return scrapes };
        let mut at = start + TIMELINE_STEP;
        while at <= give_up {
            tokio::time::sleep_until(at).await;
            if let Ok(s) = crate::scrape::metrics(addr).await {
                scrapes.push((at, s));
            }
            at += TIMELINE_STEP;
            if stop_scrapes.has_changed().unwrap_or(true) {
                break;
            }
        }
        scrapes
    });

    let mut report =
        LoadReport { target: target.name(), sessions: cfg.sessions, nodes: cfg.nodes, window: cfg.duration, ..Default::default() };
    let (mut out, mut back, mut total, mut served) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut results_at, mut refused_at) = (Vec::new(), Vec::new());
    for task in session_tasks {
        let s = task.await?;
        report.sent += s.sent;
        report.answered += s.answered;
        report.failed += s.failed;
        report.refused += s.refused;
        report.skipped += s.skipped;
        report.lost += s.lost;
        report.untimed += s.untimed;
        report.unexpected += s.unexpected;
        report.window_answered += s.window_answered;
        report.window_refused += s.window_refused;
        report.timed_out += s.timed_out;
        served.extend(s.served);
        report.window_bytes += s.window_bytes;
        if report.first_unexpected.is_none() {
            report.first_unexpected = s.first_unexpected;
        }
        out.extend(s.out);
        back.extend(s.back);
        total.extend(s.total);
        results_at.extend(s.results_at);
        refused_at.extend(s.refused_at);
    }
    let _ = stop_tx.send(true);
    for task in node_tasks {
        let n = task.await?;
        report.jobs += n.jobs;
        report.unexpected += n.unexpected;
        if report.first_unexpected.is_none() {
            report.first_unexpected = n.first_unexpected;
        }
    }
    (report.server_cpu, report.loadgen_cpu, report.server_memory, report.load_average, report.dispatcher) = probe.await?;
    report.served = Percentiles::of(served);
    report.out = Percentiles::of(out);
    report.back = Percentiles::of(back);
    report.total = Percentiles::of(total);
    report.timeline = timeline(results_at, &refused_at, &timeline_scrapes.await?, start);
    Ok(report)
}

/// The run step by step, from each result's and refusal's step and the
/// dispatcher's scrapes.
fn timeline(
    results_at: Vec<(u32, u64)>,
    refused_at: &[u32],
    scrapes: &[(Instant, crate::scrape::Scrape)],
    start: Instant,
) -> Vec<TimelineStep> {
    let steps = results_at.iter().map(|r| r.0).chain(refused_at.iter().copied()).max().map_or(0, |m| m as usize + 1);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); steps];
    for (step, waited) in results_at {
        latencies[step as usize].push(waited);
    }
    let mut refused = vec![0u64; steps];
    for &step in refused_at {
        refused[step as usize] += 1;
    }
    latencies
        .into_iter()
        .zip(refused)
        .enumerate()
        .map(|(i, (l, refused))| {
            let step_end = start + TIMELINE_STEP * (i as u32 + 1);
            let scrape = scrapes.iter().find(|(at, _)| *at == step_end).map(|(_, s)| s);
            TimelineStep {
                at_s: (TIMELINE_STEP * i as u32).as_secs_f64(),
                served: l.len() as u64,
                refused,
                latency: Percentiles::of(l),
                lag_ms: scrape.and_then(|s| s.lag_ms),
                shed_window: scrape.and_then(|s| s.shed_window),
                jobs_running: scrape.and_then(|s| s.jobs_running),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_counts_each_step_and_takes_the_scrape_at_its_end() {
        let start = Instant::now();
        let ms = 1_000_000;
        let results = vec![(0, 2 * ms), (0, 4 * ms), (2, 30 * ms)];
        let scrape = crate::scrape::Scrape { lag_ms: Some(7.5), shed_window: Some(64.0), ..Default::default() };
        let steps = timeline(results, &[1, 1], &[(start + TIMELINE_STEP * 2, scrape)], start);
        assert_eq!(steps.len(), 3);
        assert_eq!((steps[0].served, steps[0].refused), (2, 0));
        assert_eq!(steps[0].latency.max, Duration::from_millis(4));
        assert_eq!((steps[1].served, steps[1].refused), (0, 2));
        assert_eq!((steps[1].lag_ms, steps[1].shed_window), (Some(7.5), Some(64.0)), "the scrape at the end of step 1");
        assert_eq!(steps[2].latency.p50, Duration::from_millis(30));
        assert_eq!(steps[2].at_s, 0.5);
        assert!(steps[0].lag_ms.is_none());
    }
}
