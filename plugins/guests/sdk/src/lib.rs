//! `tolk-plugin-sdk`: write a Tolk dispatcher plugin as a plain Rust trait.
//!
//! A plugin is a WebAssembly component run by the dispatcher in a sandbox
//! (no files, network, clock or environment; a time budget per call; a memory
//! cap). Two kinds exist, one per cargo feature of this crate:
//!
//! - `scheduler`: implement [`scheduler::Policy`] and call
//!   [`export_policy!`]: the dispatcher asks it which eligible node runs a job.
//!   (`tolk:plugin@0.2.0`; `scheduler-v0-1` and `detector-v0-1` build
//!   against 0.1.0, which the dispatcher still loads.)
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
    //! Scheduling policies (`tolk:plugin@0.2.0`).
    wit_bindgen::generate!({
        path: "../../wit",
        world: "scheduler",
        pub_export_macro: true,
        export_macro_name: "__export_scheduler",
        default_bindings_module: "tolk_plugin_sdk::scheduler",
    });

    pub use exports::tolk::plugin::scheduling::{Guest, Job, PluginInfo};
    #[doc(hidden)]
    pub use tolk::plugin::host;

    /// One eligible node with free capacity, as the dispatcher describes it.
    #[derive(Debug, Clone, Copy, PartialEq, Default)]
    pub struct Candidate {
        /// Stable per node for the dispatcher's lifetime.
        pub node_key: u32,
        pub running: u32,
        pub capacity: u32,
        pub cpu_percent: f32,
        /// The node ran this session's previous job.
        pub is_last_node: bool,
        /// Smoothed processing time per second of audio; negative when unknown.
        pub ms_per_audio_s: f32,
        pub recent_failures: u32,
        /// Canaries passed, smoothed: 0–1, 0.5 for a node never checked.
        pub trust_score: f32,
        /// Trusted because it passed canaries (not only by configuration).
        pub verified: bool,
    }

    /// The record layout of 0.2.0 (see `plugins/wit/plugin.wit`).
    pub const STRIDE: usize = 32;

    fn word(b: &[u8], at: usize) -> u32 {
        b.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_le_bytes)
    }

    impl Candidate {
        /// Reads one record (the first [`STRIDE`] bytes of `b`; missing bytes read as 0).
        pub fn decode(b: &[u8]) -> Self {
            let flags = word(b, 28);
            Self {
                node_key: word(b, 0),
                running: word(b, 4),
                capacity: word(b, 8),
                cpu_percent: f32::from_bits(word(b, 12)),
                ms_per_audio_s: f32::from_bits(word(b, 16)),
                recent_failures: word(b, 20),
                trust_score: f32::from_bits(word(b, 24)),
                is_last_node: flags & 1 != 0,
                verified: flags & 2 != 0,
            }
        }
    }

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

    thread_local! {
        /// Decoded candidates, reused: a decision allocates nothing once warm.
        static DECODED: std::cell::RefCell<Vec<Candidate>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    #[doc(hidden)]
    pub fn __init<P: Policy>(config: &str) -> Result<(), String> {
        let p = P::init(config)?;
        crate::state::STATE.with(|s| *s.borrow_mut() = Some(Box::new(p)));
        Ok(())
    }

    #[doc(hidden)]
    pub fn __pick<P: Policy>(job: &Job, bytes: &[u8], stride: u32) -> Option<u32> {
        let stride = (stride as usize).max(1);
        DECODED.with(|d| {
            let mut decoded = d.borrow_mut();
            decoded.clear();
            decoded.extend(bytes.chunks_exact(stride).map(Candidate::decode));
            crate::state::STATE.with(|s| {
                let mut slot = s.borrow_mut();
                if slot.is_none() {
                    // Called without init: initialise with an empty configuration.
                    *slot = Some(Box::new(P::init("").ok()?));
                }
                slot.as_mut()?.downcast_mut::<P>()?.pick(job, &decoded)
            })
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
                fn pick(job: $crate::scheduler::Job, candidates: ::std::vec::Vec<u8>, stride: u32) -> Option<u32> {
                    $crate::scheduler::__pick::<$ty>(&job, &candidates, stride)
                }
            }
            $crate::scheduler::__export_scheduler!(__TolkPolicy with_types_in $crate::scheduler);
        };
    }
}

#[cfg(feature = "scheduler-v0-1")]
pub mod scheduler_v0_1 {
    //! Scheduling policies against `tolk:plugin@0.1.0` (still loaded by
    //! the dispatcher; new policies use [`crate::scheduler`]).
    wit_bindgen::generate!({
        path: "../../wit-0.1.0",
        world: "scheduler-v0-1",
        pub_export_macro: true,
        export_macro_name: "__export_scheduler_v0_1",
        default_bindings_module: "tolk_plugin_sdk::scheduler_v0_1",
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

    /// Exports `$ty` (a [`Policy`]) as this component's scheduling policy (0.1.0).
    #[macro_export]
    macro_rules! export_policy_v0_1 {
        ($ty:ty) => {
            struct __TolkPolicyV01;
            impl $crate::scheduler_v0_1::Guest for __TolkPolicyV01 {
                fn info() -> $crate::scheduler_v0_1::PluginInfo {
                    <$ty as $crate::scheduler_v0_1::Policy>::info()
                }
                fn init(config: ::std::string::String) -> Result<(), ::std::string::String> {
                    $crate::scheduler_v0_1::__init::<$ty>(&config)
                }
                fn pick(job: $crate::scheduler_v0_1::Job, candidates: ::std::vec::Vec<$crate::scheduler_v0_1::Candidate>) -> Option<u32> {
                    $crate::scheduler_v0_1::__pick::<$ty>(&job, &candidates)
                }
            }
            $crate::scheduler_v0_1::__export_scheduler_v0_1!(__TolkPolicyV01 with_types_in $crate::scheduler_v0_1);
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

#[cfg(feature = "detector-v0-1")]
pub mod detector_v0_1 {
    //! Feature detectors against `tolk:plugin@0.1.0` (still loaded by the
    //! dispatcher; new detectors use [`crate::detector`]).
    wit_bindgen::generate!({
        path: "../../wit-0.1.0",
        world: "detector-v0-1",
        pub_export_macro: true,
        export_macro_name: "__export_detector_v0_1",
        default_bindings_module: "tolk_plugin_sdk::detector_v0_1",
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
    macro_rules! export_detector_v0_1 {
        ($ty:ty) => {
            struct __TolkDetectorV01;
            impl $crate::detector_v0_1::Guest for __TolkDetectorV01 {
                fn info() -> $crate::detector_v0_1::PluginInfo {
                    <$ty as $crate::detector_v0_1::Detector>::info()
                }
                fn init(config: ::std::string::String) -> Result<(), ::std::string::String> {
                    $crate::detector_v0_1::__init::<$ty>(&config)
                }
                fn provides() -> $crate::detector_v0_1::Features {
                    <$ty as $crate::detector_v0_1::Detector>::provides()
                }
                fn detect(
                    samples: ::std::vec::Vec<i16>,
                    sample_rate: u32,
                    wanted: $crate::detector_v0_1::Features,
                ) -> Result<$crate::detector_v0_1::Detection, ::std::string::String> {
                    $crate::detector_v0_1::__detect::<$ty>(&samples, sample_rate, wanted)
                }
            }
            $crate::detector_v0_1::__export_detector_v0_1!(__TolkDetectorV01 with_types_in $crate::detector_v0_1);
        };
    }
}

/// Logs a line through the dispatcher (dropped past the per-call quota).
#[cfg(any(feature = "scheduler", feature = "detector", feature = "scheduler-v0-1", feature = "detector-v0-1"))]
pub mod log {
    #[cfg(feature = "scheduler")]
    use crate::scheduler::host::{Level, log as host_log};
    #[cfg(all(feature = "detector", not(feature = "scheduler")))]
    use crate::detector::host::{Level, log as host_log};
    #[cfg(all(feature = "scheduler-v0-1", not(any(feature = "scheduler", feature = "detector"))))]
    use crate::scheduler_v0_1::host::{Level, log as host_log};
    #[cfg(all(feature = "detector-v0-1", not(any(feature = "scheduler", feature = "detector", feature = "scheduler-v0-1"))))]
    use crate::detector_v0_1::host::{Level, log as host_log};

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
