//! `least-loaded`: the node with the lowest share of its capacity in use;
//! ties go to the better-proven node (trust score: canaries passed, smoothed;
//! `tolk:plugin@0.2.0`), then lower CPU, then fewer recent failures, then the
//! lower node key.

use tolk_plugin_sdk::scheduler::{Candidate, Job, PluginInfo, Policy};

struct LeastLoaded;

fn load(c: &Candidate) -> f32 {
    c.running as f32 / c.capacity.max(1) as f32
}

impl Policy for LeastLoaded {
    fn info() -> PluginInfo {
        PluginInfo { name: "least-loaded".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(_config: &str) -> Result<Self, String> {
        Ok(LeastLoaded)
    }

    fn pick(&mut self, _job: &Job, candidates: &[Candidate]) -> Option<u32> {
        let (i, _) = candidates.iter().enumerate().min_by(|(_, a), (_, b)| {
            load(a)
                .total_cmp(&load(b))
                .then(b.trust_score.total_cmp(&a.trust_score))
                .then(a.cpu_percent.total_cmp(&b.cpu_percent))
                .then(a.recent_failures.cmp(&b.recent_failures))
                .then(a.node_key.cmp(&b.node_key))
        })?;
        Some(i as u32)
    }
}

tolk_plugin_sdk::export_policy!(LeastLoaded);
