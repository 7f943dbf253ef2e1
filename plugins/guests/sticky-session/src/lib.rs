//! `sticky-session`: a session stays on the node that served it last while
//! that node has room; otherwise (first job, or that node is gone) the
//! session is mapped to a node by rendezvous hashing, so the same session
//! keeps landing on the same node and sessions spread evenly.

use tolk_plugin_sdk::scheduler_v0_1::{Candidate, Job, PluginInfo, Policy};

struct Sticky;

/// A 64-bit mix (splitmix64) of the session and node keys.
fn weight(session: u64, node: u32) -> u64 {
    let mut z = session ^ (u64::from(node)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Policy for Sticky {
    fn info() -> PluginInfo {
        PluginInfo { name: "sticky-session".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(_config: &str) -> Result<Self, String> {
        Ok(Sticky)
    }

    fn pick(&mut self, job: &Job, candidates: &[Candidate]) -> Option<u32> {
        if let Some(i) = candidates.iter().position(|c| c.is_last_node) {
            return Some(i as u32);
        }
        let (i, _) = candidates.iter().enumerate().max_by_key(|(_, c)| weight(job.session_key, c.node_key))?;
        Some(i as u32)
    }
}

tolk_plugin_sdk::export_policy_v0_1!(Sticky);
