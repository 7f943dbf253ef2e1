//! `emotion`: calm, neutral or excited, from prosody.
//!
//! What it measures is *arousal*: excited speech is higher, more varied in
//! pitch, louder and faster than calm speech. It combines four measures of
//! the utterance — median pitch, pitch spread (semitones), loudness of voiced
//! frames and syllable rate — each scaled against a reference speaker, into
//! one score; the label follows the score's sign and the confidence its size.
//!
//! What it cannot tell: valence (happy and angry are both "excited"; sad and
//! relaxed both "calm"), anything about a speaker whose normal voice is far
//! from the reference (a high voice reads as more excited: set
//! `reference_pitch_hz`), or loudness that comes from microphone gain. It is
//! a prosody heuristic, not a trained classifier.
//!
//! Configuration: `reference_pitch_hz = 120.0`, `margin = 0.5`.

use tolk_plugin_sdk::detector::{Detection, Detector, Features, PluginInfo};
use tolk_plugin_sdk::dsp;

struct Emotion {
    reference_pitch_hz: f32,
    margin: f32,
}

struct Prosody {
    median_pitch: f32,
    pitch_spread_st: f32,
    voiced_db: f32,
    syllables_per_s: f32,
}

fn prosody(samples: &[i16], rate: u32) -> Option<Prosody> {
    let db = dsp::energy_db(samples, rate, 30, 5);
    let threshold = dsp::speech_threshold(&db, 25.0);
    let seconds = dsp::speech_seconds(&db, threshold);
    if seconds < 0.3 {
        return None;
    }
    let syllables_per_s = dsp::nuclei(&db, threshold, 2.0).len() as f32 / seconds;
    let loud: Vec<f32> = db.iter().copied().filter(|&d| d > threshold).collect();
    let voiced_db = loud.iter().sum::<f32>() / loud.len().max(1) as f32;
    let mut pitches: Vec<f32> = dsp::pitch_track(samples, rate, threshold - 3.0).into_iter().flatten().collect();
    if pitches.len() < 5 {
        return None;
    }
    pitches.sort_by(f32::total_cmp);
    let median_pitch = pitches[pitches.len() / 2];
    let (p10, p90) = (pitches[pitches.len() / 10], pitches[pitches.len() * 9 / 10]);
    let pitch_spread_st = 12.0 * (p90 / p10.max(1.0)).log2();
    Some(Prosody { median_pitch, pitch_spread_st, voiced_db, syllables_per_s })
}

impl Emotion {
    /// Arousal score: 0 for the reference speaker's ordinary speech.
    fn score(&self, p: &Prosody) -> f32 {
        let pitch = 12.0 * (p.median_pitch / self.reference_pitch_hz).log2() / 4.0; // 4 semitones = 1
        let spread = (p.pitch_spread_st - 4.0) / 3.0;
        let loudness = (p.voiced_db - 70.0) / 6.0;
        let rate = (p.syllables_per_s - 4.0) / 1.5;
        0.35 * pitch + 0.2 * spread + 0.25 * loudness + 0.2 * rate
    }
}

fn setting(config: &str, key: &str) -> Result<Option<f32>, String> {
    for line in config.lines() {
        if let Some(rest) = line.trim().strip_prefix(key) {
            let v = rest.trim_start_matches([' ', '=']).trim();
            return v.parse().map(Some).map_err(|_| format!("{key}: not a number: {v}"));
        }
    }
    Ok(None)
}

impl Detector for Emotion {
    fn info() -> PluginInfo {
        PluginInfo { name: "emotion".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(config: &str) -> Result<Self, String> {
        Ok(Emotion {
            reference_pitch_hz: setting(config, "reference_pitch_hz")?.unwrap_or(120.0),
            margin: setting(config, "margin")?.unwrap_or(0.5),
        })
    }

    fn provides() -> Features {
        Features::EMOTION
    }

    fn detect(&mut self, samples: &[i16], sample_rate: u32, wanted: Features) -> Result<Detection, String> {
        let none = Detection { speech_rate: None, emotion: None, emotion_confidence: None, voice_style: None };
        if !wanted.contains(Features::EMOTION) {
            return Ok(none);
        }
        let Some(p) = prosody(samples, sample_rate) else { return Ok(none) };
        let score = self.score(&p);
        let label = if score > self.margin {
            "excited"
        } else if score < -self.margin {
            "calm"
        } else {
            "neutral"
        };
        let confidence = 1.0 / (1.0 + (-(score.abs() - self.margin) * 3.0).exp());
        tolk_plugin_sdk::log::debug(&format!(
            "pitch {:.0} Hz spread {:.1} st loudness {:.1} dB rate {:.1}/s score {score:.2}",
            p.median_pitch, p.pitch_spread_st, p.voiced_db, p.syllables_per_s
        ));
        Ok(Detection { emotion: Some(label.into()), emotion_confidence: Some(confidence), ..none })
    }
}

tolk_plugin_sdk::export_detector!(Emotion);
