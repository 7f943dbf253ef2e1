//! The service units in `deploy/systemd/` pass `systemd-analyze verify`
//! (every key known, every path there, with the real binaries in place of
//! `/usr/local/bin/…`) and keep their hardening: `systemd-analyze security`
//! rates their exposure 3.0 or lower (0 is best, 10 worst).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::PathBuf;
use std::process::Command;

fn unit_with_real_binary(name: &str, binary: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(format!("deploy/systemd/{name}.service"))).unwrap();
    let installed = format!("/usr/local/bin/{name}");
    assert!(text.contains(&installed), "{name}.service runs {installed}");
    let dir = std::env::temp_dir().join(format!("tolk-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.service"));
    std::fs::write(&path, text.replace(&installed, binary)).unwrap();
    path
}

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd) is missing: run scripts/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn service_units_verify_cleanly_and_stay_hardened() {
    for (name, binary) in
        [("tolk-dispatcher", env!("CARGO_BIN_EXE_tolk-e2e-dispatcher")), ("tolk-node", env!("CARGO_BIN_EXE_tolk-e2e-node"))]
    {
        let unit = unit_with_real_binary(name, binary);
        let unit = unit.to_str().unwrap();
        let (ok, text) = analyze(&["verify", unit]);
        // systemd-analyze only warns about unknown keys: any output is a finding.
        assert!(ok && text.trim().is_empty(), "{name}.service: {text}");
        let (_, text) = analyze(&["security", "--offline=yes", unit]);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1)?.split(": ").nth(1)?.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {text}"));
        println!("{name}.service: exposure {level}");
        assert!(level <= 3.0, "{name}.service exposure {level} > 3.0: {text}");
    }
}
