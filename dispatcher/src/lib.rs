//! `tolk-dispatcher`: the server that phones and nodes connect to.
//!
//! Phones open sessions on `/ws/session` and send utterances; nodes register
//! on `/ws/node` and run jobs. The dispatcher turns each utterance into a job,
//! places it on an eligible node, moves it when the node fails, and returns
//! every outcome to the phone in `utterance_index` order.
//!
//! It is built as a sans-IO **core** inside a thin async **shell**:
//! the core decides everything and is tested without sockets; the shell
//! moves bytes, runs timers and serves HTTP.
//!
//! # Layout
//! - [`core`]: the deterministic state machine, split by entity (sessions,
//!   nodes, jobs, queue classes, eligibility, admission, pairing, timers),
//!   with [`core::order`] (the reorder buffer), [`core::policy`] (scheduling
//!   policies) and [`core::stats`] (its counters as plain data).
//! - [`shell`]: axum routes, per-connection tasks, timers, admin API, TLS,
//!   graceful shutdown; [`shell::web`] serves the web client (`/app/`) and
//!   the dashboard (`/dashboard`); `ws`: the WebSocket upgrade, our
//!   reader (`ws::read`) and our vectored writer, on one socket.
//! - [`config`]: every setting and its default; [`canaries`]: loading the canary set.
//! - [`metrics`]: Prometheus export of the core's stats and the shell's own measurements.

pub mod canaries;
pub mod cluster;
pub mod config;
pub mod core;
mod error;
pub mod metrics;
pub mod plugins;
pub mod shell;
mod ws;

pub use config::{Config, CoreConfig};
pub use error::Error;
