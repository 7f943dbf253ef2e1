//! Real speech for tests: sentences spoken by `espeak-ng`, resampled to
//! 16 kHz mono by `sox` (both installed by `scripts/setup.sh`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/setup.sh (needs espeak-ng and sox)"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `text` spoken at 16 kHz.
pub fn speak(dir: &Path, name: &str, text: &str) -> Vec<i16> {
    std::fs::create_dir_all(dir).unwrap();
    let raw = dir.join(format!("{name}_raw.wav"));
    let wav = dir.join(format!("{name}_16k.wav"));
    run(Command::new("espeak-ng").arg("-w").arg(&raw).arg(text), "espeak-ng");
    run(Command::new("sox").arg(&raw).args(["-r", "16000", "-b", "16", "-c", "1"]).arg(&wav), "sox");
    let mut reader = hound::WavReader::open(&wav).unwrap();
    reader.samples::<i16>().collect::<Result<_, _>>().unwrap()
}

/// The sentences one after the other, each preceded by `gap_ms` of silence,
/// with `gap_ms` after the last. Returns the stream and each sentence's
/// length in ms.
pub fn sentences(dir: &Path, texts: &[&str], gap_ms: u32) -> (Vec<i16>, Vec<u64>) {
    let gap = vec![0i16; (gap_ms * 16) as usize];
    let mut stream = gap.clone();
    let mut lengths = vec![];
    for (i, text) in texts.iter().enumerate() {
        let s = speak(dir, &format!("s{i}"), text);
        lengths.push(s.len() as u64 / 16);
        stream.extend_from_slice(&s);
        stream.extend_from_slice(&gap);
    }
    (stream, lengths)
}
