//! The one error type of this crate: what was wrong with a frame, as a protocol
//! error code plus the offending field, ready to be sent back as an `error`.

use crate::common::{ErrorCode, ErrorMessage};

/// A frame that could not be accepted.
///
/// `Display` is safe to send to a peer: it names the problem and the field,
/// never internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// The protocol code to answer with (`INVALID_MESSAGE` for every parse error).
    pub code: ErrorCode,
    /// Dotted path of the offending field (`features.emotion_detection`,
    /// `installed_models[0].kind`), when there is one.
    pub field: Option<String>,
    /// A readable explanation.
    pub message: String,
}

impl ProtocolError {
    /// An `INVALID_MESSAGE` error about `field`.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidMessage, field: Some(field.into()), message: message.into() }
    }

    /// An `INVALID_MESSAGE` error about the frame as a whole.
    pub fn invalid_frame(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidMessage, field: None, message: message.into() }
    }

    /// The error for a binary WebSocket frame: the protocol is JSON text only.
    pub fn binary_frame() -> Self {
        Self::invalid_frame("binary frames are not accepted: send JSON text frames")
    }

    /// The error for a frame larger than the receiver accepts.
    pub fn frame_too_large(len: usize, max: usize) -> Self {
        Self::invalid_frame(format!("frame of {len} bytes exceeds the limit of {max} bytes"))
    }

    /// The `error` message to send back for this error.
    pub fn to_message(&self) -> ErrorMessage {
        let details = self.field.as_ref().map(|f| serde_json::json!({ "field": f }));
        ErrorMessage { code: self.code.clone(), message: self.message.clone(), details }
    }
}
