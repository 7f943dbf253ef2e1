//! The session protocol: phone (or web page) ↔ dispatcher, on `/ws/session`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Base64Audio;
use crate::ProtocolError;
use crate::common::{AudioFormat, ErrorMessage, Extra, Features};
use crate::validate::{self as v, Validate};

/// The platform a session client runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientPlatform {
    Ios,
    Android,
    Web,
}

/// Client → server: open a session, or resume one (extension 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInit {
    pub client_version: String,
    pub platform: ClientPlatform,
    pub src_lang: String,
    pub tgt_lang: String,
    #[serde(default)]
    pub dialect: Option<String>,
    #[serde(default)]
    pub features: Option<Features>,
    /// Six digits that bind the session to one node (extension 5).
    #[serde(default)]
    pub pairing_code: Option<String>,
    /// Extension: the session to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Extension: the secret from `session_init_ack` that proves ownership of `session_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// Extension: the highest index whose outcome the client has received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_utterance_index: Option<u64>,
    /// Extension 12: the format the client wants its results' speech in
    /// (`pcm16`, `wav` or `opus`); absent, the node's choice (wav).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_format: Option<AudioFormat>,
}

/// Server → client: the session is open (or resumed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInitAck {
    pub session_id: String,
    /// The node a pairing code bound the session to.
    #[serde(default)]
    pub assigned_node_id: Option<String>,
    #[serde(default)]
    pub message: String,
    /// Extension: present this with `session_id` to resume after a disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
}

/// Client → server: one utterance's audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Utterance {
    pub session_id: String,
    /// Increments per utterance within the session; results come back in this order.
    pub utterance_index: u64,
    #[serde(default)]
    pub manual_cut: bool,
    pub src_lang: String,
    pub tgt_lang: String,
    #[serde(default)]
    pub dialect: Option<String>,
    /// Overrides the session's features for this utterance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Base64 audio, relayed to the node byte for byte.
    pub audio: Base64Audio,
    pub audio_format: AudioFormat,
    pub sample_rate: u32,
}

/// Server → client: the outcome of one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TranslationResult {
    pub session_id: String,
    pub utterance_index: u64,
    pub job_id: String,
    #[serde(default)]
    pub text_asr: String,
    #[serde(default)]
    pub text_translated: String,
    #[serde(default)]
    pub tts_audio: Option<Base64Audio>,
    #[serde(default)]
    pub tts_format: Option<AudioFormat>,
    /// Extension: the sample rate of `tts_audio` (needed for `pcm16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_sample_rate: Option<u32>,
    #[serde(default)]
    pub extra: Option<Extra>,
}

/// Client → server: application-level heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientHeartbeat {
    pub session_id: String,
    /// Milliseconds since the Unix epoch, by the client's clock.
    pub timestamp: u64,
    /// Extension: the highest index whose outcome the client has received, so
    /// the server can drop what is confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_utterance_index: Option<u64>,
}

/// Server → client: heartbeat answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerHeartbeat {
    pub session_id: String,
    /// Milliseconds since the Unix epoch, by the server's clock.
    pub timestamp: u64,
}

/// Client → server: end the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionClose {
    pub session_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Server → client: the session is closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionCloseAck {
    pub session_id: String,
}

crate::direction_enum! {
    /// Every message a session client sends.
    ClientToServer {
        SessionInit("session_init"),
        Utterance("utterance"); bulk audio,
        ClientHeartbeat("client_heartbeat"),
        SessionClose("session_close"),
    }
}

crate::direction_enum! {
    /// Every message the server sends to a session client.
    ServerToClient {
        SessionInitAck("session_init_ack"),
        TranslationResult("translation_result"); bulk tts_audio optional,
        ServerHeartbeat("server_heartbeat"),
        SessionCloseAck("session_close_ack"),
        Error("error") = ErrorMessage,
    }
}

impl Validate for SessionInit {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::text("client_version", &self.client_version)?;
        v::lang("src_lang", &self.src_lang)?;
        v::lang("tgt_lang", &self.tgt_lang)?;
        v::opt_lang("dialect", self.dialect.as_deref())?;
        if let Some(code) = &self.pairing_code {
            v::pairing_code("pairing_code", code)?;
        }
        v::opt_id("session_id", self.session_id.as_deref())?;
        v::opt_id("resume_token", self.resume_token.as_deref())?;
        if self.session_id.is_some() != self.resume_token.is_some() {
            let field = if self.session_id.is_some() { "resume_token" } else { "session_id" };
            return Err(ProtocolError::invalid_field(field, "resuming needs both session_id and resume_token"));
        }
        Ok(())
    }
}

impl Validate for SessionInitAck {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)?;
        v::opt_id("assigned_node_id", self.assigned_node_id.as_deref())?;
        v::text("message", &self.message)?;
        v::opt_id("resume_token", self.resume_token.as_deref())
    }
}

impl Validate for Utterance {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)?;
        v::lang("src_lang", &self.src_lang)?;
        v::lang("tgt_lang", &self.tgt_lang)?;
        v::opt_lang("dialect", self.dialect.as_deref())?;
        v::sample_rate("sample_rate", self.sample_rate)?;
        if self.audio.is_empty() {
            return Err(ProtocolError::invalid_field("audio", "audio must not be empty"));
        }
        Ok(())
    }
}

impl Validate for TranslationResult {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)?;
        v::id("job_id", &self.job_id)
    }
}

impl Validate for ClientHeartbeat {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)
    }
}

impl Validate for ServerHeartbeat {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)
    }
}

impl Validate for SessionClose {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)?;
        self.reason.as_deref().map_or(Ok(()), |r| v::text("reason", r))
    }
}

impl Validate for SessionCloseAck {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::id("session_id", &self.session_id)
    }
}

impl Validate for ErrorMessage {
    fn validate(&self) -> Result<(), ProtocolError> {
        v::text("message", &self.message)
    }
}
