//! The core's timers: deadlines in one ordered set that the shell polls
//! ([`Timers::next`]) and fires. A timer checks its entity's current
//! deadline when it fires, so re-arming never needs a removal.

use std::collections::BTreeSet;

use super::{ConnId, Millis};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Handshake(ConnId),
    Session(String),
    Node(String),
    Job(String),
    /// A job run here for another dispatcher (cluster).
    Proxied(String),
    Sweep,
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    set: BTreeSet<(Millis, Timer)>,
}

impl Timers {
    pub(super) fn arm(&mut self, at: Millis, timer: Timer) {
        self.set.insert((at, timer));
    }

    pub(super) fn next(&self) -> Option<Millis> {
        self.set.first().map(|(at, _)| *at)
    }

    /// The earliest timer due at `now`, removed.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<Timer> {
        if self.set.first().is_some_and(|(at, _)| *at <= now) { self.set.pop_first().map(|(_, t)| t) } else { None }
    }

    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_time_order_and_only_when_due() {
        let mut t = Timers::default();
        t.arm(20, Timer::Sweep);
        t.arm(10, Timer::Job("j".into()));
        assert_eq!(t.next(), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(25), Some(Timer::Job("j".into())));
        assert_eq!(t.pop_due(25), Some(Timer::Sweep));
        assert_eq!((t.pop_due(25), t.len()), (None, 0));
    }
}
