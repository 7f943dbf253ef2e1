//! Test double for engine isolation: an ASR engine whose "speech" is text
//! spelled in the samples (each non-zero sample a Unicode code point; zeros
//! are silence), so a test decides exactly what it hears. What it hears it
//! returns, except when the text starts with a fault word:
//! - `segfault` — writes through a null pointer (SIGSEGV);
//! - `abort` — `abort()` (SIGABRT), as a C assertion does;
//! - `exit` — `exit(3)`, as Flite's `cst_error` and SphinxBase's `E_FATAL` do;
//! - `hang` — sleeps for ever;
//! - `leak` — allocates and touches 16 MiB at a time and never frees it,
//!   until the allocator fails (the memory limit) and the process aborts.
//!
//! Option `fail_create=yes` makes creation fail.
//!
//! # Layout
//! - this file only.

// One `unsafe`: the deliberate segfault.
#![allow(unsafe_code)]

use tolk_engine_sdk::{Asr, Error, Options, export_asr};

#[derive(Debug)]
pub struct Faulty;

/// The text spelled in `samples`.
pub fn heard(samples: &[i16]) -> String {
    samples.iter().filter(|&&s| s != 0).filter_map(|&s| char::from_u32(u32::from(s as u16))).collect()
}

impl Asr for Faulty {
    fn create(options: &Options) -> Result<Self, Error> {
        if options.get("fail_create") == Some("yes") {
            return Err(Error::backend("asked to fail at creation"));
        }
        Ok(Self)
    }

    fn transcribe(&mut self, samples: &[i16], _rate: u32, _lang: &str) -> Result<String, Error> {
        let text = heard(samples);
        if text.starts_with("segfault") {
            eprintln!("faulty: writing through a null pointer");
            // SAFETY: none: this is the crash under test.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        } else if text.starts_with("abort") {
            eprintln!("faulty: aborting");
            std::process::abort();
        } else if text.starts_with("exit") {
            eprintln!("faulty: calling exit(3)");
            std::process::exit(3);
        } else if text.starts_with("hang") {
            eprintln!("faulty: hanging");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        } else if text.starts_with("leak") {
            eprintln!("faulty: leaking memory");
            loop {
                let mut block = vec![0u8; 16 << 20];
                // Touch every page, so the memory is really taken.
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                std::mem::forget(block);
            }
        }
        Ok(text)
    }
}

export_asr!(Faulty, "faulty", "0.1");
