//! `tolk-plugin-build`: turns plugin crates into the components the
//! dispatcher loads.
//!
//! Plugins are ordinary Rust `cdylib` crates built for
//! `wasm32-unknown-unknown` (so they import no WASI: nothing but our `host`
//! interface), then wrapped into a WebAssembly component with
//! `wit-component`, from the component type that `wit-bindgen` embeds.
//!
//! # Layout
//! - [`build_shipped`]: every plugin in `plugins/guests/` → `target/plugins/NAME.wasm`
//!   (test fixtures → `target/plugins/testing/NAME.wasm`).
//! - [`build_crate`]: one plugin author's crate → `OUT/NAME.wasm`.
//! - [`componentize`]: a core module with its component type → a component.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cargo failed building {0}")]
    Cargo(String),
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a plugin module: {message}")]
    Componentize { path: PathBuf, message: String },
}

const TARGET: &str = "wasm32-unknown-unknown";

/// The repository root (this crate lives in `plugins/build`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Wraps a core module built with `wit-bindgen` into a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default().module(module).and_then(|e| e.validate(true).encode()).map_err(|e| format!("{e:#}"))
}

/// `tolk_policy_least_loaded` → `least-loaded`.
fn plugin_name(artifact_stem: &str) -> String {
    let stem = ["tolk_policy_", "tolk_detector_", "tolk_testing_"].iter().fold(artifact_stem, |s, p| s.strip_prefix(p).unwrap_or(s));
    stem.replace('_', "-")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the workspace or crate at `manifest` for wasm, then componentizes
/// every cdylib it produced into `out`. Returns the written files.
fn build(manifest: &Path, target_dir: &Path, out: &Path, locked: bool) -> Result<Vec<PathBuf>, Error> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"]).arg(manifest).arg("--target-dir").arg(target_dir);
    if locked {
        cmd.arg("--locked");
    }
    // Keep the outer build's flags (e.g. coverage) away from the wasm build.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    let status = cmd.status().map_err(Error::Spawn)?;
    if !status.success() {
        return Err(Error::Cargo(manifest.display().to_string()));
    }
    let artifacts = target_dir.join(TARGET).join("release");
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_owned(), source })?;
    let mut written = Vec::new();
    let entries = std::fs::read_dir(&artifacts).map_err(|source| Error::Io { path: artifacts.clone(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        let module = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let component = componentize(&module).map_err(|message| Error::Componentize { path: path.clone(), message })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
        // Test fixtures go one level down, where a plugin folder scan never looks.
        let dir = if stem.starts_with("tolk_testing_") { out.join("testing") } else { out.to_owned() };
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let dest = dir.join(format!("{}.wasm", plugin_name(stem)));
        if dir != out {
            // A fixture left at the top level by an older build would be loaded by a scan.
            let _ = std::fs::remove_file(out.join(format!("{}.wasm", plugin_name(stem))));
        }
        // Write then rename, so a watching dispatcher never reads half a file;
        // the temporary name is unique to this writer, so concurrent builds
        // (parallel tests) never rename each other's file away.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dest.with_extension(format!("wasm.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, &component).map_err(|source| Error::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &dest).map_err(|source| Error::Io { path: dest.clone(), source })?;
        written.push(dest);
    }
    written.sort();
    Ok(written)
}

/// Builds every plugin we ship (and the test plugins) into `target/plugins/`.
pub fn build_shipped() -> Result<Vec<PathBuf>, Error> {
    let root = repo_root();
    build(&root.join("plugins/guests/Cargo.toml"), &root.join("target/wasm"), &root.join("target/plugins"), true)
}

/// Builds the plugin crate in `crate_dir` into `out`.
pub fn build_crate(crate_dir: &Path, out: &Path) -> Result<Vec<PathBuf>, Error> {
    build(&crate_dir.join("Cargo.toml"), &crate_dir.join("target"), out, false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::plugin_name("tolk_policy_least_loaded"), "least-loaded");
        assert_eq!(super::plugin_name("tolk_detector_speech_rate"), "speech-rate");
        assert_eq!(super::plugin_name("my_plugin"), "my-plugin");
    }

    #[test]
    fn bytes_that_are_not_wasm_are_refused() {
        assert!(super::componentize(b"not wasm").is_err());
    }
}
