//! Encoding and decoding Ogg Opus with libopus (feature `opus`): the SDK
//! encodes utterances and decodes results, the node decodes jobs and
//! encodes speech, the dispatcher's detectors decode. The container is
//! [`crate::ogg_opus`].

use crate::ProtocolError;
use crate::audio::Pcm;
use crate::ogg_opus::{self, GRANULE_RATE, OpusHead};

/// Rates libopus encodes and decodes at.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Every packet is 20 ms: Opus's sweet spot for speech (shorter frames cost
/// bits, longer ones latency the utterance framing does not need).
const FRAME_MS: u32 = 20;
/// libopus never writes a packet larger than this (RFC 6716: 1275 bytes a
/// frame, one frame a packet here).
const MAX_PACKET: usize = 1500;

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Target bitrate in bits per second (6000 to 510000).
    pub bitrate_bps: u32,
    /// libopus complexity, 0 (fastest) to 10 (best).
    pub complexity: u8,
}

impl Default for OpusSettings {
    fn default() -> Self {
        Self { bitrate_bps: 24_000, complexity: 5 }
    }
}

impl OpusSettings {
    /// Checks the ranges libopus accepts.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if !(6_000..=510_000).contains(&self.bitrate_bps) {
            return Err(ProtocolError::invalid_field("bitrate_bps", "Opus bitrate must be 6000 to 510000 bit/s"));
        }
        if self.complexity > 10 {
            return Err(ProtocolError::invalid_field("complexity", "Opus complexity must be 0 to 10"));
        }
        Ok(())
    }
}

fn codec_error(what: &str, e: opus::Error) -> ProtocolError {
    ProtocolError::invalid_field("audio", format!("{what}: {}", e.description()))
}

/// The Opus rate to code audio captured at `rate` with: the rate itself when
/// Opus has it, else the next higher one (22.05 kHz → 24 kHz, 44.1 → 48).
pub fn coding_rate(rate: u32) -> u32 {
    OPUS_RATES.iter().copied().find(|&r| r >= rate).unwrap_or(48_000)
}

/// Linear-interpolation resampling (for rates Opus lacks; speech only).
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() || from == 0 {
        return samples.to_vec();
    }
    let out_len = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let j = pos as usize;
            let frac = pos - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// Encodes mono `samples` captured at `sample_rate` as one Ogg Opus stream.
pub fn encode(samples: &[i16], sample_rate: u32, settings: OpusSettings) -> Result<Vec<u8>, ProtocolError> {
    settings.validate()?;
    if sample_rate == 0 {
        return Err(ProtocolError::invalid_field("sample_rate", "sample_rate must be positive"));
    }
    let rate = coding_rate(sample_rate);
    let resampled;
    let input: &[i16] = if rate == sample_rate {
        samples
    } else {
        resampled = resample(samples, sample_rate, rate);
        &resampled
    };
    let mut enc = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).map_err(|e| codec_error("opus encoder", e))?;
    enc.set_bitrate(opus::Bitrate::Bits(settings.bitrate_bps as i32)).map_err(|e| codec_error("opus bitrate", e))?;
    enc.set_complexity(i32::from(settings.complexity)).map_err(|e| codec_error("opus complexity", e))?;
    enc.set_signal(opus::Signal::Voice).map_err(|e| codec_error("opus signal", e))?;
    // The encoder's look-ahead, at its own rate: the decoder skips it.
    let lookahead = enc.get_lookahead().map_err(|e| codec_error("opus lookahead", e))?.max(0) as usize;
    let frame = (rate * FRAME_MS / 1000) as usize;
    // Feed the look-ahead's worth of silence after the audio, so its tail
    // comes out before the stream ends.
    let needed = input.len() + lookahead;
    let frames = needed.div_ceil(frame).max(1);
    let mut packets = Vec::with_capacity(frames);
    let mut buf = vec![0i16; frame];
    let mut out = [0u8; MAX_PACKET];
    for f in 0..frames {
        let from = (f * frame).min(input.len());
        let to = ((f + 1) * frame).min(input.len());
        buf.fill(0);
        buf[..to - from].copy_from_slice(&input[from..to]);
        let n = enc.encode(&buf, &mut out).map_err(|e| codec_error("opus encode", e))?;
        packets.push(out[..n].to_vec());
    }
    let scale = u64::from(GRANULE_RATE / rate);
    let head =
        OpusHead { pre_skip: (lookahead as u64 * scale).min(u64::from(u16::MAX)) as u16, input_sample_rate: sample_rate, output_gain: 0 };
    Ok(ogg_opus::mux(&head, &packets, input.len() as u64 * scale))
}

/// Decodes one Ogg Opus stream (validated by [`ogg_opus::inspect`]) to mono
/// PCM at the Opus rate nearest `sample_rate` (the rate itself when Opus has
/// it, else the next higher): pre-skip dropped, end trimmed to the final
/// granule position. Decoded length is bounded by the stream's granule
/// position, which `inspect` bounds.
pub fn decode(bytes: &[u8], sample_rate: u32) -> Result<Pcm, ProtocolError> {
    let stream = ogg_opus::inspect(bytes)?;
    let rate = coding_rate(sample_rate);
    let scale = (GRANULE_RATE / rate) as usize;
    let mut dec = opus::Decoder::new(rate, opus::Channels::Mono).map_err(|e| codec_error("opus decoder", e))?;
    let mut samples: Vec<i16> = Vec::with_capacity((stream.final_granule as usize / scale).min(1 << 24));
    let mut buf = vec![0i16; 5760 / scale];
    for (i, p) in stream.packets.iter().enumerate() {
        let n = dec.decode(p, &mut buf, false).map_err(|e| codec_error(&format!("audio packet {i} does not decode"), e))?;
        samples.extend_from_slice(&buf[..n]);
    }
    let skip = usize::from(stream.head.pre_skip) / scale;
    let keep = stream.samples_48k() as usize / scale;
    let end = (skip + keep).min(samples.len());
    let samples = samples.get(skip..end).map(<[i16]>::to_vec).unwrap_or_default();
    Ok(Pcm { sample_rate: rate, samples })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 ms of silence, then a two-tone signal.
    fn tone(rate: u32, ms: u32) -> Vec<i16> {
        (0..rate * ms / 1000)
            .map(|i| {
                if i < rate * 3 / 10 {
                    return 0;
                }
                let t = f64::from(i) / f64::from(rate);
                ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0 + (t * 1250.0 * std::f64::consts::TAU).sin() * 3000.0) as i16
            })
            .collect()
    }

    fn snr_db(reference: &[i16], got: &[i16]) -> f64 {
        let n = reference.len().min(got.len());
        let signal: f64 = reference[..n].iter().map(|&s| f64::from(s).powi(2)).sum();
        let noise: f64 = reference[..n].iter().zip(&got[..n]).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        10.0 * (signal / noise.max(1.0)).log10()
    }

    #[test]
    fn round_trip_keeps_length_and_signal() {
        for rate in [8_000, 16_000, 24_000, 48_000] {
            let input = tone(rate, 1_230);
            let bytes = encode(&input, rate, OpusSettings { bitrate_bps: 32_000, complexity: 10 }).unwrap();
            let info = ogg_opus::inspect(&bytes).unwrap();
            assert_eq!(info.head.input_sample_rate, rate);
            assert_eq!(info.duration_ms(), 1_230);
            let pcm = decode(&bytes, rate).unwrap();
            assert_eq!(pcm.sample_rate, rate);
            assert_eq!(pcm.samples.len(), input.len(), "exact length at {rate} Hz");
            // Pre-skip is right when the decoded audio lines up with the
            // input: the tone starts within 2 ms of where it did.
            let onset = |x: &[i16]| x.iter().position(|s| s.unsigned_abs() > 4000);
            let (want, got) = (onset(&input).unwrap(), onset(&pcm.samples).unwrap());
            assert!(want.abs_diff(got) <= rate as usize / 500, "{rate} Hz: onset at {got}, not {want}");
            let snr = snr_db(&input, &pcm.samples);
            assert!(snr > 5.0, "{rate} Hz: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn rates_opus_lacks_are_resampled() {
        let input = tone(22_050, 500);
        let bytes = encode(&input, 22_050, OpusSettings::default()).unwrap();
        assert_eq!(ogg_opus::inspect(&bytes).unwrap().head.input_sample_rate, 22_050);
        let pcm = decode(&bytes, 22_050).unwrap();
        assert_eq!(pcm.sample_rate, 24_000);
        assert_eq!(pcm.samples.len(), 12_000);
    }

    #[test]
    fn bitrate_sets_size() {
        let input = tone(16_000, 4_000);
        let size = |bps| encode(&input, 16_000, OpusSettings { bitrate_bps: bps, complexity: 5 }).unwrap().len();
        let (small, large) = (size(16_000), size(32_000));
        assert!(small < large, "{small} < {large}");
        // Within 30 % of the target (VBR; plus the container's overhead).
        let target = 16_000 / 8 * 4;
        assert!((small as f64) < target as f64 * 1.3, "{small} bytes for {target}");
    }

    #[test]
    fn settings_are_checked() {
        assert!(encode(&[0; 160], 16_000, OpusSettings { bitrate_bps: 1_000, complexity: 5 }).is_err());
        assert!(encode(&[0; 160], 16_000, OpusSettings { bitrate_bps: 24_000, complexity: 11 }).is_err());
        assert!(encode(&[], 16_000, OpusSettings::default()).is_ok(), "an empty utterance is a valid (silent) stream");
    }

    #[test]
    fn garbage_packets_fail_to_decode_cleanly() {
        // A valid container around a packet libopus rejects (a code-3 packet
        // whose padding runs past its end).
        let head = OpusHead { pre_skip: 0, input_sample_rate: 16_000, output_gain: 0 };
        let bytes = ogg_opus::mux(&head, &[vec![(31 << 3) | 3, 0x41, 0xff, 0xff]], 960);
        assert!(ogg_opus::inspect(&bytes).is_ok());
        let e = decode(&bytes, 16_000).unwrap_err();
        assert!(e.message.contains("does not decode"), "{}", e.message);
    }
}
