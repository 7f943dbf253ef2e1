//! Prometheus metrics. The core updates them (plain in-memory counters, no
//! I/O); the shell registers them and renders `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::Endpoint;

type Labels = Vec<(String, String)>;

/// Every metric of the dispatcher. Cheap to clone (handles share state).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub sessions_active: Gauge,
    pub sessions_opened: Counter,
    pub sessions_resumed: Counter,
    pub sessions_expired: Counter,
    pub nodes_live: Gauge,
    pub nodes_dead: Counter,
    pub node_errors: Counter,
    pub utterances: Counter,
    pub duplicates: Counter,
    /// Outcomes by `outcome` label: `result` or the error code.
    pub outcomes: Family<Labels, Counter>,
    pub jobs_assigned: Counter,
    pub retries: Counter,
    pub job_timeouts: Counter,
    pub rejected_results: Counter,
    pub queue_depth: Gauge,
    pub policy_fallbacks: Counter,
    pub unauthorized: Counter,
    pub pairing_failures: Counter,
    pub pairing_rate_limited: Counter,
    pub bad_frames: Family<Labels, Counter>,
    pub slow_peers: Counter,
    pub detection_timeouts: Counter,
    /// Job assignment → result, seconds.
    pub job_seconds: Histogram,
    /// Utterance accepted → outcome, seconds.
    pub utterance_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sessions_active: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_resumed: Counter::default(),
            sessions_expired: Counter::default(),
            nodes_live: Gauge::default(),
            nodes_dead: Counter::default(),
            node_errors: Counter::default(),
            utterances: Counter::default(),
            duplicates: Counter::default(),
            outcomes: Family::default(),
            jobs_assigned: Counter::default(),
            retries: Counter::default(),
            job_timeouts: Counter::default(),
            rejected_results: Counter::default(),
            queue_depth: Gauge::default(),
            policy_fallbacks: Counter::default(),
            unauthorized: Counter::default(),
            pairing_failures: Counter::default(),
            pairing_rate_limited: Counter::default(),
            bad_frames: Family::default(),
            slow_peers: Counter::default(),
            detection_timeouts: Counter::default(),
            // 1 ms to ~65 s.
            job_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            utterance_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl Metrics {
    pub(crate) fn bad_frame(&self, endpoint: Option<Endpoint>) {
        let name = match endpoint {
            Some(Endpoint::Session) => "session",
            Some(Endpoint::Node) => "node",
            None => "unknown",
        };
        self.bad_frames.get_or_create(&vec![("endpoint".to_owned(), name.to_owned())]).inc();
    }

    /// Registers every metric under the `tolk` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tolk");
        r.register("sessions_active", "Open sessions (connected or awaiting resume)", self.sessions_active.clone());
        r.register("sessions_opened", "Sessions created", self.sessions_opened.clone());
        r.register("sessions_resumed", "Sessions resumed after a reconnect", self.sessions_resumed.clone());
        r.register("sessions_expired", "Sessions expired (idle or not resumed in time)", self.sessions_expired.clone());
        r.register("nodes_live", "Connected nodes", self.nodes_live.clone());
        r.register("nodes_dead", "Nodes declared dead for missed heartbeats", self.nodes_dead.clone());
        r.register("node_errors", "node_error messages received", self.node_errors.clone());
        r.register("utterances", "Utterances accepted", self.utterances.clone());
        r.register("duplicate_utterances", "Re-sent utterances ignored", self.duplicates.clone());
        r.register("outcomes", "Utterance outcomes by result or error code", self.outcomes.clone());
        r.register("jobs_assigned", "Job assignments sent to nodes (retries included)", self.jobs_assigned.clone());
        r.register("job_retries", "Jobs moved to another node", self.retries.clone());
        r.register("job_timeouts", "Jobs that missed their deadline on a node", self.job_timeouts.clone());
        r.register("rejected_job_results", "job_result frames for jobs the node does not hold", self.rejected_results.clone());
        r.register("queue_depth", "Jobs waiting for a node with free capacity", self.queue_depth.clone());
        r.register("policy_fallbacks", "Decisions the scheduling policy left to the built-in one", self.policy_fallbacks.clone());
        r.register("unauthorized", "Node registrations refused", self.unauthorized.clone());
        r.register("pairing_failures", "Wrong or expired pairing codes", self.pairing_failures.clone());
        r.register("pairing_rate_limited", "Pairing attempts refused for too many failures", self.pairing_rate_limited.clone());
        r.register("bad_frames", "Frames refused as invalid, by endpoint", self.bad_frames.clone());
        r.register("slow_peers", "Connections dropped for not reading", self.slow_peers.clone());
        r.register(
            "detection_timeouts",
            "Results sent without detector features because detection was late",
            self.detection_timeouts.clone(),
        );
        r.register("job_seconds", "Time from job assignment to its result", self.job_seconds.clone());
        r.register("utterance_seconds", "Time from utterance accepted to its outcome", self.utterance_seconds.clone());
    }
}
