//! `round-robin`: takes turns over the nodes, by node key: the next
//! candidate after the one chosen last, wrapping around.

use tolk_plugin_sdk::scheduler_v0_1::{Candidate, Job, PluginInfo, Policy};

struct RoundRobin {
    last: Option<u32>,
}

impl Policy for RoundRobin {
    fn info() -> PluginInfo {
        PluginInfo { name: "round-robin".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(_config: &str) -> Result<Self, String> {
        Ok(RoundRobin { last: None })
    }

    fn pick(&mut self, _job: &Job, candidates: &[Candidate]) -> Option<u32> {
        let after_last = |c: &&Candidate| self.last.is_none_or(|l| c.node_key > l);
        let next = candidates.iter().filter(after_last).min_by_key(|c| c.node_key);
        let chosen = next.or_else(|| candidates.iter().min_by_key(|c| c.node_key))?;
        self.last = Some(chosen.node_key);
        candidates.iter().position(|c| c.node_key == chosen.node_key).map(|i| i as u32)
    }
}

tolk_plugin_sdk::export_policy_v0_1!(RoundRobin);
