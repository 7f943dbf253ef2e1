//! Scheduling policies: given a job and its *eligible* candidates (the core
//! computed eligibility), pick one. A policy only orders; it can never route
//! a job where it must not go, because the core only offers eligible nodes
//! and checks the answer.

/// What a policy knows about the job it places.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo<'a> {
    pub session_id: &'a str,
    pub utterance_index: u64,
    /// Estimated audio length (0 when unknown, e.g. opus).
    pub audio_ms: u64,
    /// Attempts made so far (0 for the first).
    pub attempt: u32,
    /// For a session paired with a node (its one candidate).
    pub paired: bool,
}

/// One eligible node with free capacity, as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub node_id: &'a str,
    /// A number for the node, stable while the dispatcher runs.
    pub node_key: u32,
    /// Jobs this dispatcher has running on the node.
    pub running: u32,
    /// The most jobs the node may run at once.
    pub capacity: u32,
    /// Last reported CPU load, 0–100.
    pub cpu_percent: f64,
    /// The node served this session's previous job.
    pub is_last_node: bool,
    /// Smoothed processing time per second of audio, when observed.
    pub ms_per_audio_s: Option<f64>,
    /// Failures (errors, timeouts, losses) observed on this node recently.
    pub recent_failures: u32,
    /// Canaries passed, smoothed: (passed + 1) / (passed + failed + 2);
    /// 0.5 for a node never checked.
    pub trust_score: f64,
    /// Trusted because it passed canaries (not only by configuration).
    pub verified: bool,
    /// Held by another dispatcher of the cluster: a job there crosses NATS
    /// twice (about 3× the dispatchers' CPU of a local one).
    pub remote: bool,
}

/// A scheduling policy. Implementations must be fast (called under the core's
/// lock for every job) and deterministic given their inputs.
pub trait Policy: Send {
    /// A name for logs and metrics.
    fn name(&self) -> &str;

    /// The index into `candidates` to run `job` on (`candidates` is never
    /// empty). `None` or an index out of range makes the core fall back to
    /// the built-in policy for this decision.
    fn pick(&mut self, job: &JobInfo<'_>, candidates: &[Candidate<'_>]) -> Option<usize>;
}

/// The built-in policy: keep a session on the node it used last while that
/// node is about as free as the freest one (so its warm caches are reused),
/// else the least-loaded node (running/capacity, then CPU, then failures).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl LeastLoaded {
    fn load(c: &Candidate<'_>) -> f64 {
        f64::from(c.running) / f64::from(c.capacity.max(1))
    }

    /// The decision, as a plain function so fallbacks can call it too.
    pub fn choose(candidates: &[Candidate<'_>]) -> Option<usize> {
        let least = candidates.iter().enumerate().min_by(|(_, a), (_, b)| {
            Self::load(a)
                .total_cmp(&Self::load(b))
                // Among equally loaded nodes, one connected here.
                .then(a.remote.cmp(&b.remote))
                .then(a.cpu_percent.total_cmp(&b.cpu_percent))
                .then(a.recent_failures.cmp(&b.recent_failures))
                .then(a.node_id.cmp(b.node_id))
        })?;
        let sticky = candidates.iter().position(|c| c.is_last_node);
        match sticky {
            // One more running job than the freest node is still "about as free".
            Some(i) if candidates[i].running <= least.1.running + 1 => Some(i),
            _ => Some(least.0),
        }
    }
}

impl Policy for LeastLoaded {
    fn name(&self) -> &str {
        "builtin-least-loaded"
    }

    fn pick(&mut self, _job: &JobInfo<'_>, candidates: &[Candidate<'_>]) -> Option<usize> {
        Self::choose(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(node_id: &str, running: u32, cpu: f64, last: bool) -> Candidate<'_> {
        Candidate {
            node_id,
            node_key: 0,
            running,
            capacity: 4,
            cpu_percent: cpu,
            is_last_node: last,
            ms_per_audio_s: None,
            recent_failures: 0,
            trust_score: 0.5,
            verified: false,
            remote: false,
        }
    }

    #[test]
    fn among_equally_loaded_nodes_a_local_one_first() {
        let remote = Candidate { remote: true, cpu_percent: 1.0, ..cand("a", 1, 1.0, false) };
        assert_eq!(LeastLoaded::choose(&[remote, cand("b", 1, 90.0, false)]), Some(1), "equal load: the local node");
        let remote = Candidate { remote: true, ..cand("a", 0, 1.0, false) };
        assert_eq!(LeastLoaded::choose(&[remote, cand("b", 2, 1.0, false)]), Some(0), "a freer remote node still wins");
    }

    #[test]
    fn least_loaded_then_cpu() {
        let c = [cand("a", 2, 10.0, false), cand("b", 1, 90.0, false), cand("c", 1, 20.0, false)];
        assert_eq!(LeastLoaded::choose(&c), Some(2));
    }

    #[test]
    fn sticky_while_about_as_free() {
        let c = [cand("a", 0, 0.0, false), cand("b", 1, 50.0, true)];
        assert_eq!(LeastLoaded::choose(&c), Some(1));
        let c = [cand("a", 0, 0.0, false), cand("b", 2, 50.0, true)];
        assert_eq!(LeastLoaded::choose(&c), Some(0));
    }

    #[test]
    fn empty_has_no_choice() {
        assert_eq!(LeastLoaded::choose(&[]), None);
    }
}
