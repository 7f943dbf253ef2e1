//! `tolk-node`: the node host. A node is a volunteer's or the user's own
//! machine that runs the speech → text → translation → speech pipeline for
//! the jobs a dispatcher sends it. This crate registers the machine with a
//! dispatcher (facts read from the machine, models from its engine
//! configuration), keeps its identity, heartbeats with measured load, runs
//! jobs with bounded concurrency and deadlines, obeys `node_control`, and
//! reconnects with back-off.
//!
//! Inference goes through native engine plugins: shared libraries loaded by
//! path through the versioned C ABI of `tolk-engine-sdk`, one per stage
//! (ASR, NMT, TTS). The shipped engines are in `node/engines/`. By default
//! each engine instance runs in a supervised child process (this binary,
//! `tolk-node engine-host`): a crash, `abort()`, `exit()`, hang or runaway
//! allocation in an engine costs only the job it held, never the node.
//!
//! # Layout
//! - [`core`]: the sans-IO state machine (events in, actions out): every rule.
//! - [`pipeline`]: one job, synchronously: decode → ASR → NMT → TTS, timed.
//! - [`engine`]: the [`engine::Engine`] trait, the engine set,
//!   [`engine::plugin`] (the shared-library loader), and engines out of
//!   process: [`engine::supervisor`] (the sans-IO supervision decisions:
//!   restarts with back-off, deadlines, health), [`engine::process`] (the
//!   driver: children, pipes, threads), [`engine::host`] (the child's side),
//!   [`engine::wire`] (the frames on the pipes).
//! - [`models`]: which model serves which request (the dispatcher's rule).
//! - [`config`]: the TOML configuration; [`identity`]: `node_id`/`node_token` on disk.
//! - [`machine`]: cores, memory, GPUs, measured load.
//! - [`shell`]: tokio + tokio-tungstenite around the core; [`tls`]: the `wss://` client configuration.
//! - [`status`]: the owner's status view (`status.json`, `tolk-node status`).
//! - [`store`]: models installed from pinned registry packages
//!   (`tolk-node models`), with the CTranslate2 → ggml converter.

pub mod config;
pub mod core;
pub mod engine;
mod error;
pub mod identity;
pub mod machine;
pub mod models;
pub mod pipeline;
pub mod shell;
pub mod status;
pub mod store;
pub mod tls;

pub use error::Error;
