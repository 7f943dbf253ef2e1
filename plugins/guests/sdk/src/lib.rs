//! `tolk-plugin-sdk`: write a Tolk dispatcher plugin as a plain Rust trait.
//!
//! A plugin is a WebAssembly component run by the dispatcher in a sandbox
//! (no files, network, clock or environment; a time budget per call; a memory
//! cap). Two kinds exist, one per cargo feature of this crate:
//!
//! - `scheduler`: implement [`scheduler::Policy`] and call
//!   [`export_policy!`]: the dispatcher asks it which eligible node runs a job.
//! - `detector`: implement [`detector::Detector`] and call
//!   [`export_detector!`]: the dispatcher gives it an utterance's samples and
//!   it returns features (speech rate, emotion, voice style).
//!
//! # A complete policy
//!
//! ```toml
//! # Cargo.toml
//! [lib]
//! crate-type = ["cdylib"]
//! [dependencies]
//! tolk-plugin-sdk = { path = "…/plugins/guests/sdk", features = ["scheduler"] }
//! ```
//!
//! ```ignore
//! use tolk_plugin_sdk::scheduler::{Candidate, Job, PluginInfo, Policy};
//!
//! struct FewestRunning;
//!
//! impl Policy for FewestRunning {
//!     fn info() -> PluginInfo {
//!         PluginInfo { name: "fewest-running".into(), version: "1.0.0".into() }
//!     }
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(FewestRunning)
//!     }
//!     fn pick(&mut self, _job: &Job, candidates: &[Candidate]) -> Option<u32> {
//!         let best = candidates.iter().enumerate().min_by_key(|(_, c)| c.running)?;
//!         Some(best.0 as u32)
//!     }
//! }
//!
//! tolk_plugin_sdk::export_policy!(FewestRunning);
//! ```
//!
//! Build it into a component the dispatcher loads (one command, from the
//! repository root): `cargo run -p tolk-plugin-build -- --crate-dir path/to/plugin --out plugins-dir/`
//! (plugins in `plugins/guests/` are built by `cargo run -p tolk-plugin-build`).
//! Drop the `.wasm` into the dispatcher's plugin folder: it is loaded live.
//!
//! # Layout
//! - [`scheduler`]: the `Policy` trait and the types it sees.
//! - [`detector`]: the `Detector` trait and the types it sees.
//! - [`log`]: logging through the dispatcher (quota: 16 lines per call).
//! - [`dsp`]: energy envelope, syllable nuclei and pitch, for detectors.

#[doc(hidden)]
pub use wit_bindgen;

pub mod dsp;

/// Plugin state lives here between calls (a component instance is single
/// threaded, so a thread-local `RefCell` is enough).
#[doc(hidden)]
pub mod state {
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        pub static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }
}

#[cfg(feature = "scheduler")]
pub mod scheduler {
    //! Scheduling policies.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "scheduler",
        pub_export_macro: true,
        export_macro_name: "__export_scheduler",
        default_bindings_module: "tolk_plugin_sdk::scheduler",
    });

    pub use exports::tolk::plugin::scheduling::{Candidate, Guest, Job, PluginInfo};
    #[doc(hidden)]
    pub use tolk::plugin::host;

    /// A scheduling policy. The dispatcher creates it once ([`Policy::init`])
    /// and calls [`Policy::pick`] for every job; it is re-created after a
    /// trap or a time-out.
    pub trait Policy: Sized + 'static {
        /// Name and version, shown in the dispatcher's metrics and logs.
        fn info() -> PluginInfo;
        /// Builds the policy from its configuration (TOML text, maybe empty).
        fn init(config: &str) -> Result<Self, String>;
        /// The index of the candidate to run `job` on; `None` leaves the
        /// decision to the dispatcher's built-in policy.
        fn pick(&mut self, job: &Job, candidates: &[Candidate]) -> Option<u32>;
    }

    #[doc(hidden)]
    pub fn __init<P: Policy>(config: &str) -> Result<(), String> {
        let p = P::init(config)?;
        crate::state::STATE.with(|s| *s.borrow_mut() = Some(Box::new(p)));
        Ok(())
    }

    #[doc(hidden)]
    pub fn __pick<P: Policy>(job: &Job, candidates: &[Candidate]) -> Option<u32> {
        crate::state::STATE.with(|s| {
            let mut slot = s.borrow_mut();
            if slot.is_none() {
                // Called without init: initialise with an empty configuration.
                *slot = Some(Box::new(P::init("").ok()?));
            }
            slot.as_mut()?.downcast_mut::<P>()?.pick(job, candidates)
        })
    }

    /// Exports `$ty` (a [`Policy`]) as this component's scheduling policy.
    #[macro_export]
    macro_rules! export_policy {
        ($ty:ty) => {
            struct __TolkPolicy;
            impl $crate::scheduler::Guest for __TolkPolicy {
                fn info() -> $crate::scheduler::PluginInfo {
                    <$ty as $crate::scheduler::Policy>::info()
                }
                fn init(config: ::std::string::String) -> Result<(), ::std::string::String> {
                    $crate::scheduler::__init::<$ty>(&config)
                }
                fn pick(job: $crate::scheduler::Job, candidates: ::std::vec::Vec<$crate::scheduler::Candidate>) -> Option<u32> {
                    $crate::scheduler::__pick::<$ty>(&job, &candidates)
                }
            }
            $crate::scheduler::__export_scheduler!(__TolkPolicy with_types_in $crate::scheduler);
        };
    }
}

#[cfg(feature = "detector")]
pub mod detector {
    //! Feature detectors.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "detector",
        pub_export_macro: true,
        export_macro_name: "__export_detector",
        default_bindings_module: "tolk_plugin_sdk::detector",
    });

    pub use exports::tolk::plugin::detection::{Detection, Features, Guest, PluginInfo};
    #[doc(hidden)]
    pub use tolk::plugin::host;

    /// A feature detector.
    pub trait Detector: Sized + 'static {
        fn info() -> PluginInfo;
        fn init(config: &str) -> Result<Self, String>;
        /// What it can detect.
        fn provides() -> Features;
        /// Detects `wanted` in mono 16-bit `samples` at `sample_rate`.
        fn detect(&mut self, samples: &[i16], sample_rate: u32, wanted: Features) -> Result<Detection, String>;
    }

    #[doc(hidden)]
    pub fn __init<D: Detector>(config: &str) -> Result<(), String> {
        let d = D::init(config)?;
        crate::state::STATE.with(|s| *s.borrow_mut() = Some(Box::new(d)));
        Ok(())
    }

    #[doc(hidden)]
    pub fn __detect<D: Detector>(samples: &[i16], sample_rate: u32, wanted: Features) -> Result<Detection, String> {
        crate::state::STATE.with(|s| {
            let mut slot = s.borrow_mut();
            if slot.is_none() {
                *slot = Some(Box::new(D::init("")?));
            }
            match slot.as_mut().and_then(|s| s.downcast_mut::<D>()) {
                Some(d) => d.detect(samples, sample_rate, wanted),
                None => Err(String::from("detector state missing")),
            }
        })
    }

    /// Exports `$ty` (a [`Detector`]) as this component's detector.
    #[macro_export]
    macro_rules! export_detector {
        ($ty:ty) => {
            struct __TolkDetector;
            impl $crate::detector::Guest for __TolkDetector {
                fn info() -> $crate::detector::PluginInfo {
                    <$ty as $crate::detector::Detector>::info()
                }
                fn init(config: ::std::string::String) -> Result<(), ::std::string::String> {
                    $crate::detector::__init::<$ty>(&config)
                }
                fn provides() -> $crate::detector::Features {
                    <$ty as $crate::detector::Detector>::provides()
                }
                fn detect(
                    samples: ::std::vec::Vec<i16>,
                    sample_rate: u32,
                    wanted: $crate::detector::Features,
                ) -> Result<$crate::detector::Detection, ::std::string::String> {
                    $crate::detector::__detect::<$ty>(&samples, sample_rate, wanted)
                }
            }
            $crate::detector::__export_detector!(__TolkDetector with_types_in $crate::detector);
        };
    }
}

/// Logs a line through the dispatcher (dropped past the per-call quota).
#[cfg(any(feature = "scheduler", feature = "detector"))]
pub mod log {
    #[cfg(feature = "scheduler")]
    use crate::scheduler::host::{Level, log as host_log};
    #[cfg(all(feature = "detector", not(feature = "scheduler")))]
    use crate::detector::host::{Level, log as host_log};

    pub fn info(message: &str) {
        host_log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        host_log(Level::Warn, message);
    }
    pub fn debug(message: &str) {
        host_log(Level::Debug, message);
    }
}
