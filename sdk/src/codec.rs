//! The session's audio codecs: what [`Session`](crate::Session) calls to
//! put an utterance on the wire and to turn Opus results into PCM. Native
//! builds use libopus (`tolk_protocol::opus`); the web client
//! (`dispatcher/web/client-wasm`) supplies its own module of the same
//! functions, since the page encodes and decodes Opus in the browser.

use tolk_protocol::AudioFormat;
use tolk_protocol::opus::{self, OpusSettings};

use crate::SdkError;
use crate::session::AudioEncoding;

fn settings(bitrate_bps: u32, complexity: u8) -> OpusSettings {
    OpusSettings { bitrate_bps, complexity }
}

/// Checks an encoding's settings (at configuration time).
pub(crate) fn validate(encoding: AudioEncoding) -> Result<(), SdkError> {
    match encoding {
        AudioEncoding::Opus { bitrate_bps, complexity } => {
            settings(bitrate_bps, complexity).validate().map_err(|e| SdkError::client_config(e.field.unwrap_or_default(), e.message))
        }
        AudioEncoding::Pcm16 | AudioEncoding::Wav => Ok(()),
    }
}

/// One utterance's bytes in `encoding`, and the format they are in.
pub(crate) fn encode(encoding: AudioEncoding, samples: &[i16], sample_rate: u32) -> Result<(Vec<u8>, AudioFormat), SdkError> {
    Ok(match encoding {
        AudioEncoding::Pcm16 => (tolk_protocol::audio::encode_pcm16(samples), AudioFormat::Pcm16),
        AudioEncoding::Wav => (tolk_protocol::audio::encode_wav(samples, sample_rate), AudioFormat::Wav),
        AudioEncoding::Opus { bitrate_bps, complexity } => (
            opus::encode(samples, sample_rate, settings(bitrate_bps, complexity)).map_err(|e| SdkError::Audio(e.message))?,
            AudioFormat::Opus,
        ),
    })
}

/// Samples and their rate of one Ogg Opus stream, decoded at the Opus rate
/// nearest `sample_rate`.
pub(crate) fn decode_opus(bytes: &[u8], sample_rate: u32) -> Result<(Vec<i16>, u32), SdkError> {
    let pcm = opus::decode(bytes, sample_rate).map_err(|e| SdkError::Audio(format!("tts_audio: {}", e.message)))?;
    Ok((pcm.samples, pcm.sample_rate))
}
