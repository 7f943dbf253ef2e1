//! Plugins the tests load: native engine libraries and Wasm policies.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::workspace_root;

/// The engine plugin packages the tests load.
pub const ENGINES: &[&str] = &[
    "tolk-test-engine-echo",
    "tolk-engine-pocketsphinx",
    "tolk-engine-apertium",
    "tolk-engine-flite",
    "tolk-engine-espeak",
    "tolk-engine-whisper",
    "tolk-engine-onnx-tts",
];

/// Builds [`ENGINES`] with the cargo that runs the tests into
/// `target/engine-plugins` (a separate target directory, so the nested build
/// never waits for the outer one's lock; the node's tests use the same one).
fn build_engines() -> PathBuf {
    let target = workspace_root().join("target").join("engine-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "--quiet", "--target-dir"]).arg(&target);
    for p in ENGINES {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().expect("run cargo to build the engine plugins");
    assert!(status.success(), "building the engine plugins failed (are the Debian packages of scripts/setup.sh installed?)");
    target.join("debug")
}

/// The shared library of engine `package` (one of [`ENGINES`]), built once
/// per test binary.
pub fn engine(package: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(build_engines);
    let file = format!("{}{}{}", std::env::consts::DLL_PREFIX, package.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let path = dir.join(file);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The shipped Wasm plugin `stem` (`round-robin`, `sticky-session`, ...),
/// built from source once per test binary.
pub fn wasm_plugin(stem: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        tolk_plugin_build::build_shipped().expect("the shipped plugins build from source");
    });
    let path = tolk_plugin_build::repo_root().join("target/plugins").join(format!("{stem}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Puts the shipped plugin `stem` into `dir` as `as_stem.wasm`, the way an
/// operator should: a copy next to it, then a rename, so a watching
/// dispatcher never reads half a file.
pub fn install_wasm_plugin(stem: &str, dir: &std::path::Path, as_stem: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!("{as_stem}.wasm.partial"));
    std::fs::copy(wasm_plugin(stem), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{as_stem}.wasm"))).unwrap();
}
