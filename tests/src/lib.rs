//! `tolk-e2e`: the whole system, end to end, as users run it.
//!
//! The tests in `tests/tests/` start the real `tolk-dispatcher` and
//! `tolk-node` binaries as child processes on 127.0.0.1, load the real engine
//! plugins (PocketSphinx, Apertium, eSpeak NG) and the real Wasm scheduling
//! policies, and talk to them with the SDK ([`tolk_sdk::Client`]) or with raw
//! WebSocket clients when a test must see every frame (or send bad ones).
//! Speech is English spoken by `flite`. Nothing is mocked.
//!
//! The binaries are this crate's own `[[bin]]` targets, compiled from the
//! `main` files of `dispatcher/` and `node/` (see `Cargo.toml`), so one
//! `cargo test -p tolk-e2e` builds everything the tests run. Engine plugins
//! are `cdylib`s and cannot be dependencies: [`build::engine`] builds them
//! once per test binary with a nested cargo into `target/engine-plugins`,
//! exactly as `node/tests/support` does.
//!
//! Every wait is bounded (a timeout is a failed test, never a measurement),
//! and every child process is killed when its handle drops.
//!
//! # Layout
//! - [`build`]: engine plugins (nested cargo) and Wasm plugins.
//! - [`speech`]: English sentences spoken by `flite` at 16 kHz.
//! - [`neural`]: speech made by Kokoro and eSpeak NG, English transcribed
//!   back by whisper tiny.en, character error rates (the real-language tests).
//! - [`dispatcher`]: [`DispatcherProcess`], the dispatcher as a child process
//!   (start, SIGKILL, SIGTERM, restart on the same address).
//! - [`node`]: [`NodeProcess`] and [`NodeSetup`], a node as a child process
//!   with its engines, log and pairing code.
//! - [`nats`]: a real `nats-server` with JetStream (cluster tests) and a
//!   TCP front to re-point between dispatchers.
//! - [`wire`]: raw WebSocket and HTTP clients and frame builders.
//! - [`app`]: [`App`], an SDK client that records its events, with the
//!   checks every test makes on them.

// Test helpers: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod build;
pub mod dispatcher;
pub mod nats;
pub mod neural;
pub mod node;
pub mod speech;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use app::App;
pub use dispatcher::DispatcherProcess;
pub use node::{NodeProcess, NodeSetup};

/// The admin API's bearer token in every test dispatcher.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// The cargo workspace's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// This crate's binary `name`. Cargo builds a package's binaries before its
/// integration tests and puts them next to the test executables' `deps/`
/// folder (`CARGO_BIN_EXE_*` is set only while compiling the tests
/// themselves, not this library).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing: run the tests with `cargo test -p tolk-e2e`", path.display());
    path
}

/// A fresh scratch directory for one test, `target/tmp/e2e/NAME` (emptied
/// first): speech, configuration files and every child process's log, kept
/// after the run for a look at what happened.
pub fn scratch(name: &str) -> PathBuf {
    let dir = workspace_root().join("target").join("tmp").join("e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `check` every 50 ms until it gives a value; panics with `what` (and
/// whatever `context` says then) after `limit`.
pub async fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}\n{}", context());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`wait_until`], for a check that awaits (an HTTP request, say).
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `key=value` in a log line.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|t| t.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}
