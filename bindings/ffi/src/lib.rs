//! `tolk-ffi`: the Tolk client SDK for Kotlin (Android), Swift (iOS) and
//! Python, through uniffi proc-macros.
//!
//! A thin layer over [`tolk_sdk::Client`] with no logic of its own: it
//! converts settings in and events out, and maps [`tolk_sdk::SdkError`] to
//! the small public [`TolkError`] in one place ([`From`]). The app creates a
//! [`TolkClient`] with a [`TolkConfig`] and a [`TolkListener`], feeds it
//! microphone audio with [`TolkClient::push_audio`] (little-endian PCM16
//! **bytes**: a byte array crosses the FFI in one copy, a `List<Short>`
//! element by element, 5–100× slower), and hears utterances, results (in
//! order), failures, errors and connection changes through the listener,
//! called on the client's worker thread.
//!
//! # Layout
//! - [`TolkConfig`]: every setting, with the SDK's defaults.
//! - [`TolkClient`]: the object (`push_audio`, `cut`, `close`, `wait_closed`).
//! - [`TolkListener`]: the callback interface the app implements.
//! - [`TolkError`]: the error enum; every variant carries a readable
//!   `message`.
//! - the records and enums the listener receives.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tolk_sdk::{ChunkerConfig, ClientConfig, Event, SdkError, SessionConfig};

uniffi::setup_scaffolding!();

/// The platform reported in `session_init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Platform {
    Ios,
    Android,
    Web,
}

/// How audio goes on the wire: utterances (`audio_encoding`) and results'
/// speech (`tts_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AudioEncoding {
    /// Raw little-endian PCM16.
    Pcm16,
    /// A WAV file per utterance.
    Wav,
    /// One Ogg Opus stream per utterance (the default; `opus_bitrate_bps`,
    /// `opus_complexity`).
    Opus,
}

/// Settings of a [`TolkClient`]. Only `url`, `src_lang` and `tgt_lang` are
/// required; the defaults are the SDK's (a test checks they agree).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TolkConfig {
    /// `ws://HOST:PORT/ws/session` or `wss://...`: the first choice.
    pub url: String,
    /// Language heard, a BCP 47 tag (`en`, `zh`).
    pub src_lang: String,
    /// Language wanted.
    pub tgt_lang: String,
    /// Narrows `src_lang` (`zh-sichuan`).
    #[uniffi(default = None)]
    pub dialect: Option<String>,
    /// Six digits shown by a node: bind the session to it.
    #[uniffi(default = None)]
    pub pairing_code: Option<String>,
    /// Defaults to the platform the library was built for (Android elsewhere).
    #[uniffi(default = None)]
    pub platform: Option<Platform>,
    /// Reported in `session_init`; defaults to `tolk-sdk/VERSION`.
    #[uniffi(default = None)]
    pub client_version: Option<String>,
    #[uniffi(default = false)]
    pub emotion_detection: bool,
    #[uniffi(default = false)]
    pub voice_style_detection: bool,
    #[uniffi(default = false)]
    pub speech_rate_detection: bool,
    /// Sample rate of the audio pushed: 8000, 16000, 32000 or 48000.
    #[uniffi(default = 16000)]
    pub sample_rate: u32,
    /// Defaults to Opus.
    #[uniffi(default = None)]
    pub audio_encoding: Option<AudioEncoding>,
    /// Opus target bitrate, 6000 to 510000 bit/s.
    #[uniffi(default = 24000)]
    pub opus_bitrate_bps: u32,
    /// Opus complexity, 0 (least CPU) to 10 (best).
    #[uniffi(default = 5)]
    pub opus_complexity: u8,
    /// The format results' speech is asked for; defaults to Opus.
    #[uniffi(default = None)]
    pub tts_format: Option<AudioEncoding>,
    /// Opus results are decoded to PCM16 (`tts_format` "pcm16"); `false`
    /// hands over the Ogg Opus bytes.
    #[uniffi(default = true)]
    pub decode_tts: bool,
    /// VAD mode, 0 (keeps most) to 3 (keeps least).
    #[uniffi(default = 2)]
    pub vad_aggressiveness: u8,
    /// Silence that ends an utterance.
    #[uniffi(default = 600)]
    pub hang_over_ms: u32,
    /// Longest utterance before a forced cut.
    #[uniffi(default = 30000)]
    pub max_utterance_ms: u32,
    #[uniffi(default = 5000)]
    pub heartbeat_interval_ms: u64,
    /// No frame for this long: the connection is dead, reconnect.
    #[uniffi(default = 15000)]
    pub dead_after_ms: u64,
    /// `close()` waits this long for outstanding results.
    #[uniffi(default = 15000)]
    pub close_timeout_ms: u64,
    /// PEM certificates trusted besides the public roots (private servers).
    #[uniffi(default = None)]
    pub extra_root_certs_pem: Option<String>,
    /// Other dispatchers of the same cluster (`ws://` or `wss://`): after a
    /// failed attempt or a lost connection the client moves on to the next
    /// URL and resumes there. Last, so positional Kotlin calls stay valid.
    #[uniffi(default = [])]
    pub fallback_urls: Vec<String>,
}

impl TolkConfig {
    fn into_sdk(self) -> ClientConfig {
        let session_defaults = SessionConfig::default();
        let platform = match self.platform.unwrap_or(DEFAULT_PLATFORM) {
            Platform::Ios => tolk_sdk::ClientPlatform::Ios,
            Platform::Android => tolk_sdk::ClientPlatform::Android,
            Platform::Web => tolk_sdk::ClientPlatform::Web,
        };
        let session = SessionConfig {
            client_version: self.client_version.unwrap_or(session_defaults.client_version.clone()),
            platform,
            src_lang: self.src_lang,
            tgt_lang: self.tgt_lang,
            dialect: self.dialect,
            features: tolk_sdk::Features {
                emotion_detection: self.emotion_detection,
                voice_style_detection: self.voice_style_detection,
                speech_rate_detection: self.speech_rate_detection,
            },
            pairing_code: self.pairing_code,
            audio_encoding: match self.audio_encoding {
                Some(AudioEncoding::Wav) => tolk_sdk::AudioEncoding::Wav,
                Some(AudioEncoding::Pcm16) => tolk_sdk::AudioEncoding::Pcm16,
                Some(AudioEncoding::Opus) | None => {
                    tolk_sdk::AudioEncoding::Opus { bitrate_bps: self.opus_bitrate_bps, complexity: self.opus_complexity }
                }
            },
            tts_format: match self.tts_format {
                Some(AudioEncoding::Wav) => tolk_sdk::AudioFormat::Wav,
                Some(AudioEncoding::Pcm16) => tolk_sdk::AudioFormat::Pcm16,
                Some(AudioEncoding::Opus) | None => tolk_sdk::AudioFormat::Opus,
            },
            decode_tts: self.decode_tts,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            dead_after_ms: self.dead_after_ms,
            close_timeout_ms: self.close_timeout_ms,
            ..session_defaults
        };
        let chunker = ChunkerConfig {
            sample_rate: self.sample_rate,
            aggressiveness: self.vad_aggressiveness,
            hang_over_ms: self.hang_over_ms,
            max_utterance_ms: self.max_utterance_ms,
            ..ChunkerConfig::default()
        };
        let mut config = ClientConfig::new(self.url);
        config.fallback_urls = self.fallback_urls;
        config.session = session;
        config.chunker = chunker;
        config.extra_root_certs_pem = self.extra_root_certs_pem;
        config
    }
}

#[cfg(target_os = "ios")]
const DEFAULT_PLATFORM: Platform = Platform::Ios;
#[cfg(not(target_os = "ios"))]
const DEFAULT_PLATFORM: Platform = Platform::Android;

/// What went wrong. Every variant carries a readable `message` (Kotlin's
/// exception message is otherwise the field list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TolkError {
    /// A setting is invalid; `message` names it.
    #[error("{message}")]
    InvalidConfig { message: String },
    /// Audio that is not whole PCM16 samples, or speech that could not be
    /// encoded or decoded (bad Opus from the server).
    #[error("{message}")]
    InvalidAudio { message: String },
    /// The client is closed (or closing).
    #[error("{message}")]
    Closed { message: String },
    /// The client's queue is full: retry shortly.
    #[error("{message}")]
    Busy { message: String },
    /// The server refused the session (bad pairing code, unsupported
    /// feature); the client has stopped.
    #[error("{message}")]
    SessionRefused { code: String, message: String },
    /// An error from the server that is not an utterance's outcome.
    #[error("{message}")]
    Server { code: String, message: String },
    /// A frame from the server that could not be read (ignored).
    #[error("{message}")]
    BadFrame { message: String },
    /// An utterance was not taken: too many are waiting for results.
    #[error("{message}")]
    BufferFull { message: String },
    /// Anything else.
    #[error("{message}")]
    Other { message: String },
}

impl From<SdkError> for TolkError {
    fn from(e: SdkError) -> Self {
        let message = e.to_string();
        match e {
            SdkError::UnsupportedSampleRate(_)
            | SdkError::UnsupportedFrameLength(_)
            | SdkError::InvalidAggressiveness(_)
            | SdkError::InvalidConfig { .. }
            | SdkError::InvalidClientConfig { .. } => Self::InvalidConfig { message },
            SdkError::OddPcmLength(_) | SdkError::Audio(_) => Self::InvalidAudio { message },
            SdkError::Closed => Self::Closed { message },
            SdkError::Busy => Self::Busy { message },
            SdkError::SessionRefused { code, .. } => Self::SessionRefused { code, message },
            SdkError::Server { code, .. } => Self::Server { code, message },
            SdkError::BadFrame(_) => Self::BadFrame { message },
            SdkError::BufferFull(_) => Self::BufferFull { message },
            _ => Self::Other { message },
        }
    }
}

/// The connection as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Opening a connection (`attempt` failures since the last success).
    Connecting { attempt: u32 },
    /// The session is open, new or `resumed`.
    Connected { session_id: String, resumed: bool, assigned_node_id: Option<String> },
    /// Lost or refused; the next attempt is in `retry_in_ms`.
    Disconnected { reason: String, retry_in_ms: u64 },
    /// Stopped for good: the last callback.
    Closed { reason: String },
}

/// An utterance the VAD cut and the client took; its outcome will follow.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct QueuedUtterance {
    pub index: u64,
    /// Position in the pushed audio.
    pub start_ms: u64,
    pub end_ms: u64,
    pub manual_cut: bool,
}

/// A translation, delivered in index order.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TranslationResult {
    pub index: u64,
    pub job_id: String,
    pub text_asr: String,
    pub text_translated: String,
    /// Synthesized speech: PCM16 (Opus decoded) unless `decode_tts` is off.
    pub tts_audio: Option<Vec<u8>>,
    /// `pcm16`, `wav` or `opus`.
    pub tts_format: Option<String>,
    /// Sample rate of `tts_audio` (needed for `pcm16`), when the server says.
    pub tts_sample_rate: Option<u32>,
    pub emotion: Option<String>,
    pub speech_rate: Option<f64>,
    pub voice_style: Option<String>,
}

/// An utterance that ended without a translation, delivered in index order.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UtteranceFailure {
    pub index: u64,
    /// A protocol code (`NODE_UNAVAILABLE`, ...) or `CLIENT_NO_OUTCOME` /
    /// `CLIENT_CLOSED`.
    pub code: String,
    pub message: String,
}

/// Implemented by the app. Called on the client's worker thread, one call at
/// a time, in order; return quickly (post to the UI thread).
#[uniffi::export(with_foreign)]
pub trait TolkListener: Send + Sync {
    fn on_state(&self, state: ConnectionState);
    fn on_utterance(&self, utterance: QueuedUtterance);
    fn on_result(&self, result: TranslationResult);
    fn on_failure(&self, failure: UtteranceFailure);
    fn on_error(&self, error: TolkError);
}

/// Hands SDK events to the app's listener.
struct Forward(Arc<dyn TolkListener>);

impl tolk_sdk::Listener for Forward {
    fn on_event(&self, event: Event) {
        // A listener that throws surfaces here as a panic (uniffi's "callback
        // interface failure"). Contain it: that one event is lost, the
        // session and its worker thread go on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.forward(event)));
    }
}

impl Forward {
    fn forward(&self, event: Event) {
        match event {
            Event::State(s) => self.0.on_state(match s {
                tolk_sdk::ConnectionState::Connecting { attempt } => ConnectionState::Connecting { attempt },
                tolk_sdk::ConnectionState::Connected { session_id, resumed, assigned_node_id } => {
                    ConnectionState::Connected { session_id, resumed, assigned_node_id }
                }
                tolk_sdk::ConnectionState::Disconnected { reason, retry_in_ms } => ConnectionState::Disconnected { reason, retry_in_ms },
                tolk_sdk::ConnectionState::Closed { reason } => ConnectionState::Closed { reason },
            }),
            Event::Queued(q) => {
                self.0.on_utterance(QueuedUtterance { index: q.index, start_ms: q.start_ms, end_ms: q.end_ms, manual_cut: q.manual_cut })
            }
            Event::Result(t) => self.0.on_result(TranslationResult {
                index: t.index,
                job_id: t.job_id,
                text_asr: t.text_asr,
                text_translated: t.text_translated,
                tts_audio: t.tts_audio,
                tts_format: t.tts_format.map(|f| f.as_str().to_owned()),
                tts_sample_rate: t.tts_sample_rate,
                emotion: t.emotion,
                speech_rate: t.speech_rate,
                voice_style: t.voice_style,
            }),
            Event::Failed(f) => self.0.on_failure(UtteranceFailure { index: f.index, code: f.code, message: f.message }),
            Event::Error(e) => self.0.on_error(e.into()),
        }
    }
}

/// A Tolk session client: push microphone audio in, hear ordered results
/// through the [`TolkListener`]. It connects at once, reconnects and resumes
/// by itself, and never drops an utterance it took while open.
#[derive(uniffi::Object)]
pub struct TolkClient {
    inner: tolk_sdk::Client,
}

impl fmt::Debug for TolkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TolkClient").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl TolkClient {
    /// Checks `config` and starts the client (it connects at once).
    #[uniffi::constructor]
    pub fn new(config: TolkConfig, listener: Arc<dyn TolkListener>) -> Result<Arc<Self>, TolkError> {
        let inner = tolk_sdk::Client::start(config.into_sdk(), Forward(listener))?;
        Ok(Arc::new(Self { inner }))
    }

    /// Little-endian mono PCM16 at `sample_rate`, any length (10–100 ms per
    /// call suits a microphone callback). Never blocks.
    pub fn push_audio(&self, pcm16le: Vec<u8>) -> Result<(), TolkError> {
        Ok(self.inner.push_pcm16_le(&pcm16le)?)
    }

    /// Ends the current utterance now (push-to-talk release).
    pub fn cut(&self) -> Result<(), TolkError> {
        Ok(self.inner.cut()?)
    }

    /// Sends what is left, waits for outstanding results (up to
    /// `close_timeout_ms`), closes the session; `on_state(Closed)` comes
    /// last. Returns at once.
    pub fn close(&self) -> Result<(), TolkError> {
        Ok(self.inner.close()?)
    }

    /// Blocks up to `timeout_ms` until the client has stopped; true if it
    /// has.
    pub fn wait_closed(&self, timeout_ms: u64) -> bool {
        self.inner.wait_closed(Duration::from_millis(timeout_ms))
    }
}

/// The version of this library.
#[uniffi::export]
pub fn sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TolkConfig {
        // The record's declared defaults, spelled out as a foreign caller gets them.
        TolkConfig {
            url: "ws://127.0.0.1:1/ws/session".into(),
            src_lang: "en".into(),
            tgt_lang: "de".into(),
            dialect: None,
            pairing_code: None,
            platform: None,
            client_version: None,
            emotion_detection: false,
            voice_style_detection: false,
            speech_rate_detection: false,
            sample_rate: 16000,
            audio_encoding: None,
            opus_bitrate_bps: 24000,
            opus_complexity: 5,
            tts_format: None,
            decode_tts: true,
            vad_aggressiveness: 2,
            hang_over_ms: 600,
            max_utterance_ms: 30000,
            heartbeat_interval_ms: 5000,
            dead_after_ms: 15000,
            close_timeout_ms: 15000,
            extra_root_certs_pem: None,
            fallback_urls: vec![],
        }
    }

    #[test]
    fn record_defaults_are_the_sdk_defaults() {
        let sdk = config().into_sdk();
        let mut expected = ClientConfig::new("ws://127.0.0.1:1/ws/session");
        expected.session.src_lang = "en".into();
        expected.session.tgt_lang = "de".into();
        assert_eq!(sdk, expected);
    }

    #[test]
    fn fallback_urls_pass_straight_through() {
        let urls = vec!["ws://127.0.0.2:1/ws/session".to_owned(), "wss://127.0.0.3:1/ws/session".to_owned()];
        assert_eq!(TolkConfig { fallback_urls: urls.clone(), ..config() }.into_sdk().fallback_urls, urls);
    }

    #[test]
    fn errors_keep_their_message() {
        let e: TolkError = SdkError::OddPcmLength(3).into();
        assert_eq!(e, TolkError::InvalidAudio { message: "pcm16 audio has an odd number of bytes (3)".into() });
        let e: TolkError = SdkError::SessionRefused { code: "INVALID_PAIRING_CODE".into(), message: "expired".into() }.into();
        assert!(matches!(&e, TolkError::SessionRefused { code, message } if code == "INVALID_PAIRING_CODE" && message.contains("expired")));
    }
}
