//! The crate's one error type.

/// Everything that can go wrong in `tolk-sdk`.
///
/// Configuration errors come back from constructors. Errors that happen while
/// a session runs (the server refusing the session, an `error` frame, a bad
/// frame, a full buffer) reach the app as [`Event::Error`](crate::Event::Error)
/// carrying one of these. Connection trouble is not an error: it is a
/// [`ConnectionState`](crate::ConnectionState) change with its reason, and the
/// client reconnects by itself.
///
/// Messages name the problem, never personal data: no audio, no transcript.
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
    /// A session or client setting is invalid (a language tag, the URL, a
    /// timing, a certificate).
    #[error("invalid client setting `{field}`: {reason}")]
    InvalidClientConfig {
        /// The setting at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// PCM16 given as bytes must have an even length.
    #[error("pcm16 audio has an odd number of bytes ({0})")]
    OddPcmLength(usize),
    /// The client is closed (or closing): it takes no more audio.
    #[error("the client is closed")]
    Closed,
    /// The client's command queue is full: its worker thread is not keeping
    /// up (it never should; the chunker runs thousands of times real time).
    #[error("the client is busy: its command queue is full")]
    Busy,
    /// The server refused to open the session (bad pairing code, unsupported
    /// feature, ...). The client stops: retrying would give the same answer.
    #[error("the server refused the session: {code}: {message}")]
    SessionRefused {
        /// The protocol error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// An `error` frame from the server that is not an utterance's outcome.
    #[error("server error {code}: {message}")]
    Server {
        /// The protocol error code.
        code: String,
        /// The server's message.
        message: String,
        /// `details.field`, when the server named one.
        field: Option<String>,
    },
    /// A frame from the server that does not parse; it is ignored.
    #[error("bad frame from the server: {0}")]
    BadFrame(String),
    /// Audio could not be encoded (a bad Opus setting) or a result's speech
    /// could not be decoded (bad Opus from the server).
    #[error("audio codec: {0}")]
    Audio(String),
    /// An utterance was not taken: the buffer of unanswered utterances is full
    /// (the server is unreachable for long, or slower than the speaker).
    #[error("utterance dropped: {0}")]
    BufferFull(String),
}

impl SdkError {
    pub(crate) fn client_config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidClientConfig { field: field.into(), reason: reason.into() }
    }
}
