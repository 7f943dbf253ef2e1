//! Shared by the node's integration tests: building the engine plugins.
//!
//! A cdylib cannot be a dev-dependency, so the tests build the plugins
//! themselves: once per test binary (a `OnceLock`), they run
//! `cargo build -p <every engine and test engine>` with the same cargo that
//! runs the tests, into a separate target directory (`target/engine-plugins`),
//! so the nested build never waits on the outer one's lock. Cargo's own lock
//! serialises test binaries that build at the same time; the second finds
//! everything fresh. The plugins depend only on `tolk-engine-sdk` (which has
//! no dependencies), so a cold build takes seconds.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every plugin package the tests load.
pub const PLUGINS: &[&str] = &[
    "tolk-test-engine-echo",
    "tolk-test-engine-bad-abi",
    "tolk-test-engine-abi-v1",
    "tolk-test-engine-no-descriptor",
    "tolk-test-engine-faulty",
    "tolk-engine-pocketsphinx",
    "tolk-engine-apertium",
    "tolk-engine-flite",
    "tolk-engine-espeak",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node/ has a parent").to_owned()
}

fn build_all() -> PathBuf {
    let target = workspace_root().join("target").join("engine-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "--quiet", "--target-dir"]).arg(&target);
    for p in PLUGINS {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().expect("run cargo to build the engine plugins");
    assert!(status.success(), "building the engine plugins failed (are the Debian packages of scripts/setup.sh installed?)");
    target.join("debug")
}

/// The built shared library of `package` (e.g. `tolk-engine-flite`).
pub fn plugin(package: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(build_all);
    let file = format!("{}{}{}", std::env::consts::DLL_PREFIX, package.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let path = dir.join(file);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tolk-node-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
