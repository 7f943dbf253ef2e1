//! Types shared by the session and node protocols.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares a string-valued enum with known values and an `Other` catch-all, so
/// that a peer's newer values still parse (forward compatibility) while ours are
/// typed.
macro_rules! open_string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(from = "String", into = "String")]
        #[schemars(with = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this version does not know.
            Other(String),
        }

        impl $name {
            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

open_string_enum! {
    /// Codes of the `error` message, in both protocols.
    ErrorCode {
        /// A frame that does not parse or validate; `details.field` names the field.
        InvalidMessage = "INVALID_MESSAGE",
        /// Unknown or expired session, or a session used from another connection.
        InvalidSession = "INVALID_SESSION",
        /// A server fault; the message says nothing of internals.
        InternalError = "INTERNAL_ERROR",
        /// No eligible node could run the utterance.
        NodeUnavailable = "NODE_UNAVAILABLE",
        /// A requested feature that nothing can provide.
        UnsupportedFeature = "UNSUPPORTED_FEATURE",
        /// A pairing code that is unknown or expired.
        InvalidPairingCode = "INVALID_PAIRING_CODE",
        /// Extension: a node identity claimed without its token, or a bad registration secret.
        Unauthorized = "UNAUTHORIZED",
        /// Extension: too many wrong pairing codes from one address.
        RateLimited = "RATE_LIMITED",
        /// Extension 12: an utterance's audio is not what its `audio_format`
        /// says (e.g. a truncated Ogg Opus stream); the message says why.
        InvalidAudio = "INVALID_AUDIO",
    }
}

open_string_enum! {
    /// Codes of a failed `job_result`.
    JobErrorCode {
        /// A model the pipeline needs is missing or disabled.
        ModelNotAvailable = "MODEL_NOT_AVAILABLE",
        /// The job's audio could not be decoded.
        InvalidAudio = "INVALID_AUDIO",
        /// An inference engine failed.
        InferenceBackendError = "INFERENCE_BACKEND_ERROR",
        /// Extension: the node is at capacity or draining; run it elsewhere.
        NodeBusy = "NODE_BUSY",
        /// Extension: the node gave up on the job at its deadline.
        Timeout = "TIMEOUT",
    }
}

impl JobErrorCode {
    /// Whether another node might succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidAudio)
    }
}

open_string_enum! {
    /// The stage a model serves.
    ModelKind {
        /// Speech recognition: `src_lang` is the language heard.
        Asr = "asr",
        /// Translation from `src_lang` to `tgt_lang`.
        Nmt = "nmt",
        /// Speech synthesis: `src_lang` is the language spoken.
        Tts = "tts",
    }
}

/// Audio encodings carried in `audio` and `tts_audio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    /// Raw signed 16-bit little-endian mono samples.
    Pcm16,
    /// A RIFF/WAVE file (PCM 16-bit).
    Wav,
    /// Extension 12: one Ogg Opus stream (RFC 7845), mono, per utterance
    /// or result; relayed unchanged, validated and measured by the dispatcher.
    Opus,
}

impl AudioFormat {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pcm16 => "pcm16",
            Self::Wav => "wav",
            Self::Opus => "opus",
        }
    }
}

/// Optional analysis modules a session asks for and a node supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Features {
    #[serde(default)]
    pub emotion_detection: bool,
    #[serde(default)]
    pub voice_style_detection: bool,
    #[serde(default)]
    pub speech_rate_detection: bool,
}

impl Features {
    /// Features requested here that `supported` lacks.
    pub fn missing_from(self, supported: Features) -> Features {
        Features {
            emotion_detection: self.emotion_detection && !supported.emotion_detection,
            voice_style_detection: self.voice_style_detection && !supported.voice_style_detection,
            speech_rate_detection: self.speech_rate_detection && !supported.speech_rate_detection,
        }
    }

    /// Whether no feature is requested.
    pub fn is_empty(self) -> bool {
        !(self.emotion_detection || self.voice_style_detection || self.speech_rate_detection)
    }
}

/// Outputs of the optional modules; each is null (or absent) when not enabled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Extra {
    #[serde(default)]
    pub emotion: Option<String>,
    /// Speech rate relative to a typical speaker (1.0), or syllables per second
    /// when produced by the dispatcher's detector (see the protocol document).
    #[serde(default)]
    pub speech_rate: Option<f64>,
    #[serde(default)]
    pub voice_style: Option<String>,
}

/// The `error` message, sent to session clients and to nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
    /// Extension: `field` names the offending field; `utterance_index` names the
    /// utterance whose outcome this error is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorMessage {
    /// An error that is the outcome of one utterance.
    pub fn for_utterance(code: ErrorCode, message: impl Into<String>, utterance_index: u64) -> Self {
        Self { code, message: message.into(), details: Some(serde_json::json!({ "utterance_index": utterance_index })) }
    }

    /// The `details.utterance_index`, when this error is an utterance's outcome.
    pub fn utterance_index(&self) -> Option<u64> {
        self.details.as_ref()?.get("utterance_index")?.as_u64()
    }
}
