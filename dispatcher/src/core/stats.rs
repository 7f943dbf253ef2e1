//! What the core counted, as plain data (quinn-proto's `stats.rs` style): the
//! core links no metrics library; the shell reads [`CoreStats`] and exports it.

use std::collections::BTreeMap;

/// A histogram with fixed bucket bounds (upper bounds, seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bound of each bucket; the last bucket is everything above.
    pub bounds: Vec<f64>,
    /// Observations per bucket (`bounds.len() + 1` entries, not cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// `n` exponential buckets from `start`, each `factor` wider.
    pub fn exponential(start: f64, factor: f64, n: usize) -> Self {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        Self { counts: vec![0; bounds.len() + 1], bounds, sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c;
                (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total)
            })
            .collect()
    }
}

/// Everything the core counts. Counters only grow; gauges are read when
/// [`crate::core::Core::stats`] is called.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreStats {
    // gauges
    pub sessions_active: u64,
    pub nodes_live: u64,
    pub queue_depth: u64,
    pub jobs_running: u64,
    /// While the dispatcher's own CPU is the limit: the window utterances
    /// in the system are held to (`admission::CpuShedder`).
    pub shed_window: Option<f64>,
    /// Connected nodes by trust state.
    pub nodes_by_trust: BTreeMap<&'static str, u64>,
    /// In a cluster (the cluster's counters mean something).
    pub in_cluster: bool,
    /// Cluster: other dispatchers' live nodes, peers heard from, jobs run
    /// here for other dispatchers now.
    pub nodes_remote: u64,
    pub peers: u64,
    pub jobs_proxied_running: u64,
    // counters
    pub sessions_opened: u64,
    pub sessions_resumed: u64,
    pub sessions_expired: u64,
    pub nodes_dead: u64,
    pub node_errors: u64,
    /// Models switched off because their node reported the engine broken.
    pub models_disabled_by_errors: u64,
    pub utterances: u64,
    pub duplicates: u64,
    /// Outcomes by `result` or error code.
    pub outcomes: BTreeMap<String, u64>,
    /// Utterances refused before acceptance (no outcome follows), by code.
    pub refusals: BTreeMap<String, u64>,
    /// `NODE_UNAVAILABLE` outcomes by the reason the most nodes had.
    pub unavailable_reasons: BTreeMap<String, u64>,
    pub jobs_assigned: u64,
    pub retries: u64,
    pub job_timeouts: u64,
    pub rejected_results: u64,
    pub policy_fallbacks: u64,
    pub unauthorized: u64,
    pub pairing_failures: u64,
    pub pairing_rate_limited: u64,
    /// Bad frames by endpoint (`session`, `node`, `unknown`).
    pub bad_frames: BTreeMap<&'static str, u64>,
    pub detection_timeouts: u64,
    /// Utterances refused because the dispatcher's own CPU was the limit.
    pub cpu_shed: u64,
    /// Utterances admitted into a slot the CPU shedder held for them (a
    /// refused session's replacement for an outcome).
    pub cpu_replacements: u64,
    /// Slots held for a replacement that lapsed unused.
    pub cpu_reservations_lapsed: u64,
    pub canaries_sent: u64,
    /// Of those, sent as Opus.
    pub canaries_opus: u64,
    /// Canary verdicts: `pass`, `fail`, `inconclusive`.
    pub canary_outcomes: BTreeMap<String, u64>,
    /// Failed canaries by reason (`text`, `translation`, `too_fast`, `no_speech`).
    pub canary_failures: BTreeMap<&'static str, u64>,
    /// Times a node was quarantined.
    pub nodes_quarantined: u64,
    /// Cluster: jobs sent to another dispatcher's node, their answers
    /// received; jobs run here for another dispatcher, their answers passed
    /// back; jobs refused for other dispatchers; peer messages refused.
    pub jobs_forwarded: u64,
    pub forwarded_results: u64,
    pub jobs_proxied: u64,
    pub proxied_results: u64,
    pub peer_jobs_refused: u64,
    pub peer_messages_refused: u64,
    /// Sessions rebuilt here from the cluster's store, sessions that moved
    /// to another dispatcher, look-ups that found nothing.
    pub sessions_restored: u64,
    pub sessions_moved_away: u64,
    pub session_lookups_missed: u64,
    /// Job assignment → result, seconds.
    pub job_seconds: Histogram,
    /// Utterance accepted → outcome, seconds.
    pub utterance_seconds: Histogram,
}

impl Default for CoreStats {
    fn default() -> Self {
        Self {
            sessions_active: 0,
            nodes_live: 0,
            queue_depth: 0,
            jobs_running: 0,
            nodes_by_trust: BTreeMap::new(),
            in_cluster: false,
            nodes_remote: 0,
            peers: 0,
            jobs_proxied_running: 0,
            jobs_forwarded: 0,
            forwarded_results: 0,
            jobs_proxied: 0,
            proxied_results: 0,
            peer_jobs_refused: 0,
            peer_messages_refused: 0,
            sessions_restored: 0,
            sessions_moved_away: 0,
            session_lookups_missed: 0,
            shed_window: None,
            sessions_opened: 0,
            sessions_resumed: 0,
            sessions_expired: 0,
            nodes_dead: 0,
            node_errors: 0,
            models_disabled_by_errors: 0,
            utterances: 0,
            duplicates: 0,
            outcomes: BTreeMap::new(),
            refusals: BTreeMap::new(),
            unavailable_reasons: BTreeMap::new(),
            jobs_assigned: 0,
            retries: 0,
            job_timeouts: 0,
            rejected_results: 0,
            policy_fallbacks: 0,
            unauthorized: 0,
            pairing_failures: 0,
            pairing_rate_limited: 0,
            bad_frames: BTreeMap::new(),
            detection_timeouts: 0,
            cpu_shed: 0,
            cpu_replacements: 0,
            cpu_reservations_lapsed: 0,
            canaries_sent: 0,
            canaries_opus: 0,
            canary_outcomes: BTreeMap::new(),
            canary_failures: BTreeMap::new(),
            nodes_quarantined: 0,
            // 1 ms to ~65 s.
            job_seconds: Histogram::exponential(0.001, 2.0, 17),
            utterance_seconds: Histogram::exponential(0.001, 2.0, 17),
        }
    }
}

impl CoreStats {
    pub(super) fn outcome(&mut self, label: &str) {
        bump(&mut self.outcomes, label);
    }

    pub(super) fn canary(&mut self, verdict: &str) {
        bump(&mut self.canary_outcomes, verdict);
    }

    pub(super) fn refusal(&mut self, code: &str) {
        bump(&mut self.refusals, code);
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(v) => *v += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds_and_cumulate() {
        let mut h = Histogram::exponential(1.0, 2.0, 3); // 1, 2, 4, +Inf
        for v in [0.5, 1.0, 1.5, 3.0, 100.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1, 1]);
        assert_eq!(h.cumulative(), vec![(1.0, 2), (2.0, 3), (4.0, 4), (f64::INFINITY, 5)]);
        assert_eq!((h.count, h.sum), (5, 106.0));
    }
}
