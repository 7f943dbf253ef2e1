//! Prometheus export. The core counts in plain data ([`CoreStats`]); the
//! shell copies a snapshot at each scrape and [`CoreCollector`] encodes it.
//! The shell's own measurements (slow peers, time under the core's lock,
//! time inside the dispatcher) are ordinary prometheus-client metrics.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::stats::{CoreStats, Histogram as CoreHistogram};

/// The shell's own metrics. Cheap to clone (handles share state).
#[derive(Debug, Clone)]
pub struct ShellMetrics {
    /// Connections dropped for not reading.
    pub slow_peers: Counter,
    /// Seconds the core's lock was held, and waited for.
    pub lock_held_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub lock_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Frame read → the frames it caused written to their sockets.
    pub dispatch_seconds: Histogram,
    /// The runtime's worker threads' busy share over the last 100 ms (what
    /// the CPU shedder reads).
    pub worker_busy: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    /// How long a task that yielded waited to run again, ms (the CPU shedder's input).
    pub scheduling_lag: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for ShellMetrics {
    fn default() -> Self {
        Self {
            slow_peers: Counter::default(),
            lock_held_seconds: Counter::default(),
            lock_wait_seconds: Counter::default(),
            // 10 µs to ~160 ms, √2 apart (a p99 read from buckets is within 41 %).
            dispatch_seconds: Histogram::new(exponential_buckets(0.000_01, std::f64::consts::SQRT_2, 29)),
            worker_busy: Default::default(),
            scheduling_lag: Default::default(),
        }
    }
}

/// The latest core snapshot, shared by the shell (writer) and the collector.
pub type StatsSlot = Arc<Mutex<CoreStats>>;

/// Registers the shell's metrics and the core's collector under `tolk_`.
pub fn register(registry: &mut Registry, shell: &ShellMetrics, slot: StatsSlot) {
    let r = registry.sub_registry_with_prefix("tolk");
    r.register("slow_peers", "Connections dropped for not reading", shell.slow_peers.clone());
    r.register("core_lock_held_seconds", "Time the decision core's lock was held", shell.lock_held_seconds.clone());
    r.register("core_lock_wait_seconds", "Time spent waiting for the decision core's lock", shell.lock_wait_seconds.clone());
    r.register(
        "dispatch_seconds",
        "Time inside the dispatcher: a frame read until the frames it caused are written",
        shell.dispatch_seconds.clone(),
    );
    r.register(
        "scheduling_lag_ms",
        "How long a task that yielded waited to run again, over the last reading",
        shell.scheduling_lag.clone(),
    );
    r.register("worker_busy_share", "Share of the last 100 ms the runtime's worker threads ran (not parked)", shell.worker_busy.clone());
    r.register_collector(Box::new(CoreCollector { slot }));
}

/// Encodes the core's [`CoreStats`] at scrape time.
#[derive(Debug)]
pub struct CoreCollector {
    slot: StatsSlot,
}

pub(crate) fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub(crate) fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A labelled family of counters (`MetricType::Counter`) or gauges.
fn labelled<'a>(
    e: &mut DescriptorEncoder<'_>,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (k, v) in values {
        let labels = [(label, k)];
        let mut f = m.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => f.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))?,
            _ => f.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
        }
    }
    Ok(())
}

fn family<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    labelled(e, MetricType::Counter, name, help, label, values)
}

fn gauge_family<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    labelled(e, MetricType::Gauge, name, help, label, values)
}

fn histogram(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, h: &CoreHistogram) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // The encoder cumulates: it wants the count of each bucket alone.
    let buckets: Vec<(f64, u64)> =
        h.counts.iter().enumerate().map(|(i, c)| (h.bounds.get(i).copied().unwrap_or(f64::INFINITY), *c)).collect();
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Collector for CoreCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gauge(&mut e, "sessions_active", "Open sessions (connected or awaiting resume)", s.sessions_active)?;
        gauge(&mut e, "nodes_live", "Connected nodes", s.nodes_live)?;
        gauge(&mut e, "queue_depth", "Jobs waiting for a node with free capacity", s.queue_depth)?;
        gauge(&mut e, "jobs_running", "Jobs running on nodes", s.jobs_running)?;
        counter(&mut e, "sessions_opened", "Sessions created", s.sessions_opened)?;
        counter(&mut e, "sessions_resumed", "Sessions resumed after a reconnect", s.sessions_resumed)?;
        counter(&mut e, "sessions_expired", "Sessions expired (idle or not resumed in time)", s.sessions_expired)?;
        counter(&mut e, "nodes_dead", "Nodes declared dead for missed heartbeats", s.nodes_dead)?;
        counter(&mut e, "node_errors", "node_error messages received", s.node_errors)?;
        counter(
            &mut e,
            "models_disabled_by_errors",
            "Models taken out of routing because their node reported the engine broken",
            s.models_disabled_by_errors,
        )?;
        counter(&mut e, "utterances", "Utterances accepted", s.utterances)?;
        counter(&mut e, "duplicate_utterances", "Re-sent utterances ignored", s.duplicates)?;
        family(
            &mut e,
            "outcomes",
            "Utterance outcomes by result or error code",
            "outcome",
            s.outcomes.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        family(
            &mut e,
            "refusals",
            "Utterances refused before acceptance (re-send later), by code",
            "code",
            s.refusals.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        family(
            &mut e,
            "unavailable",
            "NODE_UNAVAILABLE outcomes by the reason most nodes had",
            "reason",
            s.unavailable_reasons.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        counter(&mut e, "jobs_assigned", "Job assignments sent to nodes (retries included)", s.jobs_assigned)?;
        counter(&mut e, "job_retries", "Jobs moved to another node", s.retries)?;
        counter(&mut e, "job_timeouts", "Jobs that missed their deadline on a node", s.job_timeouts)?;
        counter(&mut e, "rejected_job_results", "job_result frames for jobs the node does not hold", s.rejected_results)?;
        counter(&mut e, "policy_fallbacks", "Decisions the scheduling policy left to the built-in one", s.policy_fallbacks)?;
        counter(&mut e, "unauthorized", "Node registrations refused", s.unauthorized)?;
        counter(&mut e, "pairing_failures", "Wrong or expired pairing codes", s.pairing_failures)?;
        counter(&mut e, "pairing_rate_limited", "Pairing attempts refused for too many failures", s.pairing_rate_limited)?;
        family(&mut e, "bad_frames", "Frames refused as invalid, by endpoint", "endpoint", s.bad_frames.iter().map(|(k, v)| (*k, *v)))?;
        counter(&mut e, "detection_timeouts", "Results sent without detector features because detection was late", s.detection_timeouts)?;
        counter(&mut e, "cpu_shed", "Utterances refused because the dispatcher's own CPU was the limit", s.cpu_shed)?;
        counter(
            &mut e,
            "cpu_replacements",
            "Utterances admitted into a slot held for them while shedding (a refused phone's next send after an outcome)",
            s.cpu_replacements,
        )?;
        counter(&mut e, "cpu_reservations_lapsed", "Slots held for a replacement that lapsed unused", s.cpu_reservations_lapsed)?;
        gauge(
            &mut e,
            "shedding",
            "1 while utterances in the system are held to a window (the dispatcher's CPU is the limit)",
            u64::from(s.shed_window.is_some()),
        )?;
        gauge(
            &mut e,
            "shed_window",
            "Utterances the system may hold while shedding (0: not shedding)",
            s.shed_window.map_or(0, |w| w as u64),
        )?;
        counter(&mut e, "canaries_sent", "Canary jobs sent to nodes", s.canaries_sent)?;
        counter(&mut e, "canaries_opus", "Canary jobs sent as Ogg Opus (as phones send), of those sent", s.canaries_opus)?;
        family(
            &mut e,
            "canaries",
            "Canary verdicts: pass, fail, inconclusive",
            "outcome",
            s.canary_outcomes.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        family(&mut e, "canary_failures", "Failed canaries by reason", "reason", s.canary_failures.iter().map(|(k, v)| (*k, *v)))?;
        counter(&mut e, "nodes_quarantined", "Times a node was quarantined for failing canaries", s.nodes_quarantined)?;
        gauge_family(&mut e, "nodes_trust", "Connected nodes by trust state", "state", s.nodes_by_trust.iter().map(|(k, v)| (*k, *v)))?;
        // Only in cluster mode: a single dispatcher has no cluster to report.
        if s.in_cluster {
            gauge(&mut e, "cluster_peers", "Other dispatchers of the cluster heard from", s.peers)?;
            gauge(&mut e, "cluster_nodes_remote", "Live nodes held by other dispatchers of the cluster", s.nodes_remote)?;
            gauge(&mut e, "cluster_jobs_proxied_running", "Jobs running on nodes here for other dispatchers", s.jobs_proxied_running)?;
            counter(&mut e, "cluster_jobs_forwarded", "Jobs sent to nodes held by other dispatchers", s.jobs_forwarded)?;
            counter(&mut e, "cluster_forwarded_results", "Answers to forwarded jobs received", s.forwarded_results)?;
            counter(&mut e, "cluster_jobs_proxied", "Jobs run here for other dispatchers", s.jobs_proxied)?;
            counter(&mut e, "cluster_proxied_results", "Answers to jobs run here passed back to their dispatcher", s.proxied_results)?;
            counter(&mut e, "cluster_peer_jobs_refused", "Jobs from other dispatchers refused (node busy or gone)", s.peer_jobs_refused)?;
            counter(&mut e, "cluster_peer_messages_refused", "Messages from other dispatchers refused", s.peer_messages_refused)?;
            counter(&mut e, "cluster_sessions_restored", "Sessions rebuilt here from the cluster's store on resume", s.sessions_restored)?;
            counter(&mut e, "cluster_sessions_moved_away", "Sessions that resumed on another dispatcher", s.sessions_moved_away)?;
            counter(&mut e, "cluster_session_lookups_missed", "Resumes the cluster's store knew nothing of", s.session_lookups_missed)?;
        }
        histogram(&mut e, "job_seconds", "Time from job assignment to its result", &s.job_seconds)?;
        histogram(&mut e, "utterance_seconds", "Time from utterance accepted to its outcome", &s.utterance_seconds)?;
        Ok(())
    }
}
