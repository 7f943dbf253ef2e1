//! Overload control (extension 10): whether a job that found no free node
//! may wait, and what to tell the client when it may not. Plain functions
//! over numbers the core measured; no state of their own but [`DrainMeter`].
//!
//! The rule: a class (jobs with equal requirements) may queue about
//! `queue_per_slot` jobs per slot of its eligible nodes, so a queued job waits
//! at most about one job's time and what is served stays fast; and while the
//! class is saturated, each session holds at most its share of slots plus
//! queue. Beyond that the utterance is answered at once: `RATE_LIMITED` (a
//! refusal: the session is over its share, re-send later) or
//! `NODE_UNAVAILABLE` (its outcome: the fleet is saturated), both with
//! `retry_after_ms` from the measured drain rate. Nothing is held until it
//! times out, so goodput stays at capacity whatever is offered.

use super::Millis;

/// Completions per second, exponentially decayed (time constant `TAU_MS`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct DrainMeter {
    /// Decayed count; the rate is `level / TAU`.
    level: f64,
    at: Millis,
}

const TAU_MS: f64 = 2_000.0;

impl DrainMeter {
    fn decayed(&self, now: Millis) -> f64 {
        let dt = now.saturating_sub(self.at) as f64;
        self.level * (-dt / TAU_MS).exp()
    }

    pub(super) fn record(&mut self, now: Millis) {
        self.level = self.decayed(now) + 1.0;
        self.at = now;
    }

    /// Completions per second around `now`.
    pub(super) fn per_s(&self, now: Millis) -> f64 {
        self.decayed(now) * 1000.0 / TAU_MS
    }
}

/// What the core knows about a class when a job finds no free node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ClassLoad {
    /// Job slots of the class's eligible nodes (0: none is eligible).
    pub slots: u32,
    pub queued: usize,
    /// The arriving job's session: its jobs already in the system (running or queued).
    pub session_jobs: u32,
    /// Sessions with jobs in this class, the arriving one included.
    pub sessions: usize,
    pub drain_per_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Queue,
    /// The session holds its share: refuse, re-send after this long.
    OverShare {
        retry_after_ms: u64,
    },
    /// The class's queue is full: fail now, try again after this long.
    Saturated {
        retry_after_ms: u64,
    },
}

/// Settings of the rule (from `CoreConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    pub queue_per_slot: f64,
    /// The queue of any class may hold at least this many (a small fleet,
    /// such as a user's own node, still absorbs a burst).
    pub queue_min: usize,
    /// When nothing drains yet, the wait to suggest.
    pub fallback_retry_ms: u64,
}

/// How long until `ahead` queued jobs have drained.
pub(super) fn retry_after_ms(ahead: usize, drain_per_s: f64, fallback_ms: u64) -> u64 {
    if drain_per_s < 0.1 {
        return fallback_ms;
    }
    let ms = (ahead as f64 + 1.0) * 1000.0 / drain_per_s;
    (ms.ceil() as u64).clamp(10, 60_000)
}

/// The queue cap of a class with `slots` slots.
pub(super) fn queue_cap(slots: u32, limits: &Limits) -> usize {
    ((f64::from(slots) * limits.queue_per_slot).ceil() as usize).max(limits.queue_min).max(1)
}

pub(super) fn admit(load: &ClassLoad, limits: &Limits) -> Admit {
    // No eligible node at all is not overload: the job waits (boundedly)
    // for one to register, as after a dispatcher restart.
    if load.slots == 0 {
        return Admit::Queue;
    }
    let cap = queue_cap(load.slots, limits);
    let retry = || retry_after_ms(load.queued, load.drain_per_s, limits.fallback_retry_ms);
    let share = (load.slots as usize + cap).div_ceil(load.sessions.max(1)).max(1);
    if load.session_jobs as usize >= share {
        return Admit::OverShare { retry_after_ms: retry() };
    }
    // A session under its share may overfill the queue a little (to twice
    // the cap), so a newcomer is not shut out by sessions already at theirs.
    let hard_cap = if load.session_jobs == 0 { cap * 2 } else { cap };
    if load.queued >= hard_cap {
        return Admit::Saturated { retry_after_ms: retry() };
    }
    Admit::Queue
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { queue_per_slot: 0.5, queue_min: 1, fallback_retry_ms: 1_000 };

    fn load(slots: u32, queued: usize, session_jobs: u32, sessions: usize) -> ClassLoad {
        ClassLoad { slots, queued, session_jobs, sessions, drain_per_s: 100.0 }
    }

    #[test]
    fn the_drain_meter_measures_a_steady_rate() {
        let mut m = DrainMeter::default();
        for t in 0..20_000 {
            if t % 10 == 0 {
                m.record(t); // 100 per second
            }
        }
        let r = m.per_s(20_000);
        assert!((90.0..110.0).contains(&r), "{r}");
        assert!(m.per_s(40_000) < 20.0, "it decays when nothing completes");
    }

    #[test]
    fn jobs_queue_up_to_the_cap_then_are_refused_with_a_drain_based_wait() {
        assert_eq!(queue_cap(32, &LIMITS), 16);
        assert_eq!(admit(&load(32, 15, 0, 10), &LIMITS), Admit::Queue);
        assert_eq!(admit(&load(32, 16, 1, 10), &LIMITS), Admit::Saturated { retry_after_ms: 170 });
        // A session with nothing in the system may overfill to twice the cap.
        assert_eq!(admit(&load(32, 16, 0, 10), &LIMITS), Admit::Queue);
        assert!(matches!(admit(&load(32, 32, 0, 10), &LIMITS), Admit::Saturated { .. }));
    }

    #[test]
    fn a_session_over_its_share_is_refused_before_the_queue_fills() {
        // 32 slots + 16 queued over 4 sessions: a share of 12 each.
        assert_eq!(admit(&load(32, 0, 11, 4), &LIMITS), Admit::Queue);
        assert!(matches!(admit(&load(32, 0, 12, 4), &LIMITS), Admit::OverShare { .. }));
        // Alone, a session may use everything.
        assert_eq!(admit(&load(32, 0, 40, 1), &LIMITS), Admit::Queue);
    }

    #[test]
    fn a_small_fleet_still_queues_a_burst() {
        let limits = Limits { queue_min: 8, ..LIMITS };
        assert_eq!(queue_cap(4, &limits), 8);
        assert_eq!(queue_cap(64, &limits), 32);
        // One session alone on a 4-slot node: 4 running + 8 queued.
        assert_eq!(admit(&load(4, 7, 11, 1), &limits), Admit::Queue);
        assert!(matches!(admit(&load(4, 8, 12, 1), &limits), Admit::OverShare { .. }));
    }

    #[test]
    fn no_eligible_node_means_wait_and_no_drain_means_the_fallback() {
        assert_eq!(admit(&load(0, 1_000, 50, 1), &LIMITS), Admit::Queue);
        assert_eq!(retry_after_ms(10, 0.0, 1_000), 1_000);
        assert_eq!(retry_after_ms(9, 10.0, 1_000), 1_000);
        assert_eq!(retry_after_ms(1_000_000, 1.0, 5), 60_000);
    }
}

/// Sheds new utterances when the dispatcher's own CPU is the limit.
///
/// Node slots are not the only capacity: when the dispatcher itself cannot
/// keep up, frames wait in socket buffers where no queue cap sees them, and
/// everything is served late. The shell measures how busy its worker
/// threads are (the share of time they ran, not parked) and feeds it here;
/// the admitted share of new utterances falls multiplicatively while busy is
/// above `high` and recovers additively below `low` (AIMD). A shed utterance
/// is refused at once (`RATE_LIMITED`, not accepted), which costs a small
/// part of serving it, so the backlog drains and what is admitted is served
/// in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShedder {
    admit: f64,
    high: f64,
    low: f64,
    /// Readings in a row at or above `high`: shedding starts only after
    /// [`Self::SUSTAINED`] of them (a burst is not overload).
    busy_run: u32,
}

impl CpuShedder {
    /// Never below this share: some work always gets through, so a wrong
    /// reading cannot starve everyone.
    pub const MIN_ADMIT: f64 = 0.05;
    /// Readings (100 ms each) at or above `high` before anything is shed.
    pub const SUSTAINED: u32 = 10;

    /// A shedder that starts admitting everything. `high <= 0` disables it.
    pub fn new(high: f64, low: f64) -> Self {
        Self { admit: 1.0, high, low: low.min(high), busy_run: 0 }
    }

    /// One reading: the workers' busy share (0–1) over the last interval.
    pub fn observe(&mut self, busy: f64) {
        if self.high <= 0.0 || !busy.is_finite() {
            return;
        }
        if busy >= self.high {
            self.busy_run = self.busy_run.saturating_add(1);
            if self.busy_run >= Self::SUSTAINED || self.admit < 1.0 {
                self.admit = (self.admit * 0.8).max(Self::MIN_ADMIT);
            }
            return;
        }
        self.busy_run = 0;
        if busy <= self.low {
            self.admit = (self.admit + 0.05).min(1.0);
        }
    }

    /// Whether an utterance with a uniform `draw` in [0, 1) is admitted.
    pub fn admits(&self, draw: f64) -> bool {
        draw < self.admit
    }

    /// The share of new utterances admitted now.
    pub fn admitted_share(&self) -> f64 {
        self.admit
    }

    /// When a shed utterance should come back: longer the more is shed.
    pub fn retry_after_ms(&self) -> u64 {
        ((500.0 / self.admit) as u64).clamp(500, 10_000)
    }
}

#[cfg(test)]
mod shedder_tests {
    use super::CpuShedder;

    #[test]
    fn sheds_while_busy_recovers_when_not_and_never_shuts_everything_out() {
        let mut s = CpuShedder::new(0.95, 0.85);
        assert!(s.admits(0.999));
        s.observe(0.9);
        assert_eq!(s.admitted_share(), 1.0, "between the marks nothing changes");
        for _ in 0..CpuShedder::SUSTAINED - 1 {
            s.observe(1.0);
        }
        assert_eq!(s.admitted_share(), 1.0, "a burst is not overload");
        s.observe(0.9);
        for _ in 0..CpuShedder::SUSTAINED - 1 {
            s.observe(1.0);
        }
        assert_eq!(s.admitted_share(), 1.0, "the run starts over");
        for _ in 0..5 {
            s.observe(1.0);
        }
        let share = s.admitted_share();
        assert!((share - 0.8f64.powi(5)).abs() < 1e-9, "{share}");
        assert!(s.admits(share - 0.01) && !s.admits(share + 0.01));
        assert!(s.retry_after_ms() > 500);
        for _ in 0..100 {
            s.observe(1.0);
        }
        assert_eq!(s.admitted_share(), CpuShedder::MIN_ADMIT);
        assert_eq!(s.retry_after_ms(), 10_000);
        for _ in 0..30 {
            s.observe(0.5);
        }
        assert_eq!(s.admitted_share(), 1.0);
        let mut off = CpuShedder::new(0.0, 0.0);
        off.observe(1.0);
        assert_eq!(off.admitted_share(), 1.0, "disabled");
    }
}
