//! The supervision decisions for one out-of-process engine, as a sans-IO
//! state machine (like the node's core): it is fed [`Event`]s with the time
//! (milliseconds on a monotonic clock) and queues [`Action`]s — spawn this
//! child, kill that one, hand a reply to its caller, fail a job, tell the
//! node the engine is down or up again. [`super::process`] carries them out
//! with real processes and pipes; the tests below drive it by hand.
//!
//! An engine has `instances` slots, each one child process serving one call
//! at a time. Rules:
//! - A child that dies (any exit, any signal), sends a malformed frame, or
//!   does not start within `start_timeout_ms` is a **failure**: the job it
//!   held (if any) fails with its reason, and the slot is restarted after a
//!   back-off of `backoff_min_ms · 2^(n−1)` (capped at `backoff_max_ms`),
//!   `n` the failures in a row. A child that had run `healthy_ms` before
//!   failing starts the count afresh.
//! - A job still running at its deadline is failed there ("hung") and its
//!   child killed: the slot is free again once the kill is reaped and the
//!   child restarted.
//! - The engine is reported **down** at its first failure and **up** again
//!   once every slot runs, so the node can switch its models off and on
//!   for the dispatcher's routing.
//! - Spawning never stops: after the cap, the back-off stays at the cap.

use std::fmt;

/// Milliseconds on the driver's monotonic clock.
pub type Millis = u64;

/// How a slot is supervised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    pub instances: usize,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A child that ran this long before failing resets the failure count.
    pub healthy_ms: u64,
    /// Longer than this from spawn to `Ready` is a failure (a hang in `create`).
    pub start_timeout_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self { instances: 1, backoff_min_ms: 500, backoff_max_ms: 30_000, healthy_ms: 60_000, start_timeout_ms: 120_000 }
    }
}

/// One spawned child process: its slot and a generation that is new for
/// every spawn, so events about an old child are recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Child {
    pub slot: usize,
    pub generation: u64,
}

/// A job sent to a child (numbered by the supervisor).
pub type JobId = u64;

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It could not be started (exec failed), or its status could not be read.
    Unknown(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "the engine process exited with status {c}"),
            Self::Signal(s) => write!(f, "the engine process was killed by signal {s} ({})", signal_name(*s)),
            Self::Unknown(why) => write!(f, "the engine process ended: {why}"),
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "?",
    }
}

/// Something that happened to the engine's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The child loaded its library and created its instance.
    Ready(Child),
    /// The child reported that it cannot start (it exits next).
    InitFailed(Child, String),
    /// The child answered its job.
    Replied(Child),
    /// The child sent something that is not a valid frame, or a frame out of turn.
    Malformed(Child, String),
    /// The child process is gone (reaped). `detail`: its last line of stderr.
    Exited { child: Child, exit: Exit, detail: Option<String> },
    /// Time passed: deadlines, start time-outs, restarts.
    Tick,
    /// The engine is being dropped: kill every child, start none.
    Stop,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a child process for this slot and send it the `Init` frame.
    Spawn(Child),
    /// Kill this child (SIGKILL); its exit is reported as [`Event::Exited`].
    Kill(Child),
    /// The child's reply answers job `job`: hand it to the caller.
    Deliver { child: Child, job: JobId },
    /// Job `job` failed without an answer (`INFERENCE_BACKEND_ERROR`).
    FailJob { child: Child, job: JobId, reason: String },
    /// The engine failed (`failures` in a row); a restart follows in `restart_in_ms`.
    Down { reason: String, failures: u32, restart_in_ms: u64 },
    /// Every slot runs again after a failure.
    Up,
}

/// What [`Supervisor::acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Send the job to this child.
    Run { child: Child, job: JobId },
    /// No child is free, but one may be soon (busy or starting): wait for a change.
    Wait,
    /// No child runs or starts: the engine is restarting.
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// Not running; spawn at `at` (start-up, or after a back-off).
    Down {
        at: Millis,
    },
    Starting {
        generation: u64,
        since: Millis,
    },
    Idle {
        generation: u64,
        up_since: Millis,
    },
    Busy {
        generation: u64,
        up_since: Millis,
        job: JobId,
        deadline: Millis,
    },
    /// Killed or dead, waiting for the exit to be reaped. `reason` is why,
    /// when the supervisor decided it (a kill), else the exit says.
    Dying {
        generation: u64,
        up_since: Option<Millis>,
        reason: Option<String>,
    },
}

impl Slot {
    fn generation(&self) -> Option<u64> {
        match *self {
            Self::Down { .. } => None,
            Self::Starting { generation, .. }
            | Self::Idle { generation, .. }
            | Self::Busy { generation, .. }
            | Self::Dying { generation, .. } => Some(generation),
        }
    }
    fn running(&self) -> bool {
        matches!(self, Self::Idle { .. } | Self::Busy { .. })
    }
}

/// The engine's state as the owner's status view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub instances: usize,
    pub running: usize,
    /// Failures in a row (reset by a healthy run) and in all.
    pub failures_in_a_row: u32,
    pub failures_total: u64,
    /// When the next restart is due, if one is.
    pub restart_at: Option<Millis>,
    pub last_failure: Option<String>,
}

/// The supervisor of one engine's child processes.
#[derive(Debug)]
pub struct Supervisor {
    cfg: SupervisorConfig,
    slots: Vec<Slot>,
    next_generation: u64,
    next_job: JobId,
    in_a_row: u32,
    total: u64,
    last_failure: Option<String>,
    /// A `Down` was reported and no `Up` since.
    down: bool,
    stopped: bool,
    out: Vec<Action>,
}

impl Supervisor {
    /// A supervisor whose slots all start at the first [`Event::Tick`].
    pub fn new(cfg: SupervisorConfig) -> Self {
        let slots = vec![Slot::Down { at: 0 }; cfg.instances.max(1)];
        Self {
            cfg,
            slots,
            next_generation: 1,
            next_job: 1,
            in_a_row: 0,
            total: 0,
            last_failure: None,
            down: false,
            stopped: false,
            out: Vec::new(),
        }
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// When the driver must feed the next [`Event::Tick`].
    pub fn next_wakeup(&self) -> Option<Millis> {
        self.slots
            .iter()
            .filter_map(|s| match *s {
                Slot::Down { at } if !self.stopped => Some(at),
                Slot::Starting { since, .. } => Some(since.saturating_add(self.cfg.start_timeout_ms)),
                Slot::Busy { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Whether every slot has a running child.
    pub fn all_running(&self) -> bool {
        self.slots.iter().all(Slot::running)
    }

    pub fn health(&self) -> Health {
        Health {
            instances: self.slots.len(),
            running: self.slots.iter().filter(|s| s.running()).count(),
            failures_in_a_row: self.in_a_row,
            failures_total: self.total,
            restart_at: if self.stopped {
                None
            } else {
                self.slots.iter().filter_map(|s| if let Slot::Down { at } = s { Some(*at) } else { None }).min()
            },
            last_failure: self.last_failure.clone(),
        }
    }

    /// Takes a free child for a job that must end by `deadline`.
    pub fn acquire(&mut self, deadline: Millis) -> Acquire {
        if self.stopped {
            return Acquire::Unavailable("the engine is stopping".into());
        }
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if let Slot::Idle { generation, up_since } = *s {
                let job = self.next_job;
                self.next_job += 1;
                *s = Slot::Busy { generation, up_since, job, deadline };
                return Acquire::Run { child: Child { slot, generation }, job };
            }
        }
        if self.slots.iter().any(|s| matches!(s, Slot::Busy { .. } | Slot::Starting { .. })) {
            return Acquire::Wait;
        }
        let why = self.last_failure.as_deref().unwrap_or("not started yet");
        Acquire::Unavailable(format!("the engine is restarting ({why})"))
    }

    pub fn handle(&mut self, now: Millis, event: Event) {
        match event {
            Event::Ready(c) => {
                if let Some(Slot::Starting { generation, .. }) = self.slot(c) {
                    let generation = *generation;
                    self.slots[c.slot] = Slot::Idle { generation, up_since: now };
                    if self.down && self.all_running() {
                        self.down = false;
                        self.out.push(Action::Up);
                    }
                }
            }
            Event::InitFailed(c, why) => self.kill(c, format!("the engine could not start: {why}")),
            Event::Replied(c) => match self.slot(c).cloned() {
                Some(Slot::Busy { generation, up_since, job, .. }) => {
                    self.slots[c.slot] = Slot::Idle { generation, up_since };
                    self.out.push(Action::Deliver { child: c, job });
                }
                // Late (the job was failed at its deadline and the child is being killed): dropped.
                Some(Slot::Dying { .. }) | None => {}
                Some(_) => self.kill(c, "the engine process answered a job it was not given".into()),
            },
            Event::Malformed(c, why) => self.kill(c, format!("the engine process sent a malformed frame: {why}")),
            Event::Exited { child, exit, detail } => self.on_exit(now, child, exit, detail),
            Event::Tick => self.on_tick(now),
            Event::Stop => {
                self.stopped = true;
                for slot in 0..self.slots.len() {
                    if let Some(generation) = self.slots[slot].generation()
                        && !matches!(self.slots[slot], Slot::Dying { .. })
                    {
                        self.kill(Child { slot, generation }, "the engine is stopping".into());
                    }
                }
            }
        }
    }

    /// The slot of `c` if it is still that child's.
    fn slot(&self, c: Child) -> Option<&Slot> {
        self.slots.get(c.slot).filter(|s| s.generation() == Some(c.generation))
    }

    /// Kills `c` for `reason`, failing its job if it held one.
    fn kill(&mut self, c: Child, reason: String) {
        let Some(slot) = self.slot(c).cloned() else { return };
        let up_since = match slot {
            Slot::Dying { .. } | Slot::Down { .. } => return,
            Slot::Starting { .. } => None,
            Slot::Idle { up_since, .. } => Some(up_since),
            Slot::Busy { up_since, job, .. } => {
                self.out.push(Action::FailJob { child: c, job, reason: reason.clone() });
                Some(up_since)
            }
        };
        self.slots[c.slot] = Slot::Dying { generation: c.generation, up_since, reason: Some(reason) };
        self.out.push(Action::Kill(c));
    }

    fn on_exit(&mut self, now: Millis, c: Child, exit: Exit, detail: Option<String>) {
        let Some(slot) = self.slot(c).cloned() else { return };
        let with_detail = |s: String| match &detail {
            Some(d) if !d.is_empty() => format!("{s}: {d}"),
            _ => s,
        };
        let (up_since, reason) = match slot {
            Slot::Down { .. } => return,
            Slot::Dying { up_since, reason, .. } => (up_since, reason.unwrap_or_else(|| with_detail(exit.to_string()))),
            Slot::Starting { .. } => (None, with_detail(format!("{exit} while starting"))),
            Slot::Idle { up_since, .. } => (Some(up_since), with_detail(exit.to_string())),
            Slot::Busy { up_since, job, .. } => {
                let reason = with_detail(exit.to_string());
                self.out.push(Action::FailJob { child: c, job, reason: reason.clone() });
                (Some(up_since), reason)
            }
        };
        if self.stopped {
            self.slots[c.slot] = Slot::Down { at: Millis::MAX };
            return;
        }
        if up_since.is_some_and(|t| now.saturating_sub(t) >= self.cfg.healthy_ms) {
            self.in_a_row = 0;
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.total += 1;
        let delay = self.backoff(self.in_a_row);
        self.slots[c.slot] = Slot::Down { at: now.saturating_add(delay) };
        self.last_failure = Some(reason.clone());
        self.down = true;
        self.out.push(Action::Down { reason, failures: self.in_a_row, restart_in_ms: delay });
    }

    /// `backoff_min · 2^(n−1)`, capped.
    fn backoff(&self, n: u32) -> u64 {
        let exp = n.saturating_sub(1).min(30);
        self.cfg.backoff_min_ms.saturating_mul(1u64 << exp).min(self.cfg.backoff_max_ms)
    }

    fn on_tick(&mut self, now: Millis) {
        for slot in 0..self.slots.len() {
            match self.slots[slot] {
                Slot::Down { at } if at <= now && !self.stopped => {
                    let generation = self.next_generation;
                    self.next_generation += 1;
                    self.slots[slot] = Slot::Starting { generation, since: now };
                    self.out.push(Action::Spawn(Child { slot, generation }));
                }
                Slot::Starting { generation, since } if now >= since.saturating_add(self.cfg.start_timeout_ms) => {
                    let why = format!("the engine did not start within {} ms", self.cfg.start_timeout_ms);
                    self.kill(Child { slot, generation }, why);
                }
                Slot::Busy { generation, deadline, .. } if now >= deadline => {
                    self.kill(Child { slot, generation }, "the engine hung: killed at the job's deadline".into());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(instances: usize) -> SupervisorConfig {
        SupervisorConfig { instances, backoff_min_ms: 100, backoff_max_ms: 1_000, healthy_ms: 10_000, start_timeout_ms: 5_000 }
    }

    /// A supervisor whose every slot has started (ready at `now`).
    fn running(instances: usize, now: Millis) -> (Supervisor, Vec<Child>) {
        let mut s = Supervisor::new(cfg(instances));
        s.handle(now, Event::Tick);
        let children: Vec<Child> =
            s.take_actions().into_iter().map(|a| if let Action::Spawn(c) = a { c } else { panic!("{a:?}") }).collect();
        assert_eq!(children.len(), instances);
        for &c in &children {
            s.handle(now, Event::Ready(c));
        }
        assert!(s.take_actions().is_empty(), "no Up before any Down");
        (s, children)
    }

    fn run(s: &mut Supervisor, deadline: Millis) -> (Child, JobId) {
        match s.acquire(deadline) {
            Acquire::Run { child, job } => (child, job),
            other => panic!("{other:?}"),
        }
    }

    fn exited(child: Child, exit: Exit) -> Event {
        Event::Exited { child, exit, detail: None }
    }

    #[test]
    fn a_job_runs_and_its_reply_is_delivered() {
        let (mut s, c) = running(1, 0);
        let (child, job) = run(&mut s, 1_000);
        assert_eq!(child, c[0]);
        assert_eq!(s.acquire(1_000), Acquire::Wait, "the one child is busy");
        s.handle(10, Event::Replied(child));
        assert_eq!(s.take_actions(), [Action::Deliver { child, job }]);
        assert!(matches!(s.acquire(1_000), Acquire::Run { .. }), "free again");
    }

    #[test]
    fn a_crash_fails_only_its_job_reports_down_restarts_after_back_off_and_reports_up() {
        let (mut s, _) = running(1, 0);
        let (child, job) = run(&mut s, 60_000);
        s.handle(50, Event::Exited { child, exit: Exit::Signal(11), detail: Some("Segmentation fault".into()) });
        let reason = "the engine process was killed by signal 11 (SIGSEGV): Segmentation fault".to_owned();
        assert_eq!(
            s.take_actions(),
            [Action::FailJob { child, job, reason: reason.clone() }, Action::Down { reason, failures: 1, restart_in_ms: 100 }]
        );
        assert!(matches!(s.acquire(60_000), Acquire::Unavailable(m) if m.contains("SIGSEGV")));
        assert_eq!(s.next_wakeup(), Some(150));
        s.handle(149, Event::Tick);
        assert!(s.take_actions().is_empty(), "not before the back-off");
        s.handle(150, Event::Tick);
        let [Action::Spawn(again)] = s.take_actions()[..] else { panic!() };
        assert_eq!((again.slot, again.generation > child.generation), (0, true));
        assert_eq!(s.acquire(60_000), Acquire::Wait, "starting");
        s.handle(160, Event::Ready(again));
        assert_eq!(s.take_actions(), [Action::Up]);
        assert!(matches!(s.acquire(60_000), Acquire::Run { child, .. } if child == again));
        let h = s.health();
        assert_eq!((h.running, h.failures_in_a_row, h.failures_total), (1, 1, 1));
    }

    #[test]
    fn back_off_doubles_on_repeated_failures_up_to_the_cap_and_resets_after_a_healthy_run() {
        let (mut s, c) = running(1, 0);
        let mut child = c[0];
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            s.handle(now, exited(child, Exit::Code(1)));
            let actions = s.take_actions();
            let Some(Action::Down { restart_in_ms, .. }) = actions.last() else { panic!("{actions:?}") };
            delays.push(*restart_in_ms);
            now += restart_in_ms;
            s.handle(now, Event::Tick);
            let [Action::Spawn(next)] = s.take_actions()[..] else { panic!() };
            s.handle(now, Event::Ready(next));
            s.take_actions();
            child = next;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        // Up for the healthy period: the next failure counts as the first.
        now += 10_000;
        s.handle(now, exited(child, Exit::Code(1)));
        assert!(matches!(s.take_actions().last(), Some(Action::Down { failures: 1, restart_in_ms: 100, .. })));
        assert_eq!(s.health().failures_total, 7);
    }

    #[test]
    fn a_hung_job_is_failed_at_its_deadline_and_its_child_killed_then_restarted() {
        let (mut s, _) = running(1, 0);
        let (child, job) = run(&mut s, 500);
        assert_eq!(s.next_wakeup(), Some(500));
        s.handle(499, Event::Tick);
        assert!(s.take_actions().is_empty());
        s.handle(500, Event::Tick);
        let reason = "the engine hung: killed at the job's deadline".to_owned();
        assert_eq!(s.take_actions(), [Action::FailJob { child, job, reason: reason.clone() }, Action::Kill(child)]);
        // A reply racing the kill is dropped; the reaped exit keeps the kill's reason.
        s.handle(501, Event::Replied(child));
        assert!(s.take_actions().is_empty());
        s.handle(510, exited(child, Exit::Signal(9)));
        assert_eq!(s.take_actions(), [Action::Down { reason, failures: 1, restart_in_ms: 100 }]);
        assert_eq!(s.next_wakeup(), Some(610));
    }

    #[test]
    fn other_slots_keep_serving_while_one_restarts() {
        let (mut s, _) = running(2, 0);
        let (a, job_a) = run(&mut s, 60_000);
        let (b, _) = run(&mut s, 60_000);
        assert_ne!(a.slot, b.slot);
        s.handle(5, exited(a, Exit::Signal(6)));
        let actions = s.take_actions();
        assert!(matches!(&actions[0], Action::FailJob { job, .. } if *job == job_a), "{actions:?}");
        assert!(matches!(&actions[1], Action::Down { reason, .. } if reason.contains("SIGABRT")));
        // b still busy, a in back-off: wait rather than fail.
        assert_eq!(s.acquire(60_000), Acquire::Wait);
        s.handle(6, Event::Replied(b));
        assert!(matches!(s.take_actions()[..], [Action::Deliver { .. }]));
        assert!(matches!(s.acquire(60_000), Acquire::Run { child, .. } if child == b));
        // Up only once both run again.
        s.handle(105, Event::Tick);
        let [Action::Spawn(a2)] = s.take_actions()[..] else { panic!() };
        s.handle(106, Event::Ready(a2));
        assert_eq!(s.take_actions(), [Action::Up]);
    }

    #[test]
    fn start_failures_time_outs_and_malformed_frames_are_failures() {
        let mut s = Supervisor::new(cfg(1));
        s.handle(0, Event::Tick);
        let [Action::Spawn(c1)] = s.take_actions()[..] else { panic!() };
        s.handle(1, Event::InitFailed(c1, "no such model".into()));
        assert_eq!(s.take_actions(), [Action::Kill(c1)]);
        s.handle(2, exited(c1, Exit::Code(2)));
        assert!(matches!(&s.take_actions()[..], [Action::Down { reason, .. }] if reason.contains("could not start: no such model")));
        // A child that never says Ready is killed at the start time-out.
        s.handle(102, Event::Tick);
        let [Action::Spawn(c2)] = s.take_actions()[..] else { panic!() };
        assert_eq!(s.next_wakeup(), Some(5_102));
        s.handle(5_102, Event::Tick);
        assert_eq!(s.take_actions(), [Action::Kill(c2)]);
        s.handle(5_103, exited(c2, Exit::Signal(9)));
        assert!(
            matches!(&s.take_actions()[..], [Action::Down { reason, failures: 2, restart_in_ms: 200 }] if reason.contains("did not start within"))
        );
        // A malformed reply kills the child and fails its job.
        s.handle(5_303, Event::Tick);
        let [Action::Spawn(c3)] = s.take_actions()[..] else { panic!() };
        s.handle(5_304, Event::Ready(c3));
        assert_eq!(s.take_actions(), [Action::Up]);
        let (_, job) = run(&mut s, 60_000);
        s.handle(5_305, Event::Malformed(c3, "frame kind 99".into()));
        let actions = s.take_actions();
        assert!(
            matches!(&actions[..], [Action::FailJob { job: j, reason, .. }, Action::Kill(_)] if *j == job && reason.contains("malformed"))
        );
        // A reply to no job is malformed too.
        s.handle(5_306, exited(c3, Exit::Signal(9)));
        s.take_actions();
        s.handle(6_000, Event::Tick);
        let [Action::Spawn(c4)] = s.take_actions()[..] else { panic!() };
        s.handle(6_001, Event::Ready(c4));
        s.take_actions();
        s.handle(6_002, Event::Replied(c4));
        assert_eq!(s.take_actions(), [Action::Kill(c4)]);
    }

    #[test]
    fn events_about_old_children_are_ignored() {
        let (mut s, c) = running(1, 0);
        let old = c[0];
        s.handle(1, exited(old, Exit::Code(0)));
        s.take_actions();
        s.handle(101, Event::Tick);
        let [Action::Spawn(new)] = s.take_actions()[..] else { panic!() };
        for e in [Event::Ready(old), Event::Replied(old), exited(old, Exit::Code(1)), Event::Malformed(old, "x".into())] {
            s.handle(102, e);
            assert!(s.take_actions().is_empty());
        }
        s.handle(103, Event::Ready(new));
        assert_eq!(s.take_actions(), [Action::Up]);
    }

    #[test]
    fn stop_kills_every_child_and_starts_none() {
        let (mut s, c) = running(2, 0);
        let (busy, job) = run(&mut s, 60_000);
        s.handle(1, Event::Stop);
        let actions = s.take_actions();
        assert!(actions.contains(&Action::FailJob { child: busy, job, reason: "the engine is stopping".into() }));
        assert!(c.iter().all(|c| actions.contains(&Action::Kill(*c))));
        for &child in &c {
            s.handle(2, exited(child, Exit::Signal(9)));
        }
        assert!(s.take_actions().is_empty(), "no Down, no restart");
        assert_eq!(s.next_wakeup(), None);
        assert!(matches!(s.acquire(60_000), Acquire::Unavailable(_)));
    }

    /// A randomized run: whatever happens, every job acquired ends exactly
    /// once (delivered or failed), and a slot never holds two jobs.
    #[test]
    fn every_job_ends_exactly_once_whatever_the_children_do() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut s = Supervisor::new(cfg(3));
        let mut live: std::collections::HashMap<JobId, Child> = Default::default();
        let mut ended: std::collections::HashSet<JobId> = Default::default();
        // The newest child of each slot, and children killed but not yet reaped.
        let mut latest: Vec<Child> = Vec::new();
        let mut killed: Vec<Child> = Vec::new();
        let mut now = 0;
        for _ in 0..20_000 {
            now += next() % 50;
            let pick = |n: u64, v: &[Child]| v.get((n as usize) % v.len().max(1)).copied();
            let event = match next() % 10 {
                0..=2 => {
                    if let Acquire::Run { child, job } = s.acquire(now + next() % 2_000) {
                        assert!(!live.values().any(|c| *c == child), "a child got two jobs");
                        live.insert(job, child);
                    }
                    None
                }
                3 => pick(next(), &latest).map(Event::Ready),
                4 | 5 => pick(next(), &latest).map(Event::Replied),
                6 if next() % 4 == 0 => pick(next(), &latest).map(|c| exited(c, Exit::Signal(11))),
                7 if next() % 4 == 0 => pick(next(), &latest).map(|c| Event::Malformed(c, "x".into())),
                8 if !killed.is_empty() => Some(exited(killed.swap_remove((next() as usize) % killed.len()), Exit::Signal(9))),
                _ => Some(Event::Tick),
            };
            if let Some(e) = event {
                s.handle(now, e);
            }
            for a in s.take_actions() {
                match a {
                    Action::Spawn(c) => {
                        latest.retain(|o| o.slot != c.slot);
                        latest.push(c);
                    }
                    Action::Deliver { job, child } | Action::FailJob { job, child, .. } => {
                        assert_eq!(live.remove(&job), Some(child), "job {job} ended by the wrong child or twice");
                        assert!(ended.insert(job));
                    }
                    Action::Kill(c) => killed.push(c),
                    Action::Down { .. } | Action::Up => {}
                }
            }
        }
        assert!(ended.len() > 100, "the run exercised jobs: {}", ended.len());
    }
}
