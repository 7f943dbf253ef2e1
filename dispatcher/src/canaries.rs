//! Loading the canary set (`[trust] canaries`): a TOML file that lists
//! speech files and what they say. The reading happens here, in the shell;
//! what a canary proves is decided in `core::trust`.
//!
//! ```toml
//! [[canary]]
//! src_lang = "en"
//! tgt_lang = "es"
//! audio = "en-weather.wav"        # beside this file: mono 16-bit PCM WAV
//! text = "the weather is nice today"
//! translation = "el tiempo es bueno hoy"
//! # or several wordings; an answer is held to the closest:
//! # translation = ["el tiempo es bueno hoy", "hace buen tiempo hoy"]
//! ```

use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng as _;
use serde::Deserialize;

use crate::Error;
use crate::core::trust::{Canary, CanarySet};

/// At most this many canaries, of at most this length each.
pub const MAX_CANARIES: usize = 256;
pub const MAX_CANARY_MS: u64 = 30_000;
/// At most this many wordings of one canary's translation.
pub const MAX_REFERENCES: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    canary: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    src_lang: String,
    tgt_lang: String,
    audio: String,
    text: String,
    translation: References,
}

/// One correct translation, or several wordings of it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum References {
    One(String),
    Many(Vec<String>),
}

/// Reads the set at `path`; every problem is an error naming the file and entry.
pub fn load(path: &Path) -> Result<CanarySet, Error> {
    let err = |what: String| Error::Config(format!("canary set {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: SetFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if file.canary.len() > MAX_CANARIES {
        return Err(err(format!("{} canaries; at most {MAX_CANARIES}", file.canary.len())));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut canaries = Vec::with_capacity(file.canary.len());
    for (i, e) in file.canary.into_iter().enumerate() {
        let at = |what: String| err(format!("canary {} ({}): {what}", i + 1, e.audio));
        if e.text.trim().is_empty() || e.src_lang.trim().is_empty() || e.tgt_lang.trim().is_empty() {
            return Err(at("src_lang, tgt_lang and text must not be empty".into()));
        }
        let translations: Vec<String> = match e.translation {
            References::One(t) => vec![t],
            References::Many(ts) => ts,
        }
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .collect();
        if !e.src_lang.eq_ignore_ascii_case(&e.tgt_lang) && translations.is_empty() {
            return Err(at("a translation is needed when the languages differ".into()));
        }
        if translations.len() > MAX_REFERENCES {
            return Err(at(format!("{} translations; at most {MAX_REFERENCES}", translations.len())));
        }
        let wav = dir.join(&e.audio);
        let mut reader = hound::WavReader::open(&wav).map_err(|x| at(format!("{}: {x}", wav.display())))?;
        let spec = reader.spec();
        if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
            return Err(at(format!("must be mono 16-bit PCM (is {} channels, {} bits)", spec.channels, spec.bits_per_sample)));
        }
        if !tolk_protocol::validate::SAMPLE_RATES.contains(&spec.sample_rate) {
            return Err(at(format!("sample rate {} is not one of {:?}", spec.sample_rate, tolk_protocol::validate::SAMPLE_RATES)));
        }
        let ms = u64::from(reader.duration()) * 1000 / u64::from(spec.sample_rate);
        if ms == 0 || ms > MAX_CANARY_MS {
            return Err(at(format!("{ms} ms of audio; 1 ms to {MAX_CANARY_MS} ms")));
        }
        let samples: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().map_err(|x| at(x.to_string()))?;
        let opus = opus_variants(&samples, spec.sample_rate, &mut rng).map_err(|x| at(format!("Opus: {x}")))?;
        canaries.push(Canary {
            name: e.audio.clone(),
            src_lang: e.src_lang,
            tgt_lang: e.tgt_lang,
            text: e.text,
            translations,
            samples: Arc::from(samples),
            sample_rate: spec.sample_rate,
            opus,
        });
    }
    if canaries.is_empty() {
        return Err(err("no [[canary]] entries".into()));
    }
    Ok(CanarySet { canaries })
}

/// Opus versions of a canary encoded as the SDK encodes (24 kbit/s,
/// complexity 5), each padded with 0–240 ms of silence each side and
/// scaled by 85–100 %, so no two are byte-equal.
pub const OPUS_VARIANTS: usize = 6;

fn opus_variants(samples: &[i16], rate: u32, rng: &mut rand::rngs::StdRng) -> Result<Vec<(Arc<str>, u64)>, String> {
    use base64::Engine as _;
    (0..OPUS_VARIANTS)
        .map(|_| {
            let v = crate::core::trust::perturb(samples, rate, rng);
            let ogg = tolk_protocol::opus::encode(&v, rate, tolk_protocol::opus::OpusSettings::default()).map_err(|e| e.to_string())?;
            let ms = tolk_protocol::ogg_opus::inspect(&ogg).map_err(|e| e.to_string())?.duration_ms();
            Ok((Arc::from(base64::engine::general_purpose::STANDARD.encode(&ogg)), ms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(dir: &Path, name: &str, channels: u16, ms: u32) {
        let spec = hound::WavSpec { channels, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(dir.join(name), spec).unwrap();
        for i in 0..(16 * ms * u32::from(channels)) {
            w.write_sample(((i % 100) as i16 - 50) * 100).unwrap();
        }
        w.finalize().unwrap();
    }

    fn set(dir: &Path, body: &str) -> Result<CanarySet, Error> {
        std::fs::write(dir.join("canaries.toml"), body).unwrap();
        load(&dir.join("canaries.toml"))
    }

    #[test]
    fn loads_entries_and_refuses_what_it_cannot_use() {
        let dir = std::env::temp_dir().join(format!("tolk-canaries-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        wav(&dir, "ok.wav", 1, 500);
        wav(&dir, "stereo.wav", 2, 500);
        let entry = |audio: &str| {
            format!("[[canary]]\nsrc_lang = \"en\"\ntgt_lang = \"es\"\naudio = \"{audio}\"\ntext = \"hello\"\ntranslation = \"hola\"\n")
        };
        let s = set(&dir, &entry("ok.wav")).unwrap();
        assert_eq!((s.canaries.len(), s.canaries[0].samples.len(), s.canaries[0].sample_rate), (1, 8_000, 16_000));
        let e = set(&dir, &entry("stereo.wav")).unwrap_err().to_string();
        assert!(e.contains("canary 1 (stereo.wav)") && e.contains("mono"), "{e}");
        let e = set(&dir, &entry("missing.wav")).unwrap_err().to_string();
        assert!(e.contains("missing.wav"), "{e}");
        let e = set(&dir, "[[canary]]\nsrc_lang = \"en\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
        let e = set(&dir, &entry("ok.wav").replace("text = \"hello\"", "text = \"  \"")).unwrap_err().to_string();
        assert!(e.contains("must not be empty"), "{e}");
        // Several wordings of the translation; blank ones are dropped, none at all is refused.
        let s = set(&dir, &entry("ok.wav").replace("\"hola\"", "[\"hola\", \" \", \"buenas\"]")).unwrap();
        assert_eq!(s.canaries[0].translations, ["hola", "buenas"]);
        let e = set(&dir, &entry("ok.wav").replace("\"hola\"", "[\" \"]")).unwrap_err().to_string();
        assert!(e.contains("a translation is needed"), "{e}");
        let e = set(&dir, &entry("ok.wav").replace("\"hola\"", "[1]")).unwrap_err().to_string();
        assert!(e.contains("canary set"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_shipped_set_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("canaries/canaries.toml");
        let s = load(&path).unwrap();
        assert!(s.canaries.iter().any(|c| c.src_lang == "en" && c.tgt_lang == "es"));
        // Each canary also as Opus, in distinct variants of about its length.
        for c in &s.canaries {
            assert_eq!(c.opus.len(), OPUS_VARIANTS);
            let ms = c.samples.len() as u64 * 1000 / u64::from(c.sample_rate);
            assert!(
                c.opus.iter().all(|(_, m)| *m >= ms && *m <= ms + 520),
                "{}: {ms} vs {:?}",
                c.name,
                c.opus.iter().map(|v| v.1).collect::<Vec<_>>()
            );
            let distinct: std::collections::HashSet<&str> = c.opus.iter().map(|(b, _)| b.as_ref()).collect();
            assert_eq!(distinct.len(), OPUS_VARIANTS);
        }
    }
}
