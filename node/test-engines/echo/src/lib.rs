//! Test double for the node's plugin tests: an NMT engine built with
//! `tolk-engine-sdk`. Translating `text` gives `[src→tgt] text`, except:
//! `fail: …` → a backend error, `bad: …` → an invalid-input error,
//! `panic: …` → a panic (caught by the SDK), `sleep:MS` → sleeps MS then echoes.
//! Option `fail_create=yes` makes creation fail.
//!
//! # Layout
//! - this file only.

use tolk_engine_sdk::{Error, Nmt, Options, export_nmt};

#[derive(Debug)]
pub struct Echo {
    calls: u64,
}

impl Nmt for Echo {
    fn create(options: &Options) -> Result<Self, Error> {
        if options.get("fail_create") == Some("yes") {
            return Err(Error::backend("asked to fail at creation"));
        }
        Ok(Self { calls: 0 })
    }

    fn translate(&mut self, text: &str, src: &str, tgt: &str) -> Result<String, Error> {
        self.calls += 1;
        if let Some(rest) = text.strip_prefix("fail:") {
            return Err(Error::backend(format!("asked to fail:{rest}")));
        }
        if text.starts_with("bad:") {
            return Err(Error::invalid_input("asked to call the input bad"));
        }
        if text.starts_with("panic:") {
            panic!("asked to panic (call {})", self.calls);
        }
        if let Some(ms) = text.strip_prefix("sleep:").and_then(|ms| ms.trim().parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Ok(format!("[{src}→{tgt}] {text}"))
    }
}

export_nmt!(Echo, "echo", "0.1");
