//! A deliberately hostile scheduling policy, for the dispatcher's sandbox
//! tests. Its configuration names the misbehaviour: `loop`, `alloc`, `trap`,
//! `panic`, `log-flood`, `bad-index`, or `first` (behaves: picks index 0).

use tolk_plugin_sdk::scheduler::{Candidate, Job, PluginInfo, Policy};

struct Hostile {
    mode: String,
}

impl Policy for Hostile {
    fn info() -> PluginInfo {
        PluginInfo { name: "hostile".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: &str) -> Result<Self, String> {
        let mode = config.trim().trim_start_matches("mode").trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned();
        Ok(Hostile { mode })
    }

    fn pick(&mut self, _job: &Job, candidates: &[Candidate]) -> Option<u32> {
        match self.mode.as_str() {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(3));
                }
            }
            "alloc" => {
                let v: Vec<u8> = vec![1; 1 << 30];
                Some(v[v.len() - 1] as u32)
            }
            "trap" => std::process::abort(),
            "panic" => panic!("hostile plugin panics"),
            "log-flood" => {
                for i in 0..1_000_000 {
                    tolk_plugin_sdk::log::info(&format!("flood line {i}"));
                }
                Some(0)
            }
            "bad-index" => Some(candidates.len() as u32 + 7),
            _ => Some(0),
        }
    }
}

tolk_plugin_sdk::export_policy!(Hostile);
