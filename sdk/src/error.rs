//! The crate's one error type.

/// Everything that can go wrong in `tolk-sdk`.
///
/// Today only configuration is checked; the session client will add its own
/// variants here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// `webrtc-vad` only handles 8, 16, 32 and 48 kHz.
    #[error("unsupported sample rate {0} Hz (expected 8000, 16000, 32000 or 48000)")]
    UnsupportedSampleRate(u32),
    /// `webrtc-vad` only handles frames of 10, 20 or 30 ms.
    #[error("unsupported VAD frame length {0} ms (expected 10, 20 or 30)")]
    UnsupportedFrameLength(u32),
    /// Aggressiveness is a `webrtc-vad` mode, 0 to 3.
    #[error("VAD aggressiveness {0} out of range (expected 0 to 3)")]
    InvalidAggressiveness(u8),
    /// A duration setting is out of range or inconsistent with another.
    #[error("invalid chunker setting `{field}`: {reason}")]
    InvalidConfig {
        /// The `ChunkerConfig` field at fault.
        field: &'static str,
        /// Why, in a few words.
        reason: &'static str,
    },
}
