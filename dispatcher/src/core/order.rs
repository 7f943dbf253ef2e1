//! The per-session reorder buffer: outcomes leave in `utterance_index` order,
//! and sent outcomes are kept until the client confirms them (resume).
//!
//! Indexes the client skipped never block: only *accepted* indexes are
//! ordered. An index at or below the last one sent cannot be ordered any more
//! and is refused as too late.

use std::collections::BTreeMap;

#[derive(Debug)]
enum Slot<T> {
    /// Accepted, no outcome yet: holds back every later index.
    Pending,
    /// Has an outcome, waiting for the ones before it.
    Ready(T),
    /// Sent; kept until the client confirms it.
    Sent(T),
}

/// What [`OrderBuffer::accept`] decided about an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// New: it will get exactly one outcome.
    Accepted,
    /// Already accepted (pending or done): process nothing.
    Duplicate,
    /// At or below the last index sent and unknown: cannot be ordered.
    TooLate,
}

/// Orders outcomes of type `T` (a serialized frame, cheap to clone).
#[derive(Debug)]
pub struct OrderBuffer<T> {
    slots: BTreeMap<u64, Slot<T>>,
    sent_upto: Option<u64>,
    max_retained: usize,
    max_retained_bytes: usize,
    /// Bytes of the sent outcomes held.
    retained_bytes: usize,
}

/// What an outcome weighs, for the retained-bytes budget.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for std::sync::Arc<str> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weight for &str {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl<T: Clone + Weight> OrderBuffer<T> {
    /// A buffer that keeps at most `max_retained` sent, unconfirmed outcomes
    /// (the oldest are dropped past that: a client that never confirms cannot
    /// grow it without bound).
    /// `max_retained_bytes` bounds them together too (the newest sent
    /// outcome is always kept).
    pub fn new(max_retained: usize, max_retained_bytes: usize) -> Self {
        Self { slots: BTreeMap::new(), sent_upto: None, max_retained, max_retained_bytes, retained_bytes: 0 }
    }

    /// Registers index `idx` as accepted.
    pub fn accept(&mut self, idx: u64) -> Accept {
        if self.slots.contains_key(&idx) {
            return Accept::Duplicate;
        }
        if self.sent_upto.is_some_and(|s| idx <= s) {
            return Accept::TooLate;
        }
        self.slots.insert(idx, Slot::Pending);
        Accept::Accepted
    }

    /// Takes back the acceptance of a pending index (the server refused it
    /// after all, e.g. its session is over its share): it will get no outcome
    /// here, and the client may send it again. False when it was not pending.
    pub fn withdraw(&mut self, idx: u64) -> bool {
        if matches!(self.slots.get(&idx), Some(Slot::Pending)) {
            self.slots.remove(&idx);
            return true;
        }
        false
    }

    /// Records the outcome of a pending index. Returns false (and changes
    /// nothing) when `idx` is not pending: an outcome is never replaced.
    pub fn complete(&mut self, idx: u64, outcome: T) -> bool {
        match self.slots.get_mut(&idx) {
            Some(slot @ Slot::Pending) => {
                *slot = Slot::Ready(outcome);
                true
            }
            _ => false,
        }
    }

    /// The next outcome to send, if the lowest unsent index has one. Call
    /// until `None`; each returned outcome is marked sent.
    pub fn pop_ready(&mut self) -> Option<(u64, T)> {
        let lower = self.sent_upto.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let (&idx, slot) = self.slots.range_mut((lower, std::ops::Bound::Unbounded)).next()?;
        let Slot::Ready(outcome) = slot else { return None };
        let outcome = outcome.clone();
        self.retained_bytes += outcome.weight();
        *slot = Slot::Sent(outcome.clone());
        self.sent_upto = Some(idx);
        self.trim_retained();
        Some((idx, outcome))
    }

    /// The client has every outcome up to `upto`: forget them. Returns the
    /// indexes of the sent outcomes forgotten (a cluster deletes their
    /// stored copies).
    pub fn confirm(&mut self, upto: u64) -> Vec<u64> {
        let upto = match self.sent_upto {
            Some(s) => upto.min(s),
            None => return Vec::new(),
        };
        let keep = if upto == u64::MAX { BTreeMap::new() } else { self.slots.split_off(&(upto + 1)) };
        let confirmed = std::mem::replace(&mut self.slots, keep);
        let mut forgotten = Vec::new();
        for (&idx, slot) in &confirmed {
            if let Slot::Sent(o) = slot {
                self.retained_bytes -= o.weight();
                forgotten.push(idx);
            }
        }
        forgotten
    }

    /// A buffer rebuilt on another dispatcher of a cluster from the sent,
    /// unconfirmed outcomes it stored: each as sent, so a resume re-sends
    /// the ones after the client's last and a re-sent utterance among them
    /// is a duplicate. Every index the old buffer had sent is at or below
    /// the highest stored one, so nothing later is refused as too late.
    pub fn restore_sent(&mut self, outcomes: impl IntoIterator<Item = (u64, T)>) {
        for (idx, o) in outcomes {
            if self.slots.contains_key(&idx) {
                continue;
            }
            self.retained_bytes += o.weight();
            self.slots.insert(idx, Slot::Sent(o));
            self.sent_upto = Some(self.sent_upto.map_or(idx, |s| s.max(idx)));
        }
        self.trim_retained();
    }

    /// Indexes of the sent outcomes held (what a cluster has stored).
    pub fn sent_indexes(&self) -> Vec<u64> {
        self.slots.iter().filter(|(_, s)| matches!(s, Slot::Sent(_))).map(|(&i, _)| i).collect()
    }

    /// For a resume: confirms `last` (the highest index whose outcome the
    /// client has), then returns every sent outcome after it, in order.
    pub fn resend_after(&mut self, last: Option<u64>) -> Vec<(u64, T)> {
        if let Some(last) = last {
            self.confirm(last);
        }
        self.slots
            .iter()
            .filter_map(|(&idx, slot)| match slot {
                Slot::Sent(o) if last.is_none_or(|l| idx > l) => Some((idx, o.clone())),
                _ => None,
            })
            .collect()
    }

    /// Accepted indexes that have no outcome yet.
    pub fn pending(&self) -> usize {
        self.slots.values().filter(|s| matches!(s, Slot::Pending)).count()
    }

    /// Accepted indexes whose outcome has not been sent (pending or ready).
    pub fn unsent(&self) -> usize {
        self.slots.values().filter(|s| !matches!(s, Slot::Sent(_))).count()
    }

    /// Entries held (pending, ready and sent).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `idx` is accepted and still waiting for its outcome.
    pub fn is_pending(&self, idx: u64) -> bool {
        matches!(self.slots.get(&idx), Some(Slot::Pending))
    }

    fn trim_retained(&mut self) {
        let mut sent = self.slots.values().filter(|s| matches!(s, Slot::Sent(_))).count();
        // Oldest first; the newest sent outcome always stays.
        while sent > 1 && (sent > self.max_retained || self.retained_bytes > self.max_retained_bytes) {
            let oldest = self.slots.iter().find(|(_, s)| matches!(s, Slot::Sent(_))).map(|(&i, _)| i);
            let Some(idx) = oldest else { break };
            if let Some(Slot::Sent(o)) = self.slots.remove(&idx) {
                self.retained_bytes -= o.weight();
            }
            sent -= 1;
        }
    }

    /// Bytes of sent outcomes held for a resume.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a script of steps and returns what was sent, in order.
    fn sent(buf: &mut OrderBuffer<&'static str>) -> Vec<u64> {
        std::iter::from_fn(|| buf.pop_ready()).map(|(i, _)| i).collect()
    }

    #[test]
    fn a_withdrawn_index_blocks_nothing_and_may_be_accepted_again() {
        let mut b = OrderBuffer::new(16, usize::MAX);
        b.accept(1);
        b.accept(2);
        assert!(b.withdraw(1) && !b.withdraw(1));
        assert!(b.complete(2, "b"));
        assert!(!b.complete(1, "a"), "no outcome for a withdrawn index");
        assert_eq!(sent(&mut b), vec![2]);
        let mut c: OrderBuffer<&str> = OrderBuffer::new(16, usize::MAX);
        c.accept(1);
        c.withdraw(1);
        assert_eq!(c.accept(1), Accept::Accepted, "re-sent later, it is new again");
    }

    #[test]
    fn outcomes_leave_in_index_order() {
        let mut b = OrderBuffer::new(16, usize::MAX);
        for i in [1, 2, 3] {
            assert_eq!(b.accept(i), Accept::Accepted);
        }
        assert!(b.complete(3, "c"));
        assert!(b.complete(2, "b"));
        assert_eq!(sent(&mut b), Vec::<u64>::new());
        assert!(b.complete(1, "a"));
        assert_eq!(sent(&mut b), vec![1, 2, 3]);
    }

    #[test]
    fn skipped_indexes_do_not_block() {
        let mut b = OrderBuffer::new(16, usize::MAX);
        b.accept(2);
        b.accept(7);
        b.complete(7, "x");
        assert_eq!(sent(&mut b), Vec::<u64>::new());
        b.complete(2, "y");
        assert_eq!(sent(&mut b), vec![2, 7]);
    }

    #[test]
    fn duplicates_and_late_indexes() {
        let mut b = OrderBuffer::new(16, usize::MAX);
        b.accept(5);
        assert_eq!(b.accept(5), Accept::Duplicate);
        b.complete(5, "a");
        assert!(!b.complete(5, "again"), "an outcome is never replaced");
        assert_eq!(sent(&mut b), vec![5]);
        assert_eq!(b.accept(5), Accept::Duplicate);
        assert_eq!(b.accept(3), Accept::TooLate);
        assert_eq!(b.accept(6), Accept::Accepted);
    }

    #[test]
    fn resume_resends_what_was_not_confirmed() {
        let mut b = OrderBuffer::new(16, usize::MAX);
        for i in 0..5 {
            b.accept(i);
            b.complete(i, "o");
        }
        assert_eq!(sent(&mut b), vec![0, 1, 2, 3, 4]);
        let again: Vec<u64> = b.resend_after(Some(2)).into_iter().map(|(i, _)| i).collect();
        assert_eq!(again, vec![3, 4]);
        assert_eq!(b.len(), 2, "0..=2 confirmed and dropped");
        let all: Vec<u64> = b.resend_after(None).into_iter().map(|(i, _)| i).collect();
        assert_eq!(all, vec![3, 4]);
        // Confirming more than was sent confirms only what was sent.
        b.accept(9);
        b.confirm(100);
        assert!(b.is_pending(9));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn retained_outcomes_are_bounded() {
        let mut b = OrderBuffer::new(3, usize::MAX);
        for i in 0..10 {
            b.accept(i);
            b.complete(i, "o");
            b.pop_ready();
        }
        assert_eq!(b.len(), 3);
        let kept: Vec<u64> = b.resend_after(None).into_iter().map(|(i, _)| i).collect();
        assert_eq!(kept, vec![7, 8, 9]);
    }

    #[test]
    fn retained_bytes_are_bounded_too() {
        let mut b = OrderBuffer::new(100, 10);
        for i in 0..5 {
            b.accept(i);
            b.complete(i, "1234");
            b.pop_ready();
        }
        // 4 bytes each, 10 allowed: the two newest stay.
        let kept: Vec<u64> = b.resend_after(None).into_iter().map(|(i, _)| i).collect();
        assert_eq!(kept, vec![3, 4]);
        assert_eq!(b.retained_bytes(), 8);
        b.confirm(4);
        assert_eq!(b.retained_bytes(), 0);
        // One outcome larger than the budget is still kept: the newest always is.
        b.accept(5);
        b.complete(5, "far more than ten bytes");
        b.pop_ready();
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn confirm_max_index() {
        let mut b = OrderBuffer::new(3, usize::MAX);
        b.accept(u64::MAX);
        b.complete(u64::MAX, "o");
        b.pop_ready();
        b.confirm(u64::MAX);
        assert!(b.is_empty());
    }
}
