//! Engines in supervised child processes: the driver around
//! [`super::supervisor::Supervisor`]. It carries out the supervisor's
//! actions with real processes and pipes and feeds it what happens; it
//! decides nothing.
//!
//! Each slot (instance) is a child `tolk-node engine-host --library PATH`
//! ([`super::host`]) speaking [`super::wire`] frames over its stdin/stdout.
//! Threads, all plain `std`:
//! - one **supervisor thread** per engine: ticks the machine at its next
//!   wake-up (deadlines, start time-outs, restarts) and spawns children.
//!   Children are forked only from it, because the parent-death signal a
//!   child sets fires when the thread that forked it ends;
//! - per child a **reader** (frames from stdout; at end of stream it reaps
//!   the child and reports the exit) and a **stderr** thread (lines into the
//!   node's log with the engine's name, bounded; the last one kept for the
//!   failure reason);
//! - callers ([`Engine::process`], on the node's blocking job threads) take
//!   a free child, write their request, and wait for their job's outcome on
//!   a channel of their own.
//!
//! All state is behind one `std::sync::Mutex` (no `.await` anywhere); the
//! actions run under it, and none of them blocks for long (a fork, a kill, a
//! channel send).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, Read as _};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::supervisor::{Acquire, Action, Child, Event, Exit, Health, JobId, Millis, Supervisor, SupervisorConfig};
use super::wire::{self, FromChild, WireError};
use super::{Engine, EngineError, EngineErrorKind, Request, Response};

/// Lines of one child's stderr copied into the node's log; the rest are counted.
const STDERR_LINES: usize = 500;
/// Bytes of one stderr line kept.
const STDERR_LINE_BYTES: usize = 512;
/// The last lines of a child's stderr given with its failure.
const LAST_WORDS: usize = 3;
/// A call without a deadline waits at most this long.
const DEFAULT_CALL_MS: u64 = 120_000;

/// What the node hears about an engine's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A child failed (its jobs are answered); it restarts in `restart_in_ms`.
    Down { reason: String, failures: u32, restart_in_ms: u64 },
    /// Every instance runs again.
    Up,
}

/// Called (under the engine's lock: it must not block) with each [`Notice`].
pub type Notify = Arc<dyn Fn(Notice) + Send + Sync>;

/// How to run an engine out of process.
#[derive(Clone)]
pub struct ProcessOptions {
    /// The program to run as the host: the `tolk-node` binary.
    pub host: PathBuf,
    pub library: PathBuf,
    /// The engine options, encoded (`key=value` lines).
    pub options: String,
    /// `RLIMIT_DATA` of each child, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// For logs: the engine's model id.
    pub name: String,
    pub supervisor: SupervisorConfig,
    pub notify: Option<Notify>,
}

impl std::fmt::Debug for ProcessOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOptions")
            .field("host", &self.host)
            .field("library", &self.library)
            .field("memory_limit_mb", &self.memory_limit_mb)
            .field("name", &self.name)
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

/// An outcome for a waiting caller.
type Outcome = Result<Response, EngineError>;

/// One live child's handles.
struct ChildIo {
    id: Child,
    process: Option<std::process::Child>,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    last_stderr: Arc<Mutex<VecDeque<String>>>,
}

struct State {
    sup: Supervisor,
    children: HashMap<usize, ChildIo>,
    /// Callers waiting for their job, by job id.
    waiting: HashMap<JobId, mpsc::Sender<Outcome>>,
    /// What the first child said about the library.
    ready: Option<wire::Ready>,
    /// The first start failure, while no child has ever started.
    start_error: Option<String>,
    exit_thread: bool,
}

struct Shared {
    opts: ProcessOptions,
    clock: Instant,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn now(&self) -> Millis {
        self.clock.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds `event`, then carries out what the supervisor decided.
    /// `reply` is the reply a [`Action::Deliver`] hands over.
    fn feed(self: &Arc<Self>, st: &mut State, event: Event, mut reply: Option<Outcome>) {
        st.sup.handle(self.now(), event);
        self.execute(st, &mut reply);
    }

    fn execute(self: &Arc<Self>, st: &mut State, reply: &mut Option<Outcome>) {
        let name = &self.opts.name;
        for action in st.sup.take_actions() {
            match action {
                Action::Spawn(c) => self.spawn(st, c),
                Action::Kill(c) => {
                    if let Some(io) = st.children.get_mut(&c.slot).filter(|io| io.id == c)
                        && let Some(p) = io.process.as_mut()
                    {
                        tracing::warn!(engine = %name, pid = p.id(), "killing the engine process");
                        let _ = p.kill();
                    }
                }
                Action::Deliver { job, .. } => {
                    if let (Some(tx), Some(r)) = (st.waiting.remove(&job), reply.take()) {
                        let _ = tx.send(r);
                    }
                }
                Action::FailJob { job, reason, .. } => {
                    if let Some(tx) = st.waiting.remove(&job) {
                        let _ = tx.send(Err(EngineError::new(EngineErrorKind::Backend, reason)));
                    }
                }
                Action::Down { reason, failures, restart_in_ms } => {
                    tracing::error!(engine = %name, failures, restart_in_ms, %reason, "engine failed; restarting it after a back-off");
                    if st.ready.is_none() && st.start_error.is_none() {
                        st.start_error = Some(reason.clone());
                    }
                    if let Some(n) = &self.opts.notify {
                        n(Notice::Down { reason, failures, restart_in_ms });
                    }
                }
                Action::Up => {
                    tracing::info!(engine = %name, "engine running again");
                    if let Some(n) = &self.opts.notify {
                        n(Notice::Up);
                    }
                }
            }
        }
        self.changed.notify_all();
    }

    /// Starts child `c`: the process, its Init frame, its reader and stderr
    /// threads. Only [`Event::Tick`] gives `Spawn`, and only the supervisor
    /// thread feeds ticks: children are always forked from that thread.
    fn spawn(self: &Arc<Self>, st: &mut State, c: Child) {
        let mut cmd = Command::new(&self.opts.host);
        cmd.arg("engine-host").arg("--library").arg(&self.opts.library).arg("--parent-pid").arg(std::process::id().to_string());
        if let Some(mb) = self.opts.memory_limit_mb {
            cmd.arg("--memory-limit-mb").arg(mb.to_string());
        }
        // Plain log lines from the child (it logs to its stderr, which we read).
        cmd.env("NO_COLOR", "1").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut process = match cmd.spawn() {
            Ok(p) => p,
            Err(e) => {
                let exit = Exit::Unknown(format!("cannot start {}: {e}", self.opts.host.display()));
                return self.feed(st, Event::Exited { child: c, exit, detail: None }, None);
            }
        };
        let (stdout, stderr) = (process.stdout.take(), process.stderr.take());
        let stdin = Arc::new(Mutex::new(process.stdin.take()));
        let last_stderr = Arc::new(Mutex::new(VecDeque::new()));
        tracing::info!(engine = %self.opts.name, pid = process.id(), "engine process started");
        // The Init frame is small: the pipe takes it without the child reading.
        if let (Ok(frame), Some(pipe)) = (wire::encode_init(&self.opts.options), stdin.lock().unwrap_or_else(|e| e.into_inner()).as_mut()) {
            let _ = wire::write_frame(pipe, &frame);
        }
        st.children.insert(c.slot, ChildIo { id: c, process: Some(process), stdin, last_stderr: last_stderr.clone() });
        let (done_tx, done_rx) = mpsc::channel::<()>();
        if let Some(err) = stderr {
            let name = self.opts.name.clone();
            let last = last_stderr;
            let spawned = std::thread::Builder::new().name(format!("engine-stderr-{}", c.slot)).spawn(move || {
                copy_stderr(err, &name, &last);
                drop(done_tx);
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a thread for an engine's stderr");
            }
        }
        let shared = self.clone();
        if let Some(out) = stdout {
            let spawned =
                std::thread::Builder::new().name(format!("engine-reader-{}", c.slot)).spawn(move || read_child(&shared, c, out, done_rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a thread for an engine's output");
            }
        }
    }
}

/// Copies a child's stderr into the log, line by line, bounded.
fn copy_stderr(err: std::process::ChildStderr, name: &str, last: &Mutex<VecDeque<String>>) {
    let mut reader = std::io::BufReader::new(err);
    let mut line = Vec::new();
    let mut copied = 0usize;
    let mut dropped = 0usize;
    loop {
        line.clear();
        // Read at most a line's worth plus one byte at a time, so a child
        // writing without newlines cannot make us buffer without bound.
        match (&mut reader).take(STDERR_LINE_BYTES as u64 * 4).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if text.len() > STDERR_LINE_BYTES {
            let mut end = STDERR_LINE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        if text.is_empty() {
            continue;
        }
        if copied < STDERR_LINES {
            copied += 1;
            tracing::info!(target: "tolk_node::engine::child", engine = %name, "{text}");
        } else {
            dropped += 1;
        }
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() == LAST_WORDS {
            last.pop_front();
        }
        last.push_back(text);
    }
    if dropped > 0 {
        tracing::info!(engine = %name, dropped, "further lines of the engine's stderr were not logged");
    }
}

/// A child's stdout: frames until the end, then the child's exit.
fn read_child(shared: &Arc<Shared>, c: Child, out: std::process::ChildStdout, stderr_done: mpsc::Receiver<()>) {
    let mut out = std::io::BufReader::new(out);
    loop {
        let event = match wire::read_frame(&mut out).and_then(|b| wire::decode_from_child(&b)) {
            Ok(FromChild::Ready(r)) => {
                let mut st = shared.lock();
                st.ready.get_or_insert(r);
                shared.feed(&mut st, Event::Ready(c), None);
                continue;
            }
            Ok(FromChild::InitFailed(e)) => Event::InitFailed(c, e.message),
            Ok(FromChild::Reply(r)) => {
                let mut st = shared.lock();
                shared.feed(&mut st, Event::Replied(c), Some(r));
                continue;
            }
            Err(WireError::Closed | WireError::Io(_)) => break,
            Err(WireError::Malformed(m)) => Event::Malformed(c, m),
        };
        let mut st = shared.lock();
        shared.feed(&mut st, event, None);
        if !matches!(st.children.get(&c.slot), Some(io) if io.id == c) {
            break;
        }
    }
    // End of its output: make sure it is dead, reap it, and report how it ended.
    let process = {
        let mut st = shared.lock();
        st.children.get_mut(&c.slot).filter(|io| io.id == c).and_then(|io| io.process.take())
    };
    let exit = match process {
        Some(mut p) => {
            let _ = p.kill();
            match p.wait() {
                Ok(status) => exit_of(status),
                Err(e) => Exit::Unknown(e.to_string()),
            }
        }
        None => Exit::Unknown("already reaped".into()),
    };
    // Its last words, if its stderr ends soon (a grandchild may hold it open).
    let _ = stderr_done.recv_timeout(Duration::from_millis(500));
    let mut st = shared.lock();
    let detail = st.children.get(&c.slot).filter(|io| io.id == c).and_then(|io| {
        let last = io.last_stderr.lock().unwrap_or_else(|e| e.into_inner());
        (!last.is_empty()).then(|| last.iter().map(String::as_str).collect::<Vec<_>>().join(" | "))
    });
    if let Some(io) = st.children.get(&c.slot)
        && io.id == c
    {
        st.children.remove(&c.slot);
    }
    shared.feed(&mut st, Event::Exited { child: c, exit, detail }, None);
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Exit::Signal(sig);
    }
    match status.code() {
        Some(code) => Exit::Code(code),
        None => Exit::Unknown(status.to_string()),
    }
}

/// The supervisor thread: ticks at the machine's next wake-up.
fn supervise(shared: Arc<Shared>) {
    let mut st = shared.lock();
    loop {
        if st.exit_thread {
            break;
        }
        shared.feed(&mut st, Event::Tick, None);
        let now = shared.now();
        let wait = st.sup.next_wakeup().map_or(3_600_000, |t| t.saturating_sub(now)).max(1);
        st = shared.changed.wait_timeout(st, Duration::from_millis(wait)).map_or_else(|e| e.into_inner().0, |(g, _)| g);
    }
}

/// An engine whose instances run in supervised child processes.
#[derive(Debug)]
pub struct ProcessEngine {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl ProcessEngine {
    /// Starts the engine's children and waits (at most the start time-out)
    /// until the first one is ready: a library that cannot load or an
    /// instance that cannot be created is an error now, as in process.
    pub fn start(opts: ProcessOptions) -> Result<(Self, wire::Ready), EngineError> {
        let start_timeout = Duration::from_millis(opts.supervisor.start_timeout_ms.saturating_add(1_000));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sup: Supervisor::new(opts.supervisor),
                children: HashMap::new(),
                waiting: HashMap::new(),
                ready: None,
                start_error: None,
                exit_thread: false,
            }),
            opts,
            clock: Instant::now(),
            changed: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("engine-supervisor".into())
            .spawn(move || supervise(for_thread))
            .map_err(|e| EngineError::new(EngineErrorKind::Backend, format!("cannot start the supervisor thread: {e}")))?;
        let engine = Self { shared, thread: Some(thread) };
        let started = Instant::now();
        let mut st = engine.shared.lock();
        loop {
            if let Some(r) = &st.ready {
                let r = r.clone();
                drop(st);
                return Ok((engine, r));
            }
            if let Some(e) = st.start_error.take() {
                drop(st);
                return Err(EngineError::new(EngineErrorKind::Backend, e));
            }
            let left = start_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                drop(st);
                return Err(EngineError::new(EngineErrorKind::Backend, "the engine process did not start in time"));
            }
            st = engine.shared.changed.wait_timeout(st, left).map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }

    /// The supervisor's view, for the status page.
    pub fn health(&self) -> Health {
        self.shared.lock().sup.health()
    }

    /// The pids of the running children (tests signal them).
    pub fn pids(&self) -> Vec<u32> {
        self.shared.lock().children.values().filter_map(|io| io.process.as_ref().map(std::process::Child::id)).collect()
    }

    fn call(&self, request: Request<'_>, deadline: Option<Instant>) -> Outcome {
        let backend = |m: String| EngineError::new(EngineErrorKind::Backend, m);
        let frame = wire::encode_request(&request).map_err(|e| backend(e.to_string()))?;
        let shared = &self.shared;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_millis(DEFAULT_CALL_MS));
        let deadline_ms = deadline.saturating_duration_since(shared.clock).as_millis() as Millis;
        let (rx, stdin) = {
            let mut st = shared.lock();
            loop {
                match st.sup.acquire(deadline_ms) {
                    Acquire::Run { child, job } => {
                        let (tx, rx) = mpsc::channel();
                        st.waiting.insert(job, tx);
                        let io = st.children.get(&child.slot).filter(|io| io.id == child);
                        // A failure's last words are what the child said during this job.
                        if let Some(io) = io {
                            io.last_stderr.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        }
                        let stdin = io.map(|io| io.stdin.clone());
                        // The supervisor thread must learn of the new deadline.
                        shared.changed.notify_all();
                        break (rx, stdin);
                    }
                    Acquire::Unavailable(why) => return Err(backend(why)),
                    Acquire::Wait => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(backend("no engine instance was free before the job's deadline".into()));
                        }
                        st = shared.changed.wait_timeout(st, left).map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    }
                }
            }
        };
        // A write to a dead or hung child fails or blocks until it is killed:
        // either way the supervisor answers the job (its exit, its deadline).
        if let Some(stdin) = stdin
            && let Some(pipe) = stdin.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        {
            let _ = wire::write_frame(pipe, &frame);
        }
        // The supervisor always ends an acquired job; the margin only guards against a bug.
        let limit = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        match rx.recv_timeout(limit) {
            Ok(outcome) => outcome,
            Err(_) => Err(backend("the engine process gave no answer".into())),
        }
    }
}

impl Engine for ProcessEngine {
    fn process(&self, request: Request<'_>) -> Result<Response, EngineError> {
        self.call(request, None)
    }

    fn process_until(&self, request: Request<'_>, deadline: Option<Instant>) -> Result<Response, EngineError> {
        self.call(request, deadline)
    }
}

impl Drop for ProcessEngine {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            self.shared.feed(&mut st, Event::Stop, None);
            st.exit_thread = true;
            // Closing stdin lets a healthy child end by itself; the kill makes sure.
            for io in st.children.values_mut() {
                io.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
            self.shared.changed.notify_all();
            // Reaped before we return (their readers report each exit), so a
            // dropped engine leaves no process behind; bounded all the same.
            let until = Instant::now() + Duration::from_secs(5);
            while !st.children.is_empty() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self.shared.changed.wait_timeout(st, left).map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
