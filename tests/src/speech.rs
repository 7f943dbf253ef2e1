//! Real speech: English sentences spoken by the `flite` program (voice
//! `slt`, 16 kHz mono; `scripts/setup.sh` installs it). PocketSphinx
//! recognises this voice well, so tests can check the recognised words.

use std::path::Path;
use std::process::Command;

/// Sentences PocketSphinx recognises well when flite speaks them.
pub const SENTENCES: &[&str] = &[
    "the weather is nice today",
    "where is the train station",
    "i would like a cup of coffee",
    "how much does this cost",
    "please open the window",
    "the book is on the table",
    "thank you very much for your help",
    "my brother lives in a small house",
];

/// The sample rate of [`speak`]'s output.
pub const RATE: u32 = 16_000;

/// `text` spoken at 16 kHz; the wav file is kept in `dir`.
pub fn speak(dir: &Path, text: &str) -> Vec<i16> {
    std::fs::create_dir_all(dir).unwrap();
    let name: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let wav = dir.join(format!("{name}.wav"));
    let out = Command::new("flite")
        .args(["-voice", "slt", "-t", text, "-o"])
        .arg(&wav)
        .output()
        .unwrap_or_else(|e| panic!("cannot run flite ({e}): run scripts/setup.sh"));
    assert!(out.status.success(), "flite failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut reader = hound::WavReader::open(&wav).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, RATE, 16), "flite's slt voice speaks 16 kHz mono");
    reader.samples::<i16>().collect::<Result<_, _>>().unwrap()
}

/// Each of `texts` spoken, one clip per sentence.
pub fn clips(dir: &Path, texts: &[&str]) -> Vec<Vec<i16>> {
    texts.iter().map(|t| speak(dir, t)).collect()
}

/// One stream: `gap_ms` of silence, then each clip followed by `gap_ms` of
/// silence (what a microphone hears, for the SDK's VAD to cut).
pub fn stream(clips: &[Vec<i16>], gap_ms: u32) -> Vec<i16> {
    let gap = vec![0i16; (gap_ms * RATE / 1000) as usize];
    let mut out = gap.clone();
    for c in clips {
        out.extend_from_slice(c);
        out.extend_from_slice(&gap);
    }
    out
}

/// Lower-case words without punctuation.
pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word-level edit distance between a reference and a hypothesis.
pub fn word_errors(reference: &str, hypothesis: &str) -> usize {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()]
}

/// Root mean square of PCM16 samples (speech is well above 300; silence 0).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}
