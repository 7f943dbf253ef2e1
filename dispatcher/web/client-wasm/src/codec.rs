//! The web client's side of the SDK's codec seam (`sdk/src/codec.rs` is the
//! native one): the session encodes pcm16 and wav here; Opus is encoded by
//! the page (WebCodecs `AudioEncoder`, Ogg muxed in `app.js`) and fed back
//! as `Input::Encoded`, and Opus results are decoded by the browser
//! (`decodeAudioData`), so the session is configured never to ask for
//! either. No libopus in the module: it would triple its size.

use tolk_protocol::AudioFormat;

use crate::SdkError;
use crate::session::AudioEncoding;

const BY_THE_PAGE: &str = "Opus is encoded and decoded by the page in the browser";

pub(crate) fn validate(encoding: AudioEncoding) -> Result<(), SdkError> {
    match encoding {
        AudioEncoding::Opus { .. } => Err(SdkError::client_config("audio_encoding", BY_THE_PAGE)),
        AudioEncoding::Pcm16 | AudioEncoding::Wav => Ok(()),
    }
}

pub(crate) fn encode(encoding: AudioEncoding, samples: &[i16], sample_rate: u32) -> Result<(Vec<u8>, AudioFormat), SdkError> {
    match encoding {
        AudioEncoding::Pcm16 => Ok((tolk_protocol::audio::encode_pcm16(samples), AudioFormat::Pcm16)),
        AudioEncoding::Wav => Ok((tolk_protocol::audio::encode_wav(samples, sample_rate), AudioFormat::Wav)),
        AudioEncoding::Opus { .. } => Err(SdkError::Audio(BY_THE_PAGE.into())),
    }
}

pub(crate) fn decode_opus(_bytes: &[u8], _sample_rate: u32) -> Result<(Vec<i16>, u32), SdkError> {
    Err(SdkError::Audio(BY_THE_PAGE.into()))
}
