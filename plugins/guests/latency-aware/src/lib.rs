//! `latency-aware`: the node expected to finish soonest: its smoothed
//! processing time per second of audio (observed by the dispatcher), scaled
//! up by how busy it is. Nodes never observed are tried first, so every node
//! gets measured.
//!
//! Configuration: `busy_weight = 1.0` (how much a full node's time grows).

use tolk_plugin_sdk::scheduler::{Candidate, Job, PluginInfo, Policy};

struct LatencyAware {
    busy_weight: f32,
}

impl LatencyAware {
    fn expected(&self, c: &Candidate) -> f32 {
        if c.ms_per_audio_s < 0.0 {
            return -1.0; // unknown: explore first
        }
        c.ms_per_audio_s * (1.0 + self.busy_weight * c.running as f32 / c.capacity.max(1) as f32)
    }
}

impl Policy for LatencyAware {
    fn info() -> PluginInfo {
        PluginInfo { name: "latency-aware".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: &str) -> Result<Self, String> {
        let mut busy_weight = 1.0;
        for line in config.lines() {
            if let Some(v) = line.trim().strip_prefix("busy_weight").map(|r| r.trim_start_matches([' ', '='])) {
                busy_weight = v.trim().parse().map_err(|_| format!("busy_weight: not a number: {v}"))?;
            }
        }
        Ok(LatencyAware { busy_weight })
    }

    fn pick(&mut self, _job: &Job, candidates: &[Candidate]) -> Option<u32> {
        let (i, _) = candidates
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| self.expected(a).total_cmp(&self.expected(b)).then(a.running.cmp(&b.running)).then(a.node_key.cmp(&b.node_key)))?;
        Some(i as u32)
    }
}

tolk_plugin_sdk::export_policy!(LatencyAware);
