//! `speech-rate`: syllables per second, estimated from the audio alone.
//!
//! Each syllable has a vowel nucleus, a local peak of loudness. The detector
//! takes a smoothed energy contour, counts peaks that stand out from the
//! dip before them, and divides by the time from the first to the last
//! loud frame. It needs no language model; it undercounts syllables that run
//! together without a dip and overcounts noisy bursts.

use tolk_plugin_sdk::detector_v0_1::{Detection, Detector, Features, PluginInfo};
use tolk_plugin_sdk::dsp;

struct SpeechRate;

/// Syllables per second of `samples`, or `None` when there is no speech.
fn syllable_rate(samples: &[i16], rate: u32) -> Option<f32> {
    let db = dsp::energy_db(samples, rate, 30, 5);
    let threshold = dsp::speech_threshold(&db, 25.0);
    let peaks = dsp::nuclei(&db, threshold, 2.0);
    let seconds = dsp::speech_seconds(&db, threshold);
    (seconds > 0.2 && !peaks.is_empty()).then(|| peaks.len() as f32 / seconds)
}

impl Detector for SpeechRate {
    fn info() -> PluginInfo {
        PluginInfo { name: "speech-rate".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn init(_config: &str) -> Result<Self, String> {
        Ok(SpeechRate)
    }

    fn provides() -> Features {
        Features::SPEECH_RATE
    }

    fn detect(&mut self, samples: &[i16], sample_rate: u32, wanted: Features) -> Result<Detection, String> {
        let speech_rate = if wanted.contains(Features::SPEECH_RATE) { syllable_rate(samples, sample_rate) } else { None };
        Ok(Detection { speech_rate, emotion: None, emotion_confidence: None, voice_style: None })
    }
}

tolk_plugin_sdk::export_detector_v0_1!(SpeechRate);
