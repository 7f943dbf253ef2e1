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

use std::collections::VecDeque;

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
/// everything is served late. How late is set by how many utterances the
/// phones keep unanswered (each up to its window), so the cure is fewer in
/// flight; admitting at the rate outcomes leave would hold the backlog where
/// it is. The shell samples its scheduling lag every 10 ms (how long a task
/// that yields waits for a worker thread: every connection with a frame
/// ready is a task waiting) and every 100 ms feeds the mean and the least
/// sample here, with the number of utterances in the system (accepted,
/// outcome not yet sent).
///
/// After [`SUSTAINED`](Self::SUSTAINED) readings in a row with the mean at
/// or above `high` and every sample at or above `low` (a standing queue, not
/// bursts), with at least [`BACKLOG_LAGS`](Self::BACKLOG_LAGS) lags' worth
/// of work in the system, a *window* on what is in the system starts at
/// half of what is in it. It shrinks by a fifth (up to a half, the further
/// the lag is over) each reading that shows a standing queue again, never
/// below [`MIN_WINDOW`](Self::MIN_WINDOW), and grows by a tenth each reading with a
/// sample under `low` (CPU to spare) while the window is what holds
/// utterances back: at least half full, or refusing (AIMD's shape, on a
/// delay signal).
///
/// While the window has room, everyone is admitted. With it full, a session
/// holding its *share* (the window over the sessions with work in the
/// system) is refused at once with `RATE_LIMITED`; a session under its
/// share is admitted. So a flood takes only its own share and what room is
/// left. A session that keeps to its share is guaranteed one in flight even
/// when there are more busy sessions than the window (closed-loop phones
/// are never refused); one refused lately gets one in only while the window
/// has room, so floods cannot hold the window open and what is served stays
/// near the window's latency. A session's first refusal in
/// [`FLOOD_MEMORY_MS`](Self::FLOOD_MEMORY_MS) waits only the window's
/// turnover (a burst at about the capacity clears that fast); a repeat is a
/// flood, and since a refusal still costs reading the frame (a tenth to a
/// quarter of serving it), its `retry_after_ms` is long enough that with
/// every session being refused refused once per wait, refusals stay about
/// [`REFUSAL_SHARE`](Self::REFUSAL_SHARE) of what is served; the SDK keeps
/// its window cut for that long. (The core jitters both.) Limiting ends once
/// [`CALM_MS`](Self::CALM_MS) passed with neither a standing queue nor a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuShedder {
    high: f64,
    low: f64,
    /// Readings in a row at or above `high` with every sample at or above
    /// `low`: a standing queue.
    standing_run: u32,
    /// Utterances allowed in the system while limiting.
    window: Option<f64>,
    last_refusal: Millis,
    /// The last reading of a standing queue while limiting.
    last_standing: Millis,
    /// Outcomes delivered since the last reading.
    served_since: u64,
    /// Outcomes per second, smoothed over readings (a quick meter: the
    /// wait must be right from the first second of an overload).
    served_per_s: Option<f64>,
    read_at: Option<Millis>,
    /// Sessions refused in the second that started at `refusing_since`,
    /// and in the second before it.
    refusing_since: Millis,
    refusing_now: usize,
    refusing_before: usize,
    /// When each slot held for a replacement lapses, oldest first (one
    /// lifetime for all, so pushed in order).
    reserved: VecDeque<Millis>,
    /// Held slots that lapsed unused.
    lapsed: u64,
}

impl CpuShedder {
    /// Readings (100 ms each) at or above `high` before anything is shed.
    pub const SUSTAINED: u32 = 3;
    /// The window's factor per reading with the lag at or above `high`
    /// (down to a half for a lag twice `high` or more).
    pub const DECREASE: f64 = 0.8;
    /// The window's growth per reading with the lag at or below `low`.
    pub const INCREASE: f64 = 0.1;
    /// Refusals per outcome served that `retry_after_ms` aims at.
    pub const REFUSAL_SHARE: f64 = 0.02;
    /// The window never shrinks below this: fewer frames than that are a
    /// few milliseconds of work, which relieves no CPU (and a small
    /// deployment is never refused for a lag it did not cause).
    pub const MIN_WINDOW: f64 = 64.0;
    /// Limiting starts only with at least this many lags' worth of work in
    /// the system (its time there by Little's law): a real overload holds
    /// hundreds of milliseconds (every phone's window full), a lag that is
    /// not ours a few.
    pub const BACKLOG_LAGS: f64 = 4.0;
    /// Limiting ends after this long with no refusal (and a low lag): at
    /// about the capacity, a window that refuses nothing costs nothing,
    /// while ending it lets a queue build for the readings it takes to
    /// start again.
    pub const CALM_MS: Millis = 3_000;
    /// How long a refused session counts as sending past its share (and
    /// a refusal as a repeat, which waits the long wait).
    pub const FLOOD_MEMORY_MS: Millis = 2_000;
    /// The bounds of a first refusal's wait (the window's turnover time).
    pub const FIRST_WAIT_MS: (u64, u64) = (20, 250);
    /// How long a slot freed by a refused session's outcome is held for
    /// its replacement: the round trip to the phone and back, with the
    /// phone's next send (at 40 a second, one every 25 ms).
    pub const RESERVE_MS: Millis = 30;
    /// Below this many outcomes a second the drain says nothing yet.
    const MIN_SERVED_PER_S: f64 = 1.0;

    /// A shedder that admits everything until the lag says otherwise;
    /// `high`/`low` are lags in ms. `high <= 0` disables it.
    pub fn new(high: f64, low: f64) -> Self {
        Self {
            high,
            low: low.min(high),
            standing_run: 0,
            window: None,
            last_refusal: 0,
            last_standing: 0,
            served_since: 0,
            served_per_s: None,
            read_at: None,
            refusing_since: 0,
            refusing_now: 0,
            refusing_before: 0,
            reserved: VecDeque::new(),
            lapsed: 0,
        }
    }

    /// One reading of a steady scheduling lag, ms (every sample the same),
    /// at `now`, with `in_flight` utterances in the system.
    pub fn observe(&mut self, now: Millis, lag_ms: f64, in_flight: usize) {
        self.observe_samples(now, lag_ms, lag_ms, in_flight);
    }

    /// One reading of the scheduling lag at `now`: the mean and the least
    /// of its samples, ms, with `in_flight` utterances in the system.
    pub fn observe_samples(&mut self, now: Millis, lag_ms: f64, least_lag_ms: f64, in_flight: usize) {
        if self.high <= 0.0 || !lag_ms.is_finite() || !least_lag_ms.is_finite() {
            return;
        }
        let previous = self.read_at;
        if let Some(at) = self.read_at.filter(|&at| now > at) {
            let rate = self.served_since as f64 * 1000.0 / (now - at) as f64;
            self.served_per_s = Some(self.served_per_s.map_or(rate, |r| 0.5 * (r + rate)));
        }
        self.read_at = Some(now);
        self.served_since = 0;
        let busy = lag_ms >= self.high;
        // A standing queue: every sample of the reading waited. A burst (a
        // neighbour's, such as the load generator's on the same cores, or
        // many frames at once) leaves some samples waiting nothing
        // (CoDel's minimum sojourn).
        let standing = busy && least_lag_ms >= self.low;
        self.standing_run = if standing { self.standing_run.saturating_add(1) } else { 0 };
        let ours = self.backlog_ms(in_flight) >= Self::BACKLOG_LAGS * self.high;
        let refused_since_last = previous.is_some_and(|at| self.last_refusal >= at);
        match &mut self.window {
            // Limiting starts only on a standing queue, with at least the
            // floor in the system and a few lags' worth of what it serves:
            // otherwise nothing of ours is to hold back (the lag is
            // something else: a burst of connections, or a neighbour taking
            // the cores, as the load generator does at 0.8×).
            None if self.standing_run >= Self::SUSTAINED && in_flight as f64 >= Self::MIN_WINDOW && ours => {
                self.window = Some((in_flight as f64 * 0.5).max(Self::MIN_WINDOW));
                self.last_standing = now;
            }
            None => {}
            // Only a standing queue shrinks it, as only one starts it: a
            // burst shrinking it (by a fifth) each time, and only a reading
            // with no lag at all growing it, ratcheted the window down to
            // its floor at 1-2× on a busy machine, where phones told to
            // wait left a fifth of the CPU idle. The further over, the
            // faster down: a deep backlog at the start of an overload is
            // cut within a few readings.
            Some(w) if standing => {
                *w = (*w * (self.high / lag_ms).clamp(0.5, Self::DECREASE)).max(Self::MIN_WINDOW);
                self.last_standing = now;
            }
            Some(_) if now >= self.last_standing + Self::CALM_MS && now >= self.last_refusal + Self::CALM_MS => {
                self.window = None;
                // Held and not taken: lapsed too.
                self.lapsed += self.reserved.len() as u64;
                self.reserved.clear();
            }
            // Some sample waited nothing: there was CPU to spare. It grows
            // where the window is what holds utterances back.
            Some(w) if least_lag_ms < self.low && (refused_since_last || in_flight as f64 >= *w * 0.5) => *w += *w * Self::INCREASE,
            Some(_) => {}
        }
    }

    /// How long what is in the system takes at the measured outcome rate
    /// (Little's law); unbounded before anything is served.
    fn backlog_ms(&self, in_flight: usize) -> f64 {
        match self.served_per_s {
            Some(rate) if rate >= Self::MIN_SERVED_PER_S => in_flight as f64 * 1000.0 / rate,
            _ => f64::INFINITY,
        }
    }

    /// An outcome was delivered.
    pub fn served(&mut self) {
        self.served_since += 1;
    }

    /// Whether a new utterance arriving at `now` is admitted, with
    /// `in_flight` utterances in the system, `session_in_flight` of them its
    /// session's, `flooding` if the session was refused past its guaranteed
    /// one in the last [`FLOOD_MEMORY_MS`](Self::FLOOD_MEMORY_MS),
    /// `last_refused` when the session was last refused at all, and
    /// `active_sessions()` sessions with work in it (asked only while
    /// limiting). `Err` is the refusal's `retry_after_ms`.
    pub fn admit(
        &mut self,
        now: Millis,
        in_flight: usize,
        session_in_flight: usize,
        flooding: bool,
        last_refused: Option<Millis>,
        active_sessions: impl FnOnce() -> usize,
    ) -> Result<(), u64> {
        let Some(window) = self.window else { return Ok(()) };
        let active = active_sessions().max(1);
        let share = (window / active as f64).floor();
        // One each is guaranteed to a session that keeps to its share (a
        // closed-loop phone: refusing it would only trade its wait for a
        // refusal, which costs reading the frame, and a longer wait). A
        // session refused lately sends past its share: with more busy
        // sessions than the window, it gets one in only while the window
        // has room, so floods do not hold the window open. While the
        // window has room, anyone is admitted: refusing then would leave
        // the CPU it was holding back idle (at about the capacity, where
        // every session is now and then one over its share, that cost a
        // tenth of the goodput).
        let guaranteed = if flooding { 0.0 } else { 1.0 };
        // Slots held for replacements are not room for anyone else.
        let held = self.held(now);
        if (session_in_flight as f64) < share.max(guaranteed) || ((in_flight + held) as f64) < window {
            return Ok(());
        }
        self.last_refusal = now;
        if now >= self.refusing_since + 1_000 {
            self.refusing_before = if now < self.refusing_since + 2_000 { self.refusing_now } else { 0 };
            self.refusing_now = 0;
            self.refusing_since = now;
        }
        if last_refused.is_none_or(|at| at < self.refusing_since) {
            self.refusing_now += 1;
        }
        let refusing = self.refusing_now.max(self.refusing_before);
        // A session's first refusal in a while is told to wait only until
        // the window has turned over: near the capacity the window fills in
        // bursts the CPU clears in milliseconds, and a phone told to wait
        // long holds back (or, if it cannot hold, loses) all it has to say
        // meanwhile, a loss many times the excess. Sent again within
        // FLOOD_MEMORY_MS, it is flooding and waits the long wait.
        let repeat = last_refused.is_some_and(|at| now < at + Self::FLOOD_MEMORY_MS);
        Err(if repeat { self.retry_after_ms(refusing) } else { self.turnover_ms(window) })
    }

    /// An outcome left the system at `now` (`in_flight` left in it) for a
    /// session refused lately. Such a phone holds what it could not send
    /// and sends one again as soon as it hears an outcome (the SDK does);
    /// racing every other arrival for the slot it just freed, it lost it,
    /// and was refused again, once per outcome: with phones that hold, a
    /// quarter to a third of what was served. So while limiting, and only
    /// while the window is not over-full (that is how it shrinks), the
    /// slot is held for it until the returned time. `None`: not held.
    pub fn reserve(&mut self, now: Millis, in_flight: usize) -> Option<Millis> {
        let window = self.window?;
        if ((in_flight + self.held(now)) as f64) >= window {
            return None;
        }
        let until = now + Self::RESERVE_MS;
        self.reserved.push_back(until);
        Some(until)
    }

    /// A session holding a slot (its `reserve` time not yet passed) sent
    /// at `now`: it takes the slot, admitted whatever the window says (it
    /// replaces what just left). False when no slot is held any more (the
    /// window ended).
    pub fn take_reserved(&mut self, now: Millis) -> bool {
        if self.window.is_none() || self.held(now) == 0 {
            return false;
        }
        self.reserved.pop_front();
        true
    }

    /// Slots held for replacements at `now`, forgetting the lapsed ones.
    fn held(&mut self, now: Millis) -> usize {
        while self.reserved.front().is_some_and(|&until| until <= now) {
            self.reserved.pop_front();
            self.lapsed += 1;
        }
        self.reserved.len()
    }

    /// Held slots that lapsed unused, ever (for `/metrics`).
    pub fn lapsed(&self) -> u64 {
        self.lapsed
    }

    /// How long the window takes to turn over at the measured outcome
    /// rate (Little's law), within [`FIRST_WAIT_MS`](Self::FIRST_WAIT_MS).
    fn turnover_ms(&self, window: f64) -> u64 {
        let served = self.served_per_s.unwrap_or(0.0).max(Self::MIN_SERVED_PER_S);
        let (least, most) = Self::FIRST_WAIT_MS;
        ((window * 1000.0 / served).round() as u64).clamp(least, most)
    }

    /// A refused session's wait: with the `refusing` sessions being refused
    /// (in this second or the last) each refused once per wait, refusals
    /// are `REFUSAL_SHARE` of the outcomes served. Counting only those, not
    /// every busy session, keeps the wait short when few are over (at about
    /// the capacity, where a long wait made a phone skip a tenth of its
    /// sends), and long when every session floods. Not capped by the
    /// sessions with work in the system at the moment of asking: those
    /// undercount the phones that flood (see the test).
    fn retry_after_ms(&self, refusing: usize) -> u64 {
        let served = self.served_per_s.unwrap_or(0.0);
        if served < Self::MIN_SERVED_PER_S {
            return 1_000;
        }
        let ms = refusing.max(1) as f64 * 1000.0 / (Self::REFUSAL_SHARE * served);
        (ms.ceil() as u64).clamp(100, 5_000)
    }

    pub fn limiting(&self) -> bool {
        self.window.is_some()
    }

    /// Outcomes per second each of `active` busy sessions would get with
    /// the measured outcome rate shared evenly (`None` while not limiting
    /// or before anything is measured).
    pub fn fair_per_s(&self, active: usize) -> Option<f64> {
        self.window?;
        self.served_per_s.filter(|&r| r >= Self::MIN_SERVED_PER_S).map(|r| r / active.max(1) as f64)
    }

    /// The window while limiting (for `/metrics`).
    pub fn window(&self) -> Option<f64> {
        self.window
    }
}

#[cfg(test)]
mod shedder_tests {
    use super::CpuShedder;

    fn limiting_at(in_flight: usize) -> (CpuShedder, u64) {
        let mut s = CpuShedder::new(20.0, 5.0);
        let mut now = 1_000_000;
        for _ in 0..CpuShedder::SUSTAINED - 1 {
            s.observe(now, 50.0, in_flight);
            now += 100;
        }
        assert!(!s.limiting(), "a burst is not overload");
        s.observe(now, 10.0, in_flight);
        for _ in 0..CpuShedder::SUSTAINED {
            now += 100;
            s.observe(now, 50.0, in_flight);
        }
        assert!(s.limiting());
        (s, now)
    }

    #[test]
    fn the_window_starts_at_half_of_what_is_in_flight_shrinks_while_lagging_and_grows_back() {
        let (mut s, mut now) = limiting_at(1_000);
        assert_eq!(s.window(), Some(500.0));
        now += 100;
        s.observe(now, 22.0, 600);
        assert_eq!(s.window(), Some(400.0), "a fifth off");
        now += 100;
        s.observe(now, 80.0, 600);
        assert_eq!(s.window(), Some(200.0), "far over: half off");
        now += 100;
        s.observe(now, 30.0, 600);
        assert!((s.window().unwrap() - 200.0 * 20.0 / 30.0).abs() < 1e-9, "in between: in proportion");
        s.window = Some(400.0);
        now += 100;
        s.observe(now, 10.0, 400);
        assert_eq!(s.window(), Some(400.0), "between low and high it holds");
        assert!(s.admit(now, 400, 3, false, None, || 200).is_err(), "the session holds its share of 2");
        now += 100;
        s.observe(now, 1.0, 300);
        assert_eq!(s.window(), Some(440.0), "a refusal within the second: grow, do not let go");
        for _ in 0..100 {
            now += 100;
            s.observe(now, 50.0, 300);
        }
        assert_eq!(s.window(), Some(CpuShedder::MIN_WINDOW), "never below the floor");
        now += CpuShedder::CALM_MS - 100;
        s.observe(now, 1.0, 0);
        assert!(s.limiting(), "a standing queue within CALM_MS");
        now += 100;
        s.observe(now, 1.0, 0);
        assert!(!s.limiting(), "no standing queue and no refusal for CALM_MS: done");
        assert!(s.admit(now, 1_000_000, 1_000_000, true, None, || 1).is_ok());
        let mut off = CpuShedder::new(0.0, 0.0);
        for i in 0..30 {
            off.observe(i * 100, 500.0, 100);
        }
        assert!(!off.limiting(), "disabled");
    }

    #[test]
    fn only_a_standing_queue_starts_limiting() {
        let mut s = CpuShedder::new(5.0, 1.0);
        let mut now = 1_000_000;
        // Every reading's mean far over, but some sample in each waited
        // nothing: bursts (a neighbour's, or frames arriving together).
        for _ in 0..50 {
            s.observe_samples(now, 40.0, 0.2, 5_000);
            now += 100;
        }
        assert!(!s.limiting(), "bursts are not a standing queue");
        for _ in 0..CpuShedder::SUSTAINED {
            s.observe_samples(now, 40.0, 2.0, 5_000);
            now += 100;
        }
        assert!(s.limiting(), "every sample waited: a standing queue");
        // Once limiting, too, only a standing queue shrinks the window.
        let w = s.window().unwrap();
        s.observe_samples(now, 8.0, 0.0, 5_000);
        assert!(s.window().unwrap() > w, "a burst with time to spare: it grows");
        let w = s.window().unwrap();
        now += 100;
        s.observe_samples(now, 8.0, 2.0, 5_000);
        assert!(s.window().unwrap() < w);
    }

    #[test]
    fn bursts_at_about_the_capacity_do_not_ratchet_the_window_down() {
        let (mut s, mut now) = limiting_at(400);
        let start = s.window().unwrap();
        // Near the capacity on busy cores: the mean often over `high`, but
        // some sample of each reading waited nothing. The window is full
        // (sessions are refused), so the spare CPU is the window's doing.
        for i in 0..30 {
            now += 100;
            let w = s.window().unwrap().ceil() as usize;
            assert!(s.admit(now, w, 50, true, None, || 100).is_err());
            let (mean, least) = if i % 2 == 0 { (45.0, 1.0) } else { (12.0, 3.0) };
            s.observe_samples(now, mean, least, w);
        }
        assert!(s.window().unwrap() > 2.0 * start, "{:?}", s.window());
        // A window nobody fills does not grow (after the reading that
        // follows the last refusal).
        now += 100;
        s.observe_samples(now, 1.0, 0.0, 10);
        let w = s.window();
        now += 100;
        s.observe_samples(now, 1.0, 0.0, 10);
        assert_eq!(s.window(), w);
    }

    #[test]
    fn a_lag_with_little_of_ours_in_the_system_is_not_overload() {
        let mut s = CpuShedder::new(5.0, 1.0);
        let mut now = 1_000_000;
        let reading = |s: &mut CpuShedder, now: &mut u64, in_flight: usize| {
            (0..1_500).for_each(|_| s.served());
            s.observe(*now, 8.0, in_flight);
            *now += 100;
        };
        // 15,000 outcomes a second and 100 in the system: 7 ms of work, under four lags.
        for _ in 0..10 {
            reading(&mut s, &mut now, 100);
        }
        assert!(!s.limiting(), "a lag that is not ours (a neighbour on the cores)");
        // The same lag with a second's work in the system: ours, at once.
        reading(&mut s, &mut now, 15_000);
        assert_eq!(s.window(), Some(7_500.0));
    }

    #[test]
    fn while_limiting_only_sessions_at_their_share_are_refused() {
        let (mut s, now) = limiting_at(200);
        assert_eq!(s.window(), Some(100.0));
        // 10 busy sessions: a share of 10 each, however full the window.
        assert!(s.admit(now, 100, 9, true, None, || 10).is_ok(), "under its share");
        assert!(s.admit(now, 100, 10, false, None, || 10).is_err(), "at its share");
        assert!(s.admit(now, 100, 99, false, None, || 1).is_ok(), "alone, a session has the whole window");
        assert!(s.admit(now, 100, 100, false, None, || 1).is_err());
        // More busy sessions than the window: one each for a session that
        // keeps to its share, whatever the window holds...
        assert!(s.admit(now, 500, 0, false, None, || 1_000).is_ok(), "a newcomer always gets one in");
        assert!(s.admit(now, 500, 1, false, None, || 1_000).is_err());
        // ...and for one refused lately, only while the window has room.
        assert!(s.admit(now, 99, 0, true, None, || 1_000).is_ok());
        assert!(s.admit(now, 100, 0, true, None, || 1_000).is_err());
        // While the window has room, anyone: refusing would idle the CPU.
        assert!(s.admit(now, 99, 50, true, None, || 10).is_ok());
        let mut off = CpuShedder::new(20.0, 5.0);
        assert!(off.admit(now, 0, 1_000_000, true, None, || unreachable!("not asked unless limiting")).is_ok());
    }

    #[test]
    fn the_wait_keeps_refusals_a_small_share_of_what_is_served() {
        let (mut s, mut now) = limiting_at(1_000);
        // Sessions refused 1.5 s ago: these refusals are repeats (the long wait).
        let mut earlier = Some(now - 1_500);
        assert_eq!(s.admit(now, 1_000, 1_000, false, earlier, || 100), Err(1_000), "nothing served yet: a second");
        // 2,000 outcomes a second, read every 100 ms: the rate is known
        // within a second.
        for _ in 0..10 {
            for _ in 0..100 {
                now += 1;
                s.served();
                s.served();
            }
            s.observe(now, 10.0, 1_000);
        }
        earlier = Some(now - 1_500);
        // One session being refused, once per wait = 2 % of 2,000/s: 40 a
        // second, so 25 ms; at least 100 ms.
        assert_eq!(s.admit(now, 1_000, 1_000, false, earlier, || 100).unwrap_err(), 100);
        // 100 sessions refused this second: 2.5 s each.
        for _ in 0..98 {
            let _ = s.admit(now, 1_000, 1_000, false, earlier, || 100);
        }
        let wait = s.admit(now, 1_000, 1_000, false, earlier, || 100).unwrap_err();
        assert!((2_500..=2_505).contains(&wait), "{wait}");
        let again = s.admit(now, 1_000, 1_000, false, Some(now), || 100).unwrap_err();
        assert_eq!(again, wait, "a session refused again in the second is not counted twice");
        // Only 10 with work in the system at this instant: the 100 refused
        // still count. Phones that each keep one in flight are in the
        // system only between the dispatcher reading a frame and writing
        // its result (a third to a half of them at any instant, the rest
        // on the wire or in socket buffers); capping the count there made
        // the wait a third of what the budget needs and refusals three
        // times the budget.
        let wait = s.admit(now, 1_000, 1_000, false, Some(now), || 10).unwrap_err();
        assert!((2_500..=2_505).contains(&wait), "every session refused counts, busy or not: {wait}");
        // The next second remembers the last: the floods go on.
        now += 1_000;
        let wait = s.admit(now, 1_000, 1_000, false, Some(now - 1_000), || 100).unwrap_err();
        assert!((2_500..=2_505).contains(&wait), "{wait}");
        // Two seconds without a refusal: forgotten.
        now += 2_000;
        earlier = Some(now - 1_500);
        assert_eq!(s.admit(now, 1_000, 1_000, false, earlier, || 100).unwrap_err(), 100);
        for _ in 0..1_000 {
            let _ = s.admit(now, 1_000_000, 1_000_000, false, None, || 100_000);
        }
        assert_eq!(s.admit(now, 1_000_000, 1_000_000, false, earlier, || 100_000).unwrap_err(), 5_000, "at most 5 s");
    }

    #[test]
    fn a_first_refusal_waits_for_the_window_to_turn_over_and_a_repeat_waits_long() {
        let (mut s, mut now) = limiting_at(1_000);
        for _ in 0..10 {
            (0..1_000).for_each(|_| s.served());
            now += 100;
            s.observe(now, 10.0, 1_000);
        }
        // 10,000 outcomes a second; the window of 500 turns over in 50 ms.
        let w = s.window().unwrap();
        assert_eq!(w, 500.0);
        assert_eq!(s.admit(now, 500, 500, false, None, || 100), Err(50), "never refused: the turnover");
        assert_eq!(s.admit(now, 500, 500, false, Some(now - 2_500), || 100), Err(50), "refused long ago: the same");
        // Refused again within FLOOD_MEMORY_MS: flooding, the long wait
        // (3 sessions refused this second: 3 / (2 % of 10,000/s) = 15 ms, at least 100).
        assert_eq!(s.admit(now, 500, 500, false, Some(now - 50), || 100), Err(100));
        for _ in 0..200 {
            let _ = s.admit(now, 500, 500, false, None, || 200);
        }
        let long = s.admit(now, 500, 500, false, Some(now - 50), || 200).unwrap_err();
        // With the 3 above and this one, 204 refused this second, though
        // only 200 have work in the system: all count.
        assert!((1_020..=1_021).contains(&long), "204 sessions refused: 204 / (2 % of 10,000/s): {long}");
        // The turnover's bounds.
        s.window = Some(10.0);
        assert_eq!(s.admit(now, 10, 10, false, None, || 1), Err(CpuShedder::FIRST_WAIT_MS.0));
        s.window = Some(100_000.0);
        assert_eq!(s.admit(now, 100_000, 100_000, false, None, || 1), Err(CpuShedder::FIRST_WAIT_MS.1));
    }

    #[test]
    fn a_slot_freed_for_a_refused_session_is_held_for_its_replacement_and_lapses_unused() {
        let (mut s, mut now) = limiting_at(1_000);
        assert_eq!(s.window(), Some(500.0));
        // A flood (refused lately, nothing of its own left) at a full window: refused.
        assert!(s.admit(now, 500, 0, true, Some(now - 10), || 1_000).is_err());
        // Its last outcome leaves 499 in the system: the slot is held for it.
        let until = s.reserve(now, 499).expect("held");
        assert_eq!(until, now + CpuShedder::RESERVE_MS);
        // Held, it is no room for anyone else.
        assert!(s.admit(now + 1, 499, 0, true, Some(now - 10), || 1_000).is_err(), "the held slot is not room");
        // The replacement takes it.
        assert!(s.take_reserved(now + 5));
        assert!(!s.take_reserved(now + 5), "one slot, taken once");
        // With nothing held, the last slot is room again.
        assert!(s.admit(now + 6, 499, 0, true, Some(now - 10), || 1_000).is_ok());
        // A window over-full holds nothing: that is how it shrinks.
        assert_eq!(s.reserve(now + 7, 500), None);
        // Held and never taken, it lapses and is room again.
        now += 10;
        assert!(s.reserve(now, 400).is_some());
        assert!(s.admit(now + CpuShedder::RESERVE_MS - 1, 499, 0, true, Some(now - 10), || 1_000).is_err());
        assert!(s.admit(now + CpuShedder::RESERVE_MS, 499, 0, true, Some(now - 10), || 1_000).is_ok());
        assert!(!s.take_reserved(now + CpuShedder::RESERVE_MS));
        assert_eq!(s.lapsed(), 1);
        // Not limiting: nothing is held (everyone is admitted anyway).
        let mut off = CpuShedder::new(20.0, 5.0);
        assert_eq!(off.reserve(now, 0), None);
        assert!(!off.take_reserved(now));
    }
}
