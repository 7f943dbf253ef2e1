//! Decoding and encoding of utterance audio, for those that need samples (the
//! dispatcher's detectors, nodes, the SDK). Relays never call this. Opus
//! needs the `opus` feature (libopus).

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{AudioFormat, ProtocolError};

/// Mono 16-bit samples at a known rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcm {
    pub sample_rate: u32,
    pub samples: Vec<i16>,
}

impl Pcm {
    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        if self.sample_rate == 0 {
            return 0;
        }
        self.samples.len() as u64 * 1000 / u64::from(self.sample_rate)
    }
}

fn audio_error(message: impl Into<String>) -> ProtocolError {
    ProtocolError::invalid_field("audio", message)
}

/// Decodes base64 `audio` of `format`, checking it against the declared
/// `sample_rate`. Multi-channel wav is mixed down to mono.
pub fn decode_base64(audio: &str, format: AudioFormat, sample_rate: u32) -> Result<Pcm, ProtocolError> {
    decode_bytes(&from_base64(audio)?, format, sample_rate)
}

/// Decodes raw `bytes` of `format`; see [`decode_base64`]. Opus (with the
/// `opus` feature) comes out at the Opus rate nearest `sample_rate`
/// ([`crate::opus::decode`]): read `Pcm::sample_rate`.
pub fn decode_bytes(bytes: &[u8], format: AudioFormat, sample_rate: u32) -> Result<Pcm, ProtocolError> {
    match format {
        AudioFormat::Pcm16 => {
            if !bytes.len().is_multiple_of(2) {
                return Err(audio_error("pcm16 audio has an odd number of bytes"));
            }
            let samples = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
            Ok(Pcm { sample_rate, samples })
        }
        AudioFormat::Wav => decode_wav(bytes, sample_rate),
        #[cfg(feature = "opus")]
        AudioFormat::Opus => crate::opus::decode(bytes, sample_rate),
        #[cfg(not(feature = "opus"))]
        AudioFormat::Opus => Err(audio_error("opus audio cannot be decoded here (built without the `opus` feature)")),
    }
}

fn decode_wav(bytes: &[u8], sample_rate: u32) -> Result<Pcm, ProtocolError> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| audio_error(format!("audio is not a valid wav file: {e}")))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(audio_error("wav audio must be 16-bit integer PCM"));
    }
    if spec.sample_rate != sample_rate {
        return Err(ProtocolError::invalid_field(
            "sample_rate",
            format!("sample_rate {sample_rate} does not match the wav header's {}", spec.sample_rate),
        ));
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|e| audio_error(format!("wav audio is truncated or corrupt: {e}")))?;
    let samples = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|frame| {
                let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
                // The mean of i16 values always fits an i16.
                (sum / channels as i32) as i16
            })
            .collect()
    };
    Ok(Pcm { sample_rate, samples })
}

/// Little-endian pcm16 bytes of `samples`.
pub fn encode_pcm16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A mono 16-bit wav file of `samples`.
pub fn encode_wav(samples: &[i16], sample_rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&encode_pcm16(samples));
    out
}

/// The bytes of base64 `audio` (undecoded audio, e.g. an Ogg Opus stream).
pub fn from_base64(audio: &str) -> Result<Vec<u8>, ProtocolError> {
    STANDARD.decode(audio).map_err(|e| audio_error(format!("audio is not valid base64: {e}")))
}

/// Base64 text of `bytes`, as the protocol carries audio.
pub fn to_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}
