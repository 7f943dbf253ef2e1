//! `tolk-loadgen`: the load generator and benchmarks of the dispatcher.
//!
//! It simulates N phones (sessions sending pcm16 utterances, closed loop or
//! at a rate) and M nodes (answering each job after a delay with a result
//! carrying TTS audio) over loopback WebSockets, against the dispatcher and,
//! under the same load, against a bare WebSocket relay that forwards the
//! same frames without parsing them. It reports utterances/s, MB/s, the
//! latency the server adds on the way out and back (p50/p99/p999, every
//! timestamp from this process's clock), the server's CPU and RSS from
//! `/proc`, and the server's memory per idle session. Targets are printed,
//! never asserted. The command and the figures are in README.md.
//!
//! # Layout
//! - [`sim`]: the simulated sessions and nodes, and one timed run ([`sim::run`]).
//! - [`relay`]: the bare relay (the baseline).
//! - [`idle`]: the idle-session memory test.
//! - [`frames`]: frames built once through `tolk-protocol` and rendered per
//!   utterance; field lookups that read a frame without building it.
//! - [`wsclient`]: the simulated peers' lean WebSocket client (the load
//!   generator shares the cores with the server it measures).
//! - [`child`]: the dispatcher and the relay as child processes.
//! - [`procstat`]: CPU and RSS of a process from `/proc`.
//! - [`scrape`]: the dispatcher's own figures (lock share, time inside) from `/metrics`.
//! - [`stats`], [`report`]: percentiles and the printed tables.

pub mod child;
pub mod frames;
pub mod idle;
pub mod procstat;
pub mod relay;
pub mod report;
pub mod scrape;
pub mod sim;
pub mod stats;
pub mod wsclient;

/// Errors of a run, for the reader (a load generator has no caller to match on them).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
