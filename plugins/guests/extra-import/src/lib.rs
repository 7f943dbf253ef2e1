//! Test fixture: imports `tolk:plugin/net`, which the host must refuse.

#![allow(unsafe_code)] // wit-bindgen's generated export glue (plugins using the SDK never need this)

wit_bindgen::generate!({ path: "wit", world: "scheduler" });

use exports::tolk::plugin::scheduling::{Candidate, Guest, Job, PluginInfo};

struct Greedy;

impl Guest for Greedy {
    fn info() -> PluginInfo {
        PluginInfo { name: "extra-import".into(), version: "0.1.0".into() }
    }
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn pick(_job: Job, _candidates: Vec<Candidate>) -> Option<u32> {
        let _ = tolk::plugin::net::fetch("http://example.invalid/");
        Some(0)
    }
}

export!(Greedy);
