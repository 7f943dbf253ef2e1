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
/// everything is served late. The shell measures its scheduling lag (how
/// long a task that asks to run waits for a worker thread: every connection
/// with a frame ready is a task waiting) and feeds it here. Once the lag has
/// stayed at or above `high` ms for a second, new utterances are admitted at
/// the rate outcomes are delivered, plus 10 % to probe for more (a token
/// bucket); the rest are refused at once (`RATE_LIMITED`, not accepted),
/// which costs a small part of serving them, so what is admitted is served in
/// time. Limiting ends once the lag is at or below `low` and a whole second
/// passed without a refusal (the offered load fits again).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShedder {
    high: f64,
    low: f64,
    /// Readings in a row at or above `high`.
    busy_run: u32,
    limiting: bool,
    tokens: f64,
    refilled_at: Millis,
    last_refusal: Millis,
    served: DrainMeter,
}

impl CpuShedder {
    /// Readings (100 ms each) at or above `high` before anything is shed.
    pub const SUSTAINED: u32 = 10;
    /// Admitted per second at least, however little is served.
    pub const MIN_RATE: f64 = 5.0;

    /// A shedder that admits everything until the lag says otherwise;
    /// `high`/`low` are lags in ms. `high <= 0` disables it.
    pub fn new(high: f64, low: f64) -> Self {
        Self {
            high,
            low: low.min(high),
            busy_run: 0,
            limiting: false,
            tokens: 0.0,
            refilled_at: 0,
            last_refusal: 0,
            served: DrainMeter::default(),
        }
    }

    /// One reading of the scheduling lag, ms, at `now`.
    pub fn observe(&mut self, now: Millis, lag_ms: f64) {
        if self.high <= 0.0 || !lag_ms.is_finite() {
            return;
        }
        if lag_ms >= self.high {
            self.busy_run = self.busy_run.saturating_add(1);
            if self.busy_run >= Self::SUSTAINED && !self.limiting {
                self.limiting = true;
                self.tokens = 0.0;
                self.refilled_at = now;
            }
            return;
        }
        self.busy_run = 0;
        if self.limiting && lag_ms <= self.low && now >= self.last_refusal + 1_000 {
            self.limiting = false;
        }
    }

    /// An outcome was delivered at `now`.
    pub fn served(&mut self, now: Millis) {
        self.served.record(now);
    }

    /// The rate utterances are admitted at while limiting, per second.
    pub fn rate(&self, now: Millis) -> f64 {
        (self.served.per_s(now) * 1.1).max(Self::MIN_RATE)
    }

    /// Whether a new utterance arriving at `now` is admitted.
    pub fn admit(&mut self, now: Millis) -> bool {
        if !self.limiting {
            return true;
        }
        let rate = self.rate(now);
        let dt = now.saturating_sub(self.refilled_at) as f64 / 1000.0;
        // At most a fifth of a second's worth in hand: no burst after a lull.
        self.tokens = (self.tokens + rate * dt).min(rate * 0.2);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.last_refusal = now;
            false
        }
    }

    pub fn limiting(&self) -> bool {
        self.limiting
    }

    /// When a shed utterance should come back.
    pub fn retry_after_ms(&self) -> u64 {
        1_000
    }
}

#[cfg(test)]
mod shedder_tests {
    use super::CpuShedder;

    #[test]
    fn limits_to_what_is_served_after_sustained_lag_and_lets_go_when_it_fits() {
        let mut s = CpuShedder::new(20.0, 5.0);
        let mut now = 1_000_000;
        for _ in 0..CpuShedder::SUSTAINED - 1 {
            s.observe(now, 50.0);
            now += 100;
        }
        assert!(!s.limiting(), "a burst is not overload");
        s.observe(now, 10.0);
        for _ in 0..CpuShedder::SUSTAINED {
            now += 100;
            s.observe(now, 50.0);
        }
        assert!(s.limiting());
        // 100 outcomes a second are delivered; 400 utterances a second offered.
        let (mut admitted, mut refused) = (0, 0);
        for ms in 0..5_000u64 {
            if ms % 10 == 0 {
                s.served(now + ms);
            }
            if ms % 10 < 4 && ms % 10 != 0 || ms % 10 == 5 {
                if s.admit(now + ms) {
                    admitted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        // Over 5 s the served rate ramps up to 100/s (time constant 2 s); the
        // admitted rate follows it, 10 % over.
        assert!(admitted > 250 && admitted < 560, "{admitted} admitted, {refused} refused");
        assert!(refused > 1_400, "{refused}");
        now += 5_000;
        // The lag is low but utterances are still refused: keep limiting.
        s.observe(now, 1.0);
        assert!(s.limiting());
        // A second without refusals and a low lag: done.
        now += 1_500;
        s.observe(now, 1.0);
        assert!(!s.limiting());
        assert!(s.admit(now));
        let mut off = CpuShedder::new(0.0, 0.0);
        for i in 0..30 {
            off.observe(i * 100, 500.0);
        }
        assert!(!off.limiting(), "disabled");
    }
}
