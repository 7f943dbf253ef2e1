//! The session client as a sans-IO state machine.
//!
//! [`Session`] speaks the session protocol (`docs/protocol.md`) without
//! touching a socket, a clock or a thread. It is fed [`Input`]s (the
//! connection opened or was lost, a text frame arrived, the app gave an
//! utterance or asked to close) and timer wake-ups ([`Session::on_timeout`]
//! at [`Session::next_deadline`]), each with the current time, and it queues
//! [`Action`]s for its shell: open a connection, send this text frame, drop
//! the connection, deliver this [`Event`] to the app. [`crate::Client`] is
//! the tokio shell; the tests drive it by hand.
//!
//! # What it guarantees
//!
//! - **Every utterance the session takes ends in exactly one outcome event,
//!   and outcomes reach the app in index order.** An utterance taken gets the
//!   next `utterance_index` (an [`Event::Queued`]), and later exactly one
//!   [`Event::Result`] or [`Event::Failed`], before [`ConnectionState::Closed`].
//!   Results that arrive early are held; duplicates (a resume re-delivers) and
//!   outcomes for unknown indexes are dropped; an outcome is never replaced.
//! - **Nothing taken is lost while the app keeps the session open.** Every
//!   utterance is kept (audio included) until its outcome is delivered, and
//!   re-sent on every new connection until it has one. The buffer is bounded
//!   (`max_unanswered`, `max_buffered_bytes`): past it, a new utterance is
//!   *not taken* (an [`SdkError::BufferFull`] event), it is never evicted
//!   silently.
//! - **Reconnect and resume.** A lost connection (closed, refused, silent for
//!   `dead_after_ms` although heartbeats ask the server to answer, no
//!   `session_init_ack` within `handshake_timeout_ms`) is dropped and retried
//!   after an exponential back-off with jitter (`reconnect_min_ms` doubling up
//!   to `reconnect_max_ms`, "equal jitter": half fixed, half random). The
//!   retry resumes with `session_id`, `resume_token` and
//!   `last_utterance_index`; the server re-sends outcomes after that index.
//! - **Starting over.** When the server answers `INVALID_SESSION` (the resume
//!   grace period passed, or the session expired), the session forgets its id
//!   and opens a new one, then re-sends every utterance without an outcome
//!   **under the same indexes**: the app's indexes stay stable, and they
//!   still increase within the new server session, which has seen none below.
//! - **Refusals.** A refusal is an `error` naming `details.field ==
//!   "utterance_index"` without `details.utterance_index`: it is not an
//!   outcome. `RATE_LIMITED` with `details.refused_index` puts that utterance
//!   back to be sent again after the server's `details.retry_after_ms` (at
//!   most 30 s; `rate_limit_retry_ms` when absent) or at the next outcome,
//!   whichever is first, and shrinks the send window to what the server had
//!   accepted; it stays so until that wait has passed (so probing for more
//!   costs the server at most one refusal per wait), then grows back by one
//!   per outcome up to `max_in_flight`. A
//!   refusal of another code naming `refused_index` is that utterance's
//!   outcome (`Failed` with the server's code). A refusal naming no index
//!   cannot be tied to an utterance: it is reported as an error event, and
//!   the outcome timeout below ends the wait.
//! - **No endless wait.** An utterance sent on a live connection that gets no
//!   outcome within `outcome_timeout_ms` fails with [`failure::NO_OUTCOME`],
//!   so a misbehaving server cannot hold back later results for ever. The
//!   clock runs only while the utterance is sent on a live connection: an
//!   offline phone loses nothing.
//! - **Closing.** [`Input::Close`] takes no more utterances, waits (up to
//!   `close_timeout_ms`, reconnecting if need be) for the outcome of every
//!   utterance taken, sends `session_close`, waits for `session_close_ack`,
//!   and ends with [`ConnectionState::Closed`]. Whatever still has no outcome
//!   at the deadline fails with [`failure::CLOSED`]. [`Input::Abort`] does the
//!   same without waiting.
//! - **Fatal refusals.** A `session_init` refused with `INVALID_PAIRING_CODE`,
//!   `UNSUPPORTED_FEATURE`, `UNAUTHORIZED`, `RATE_LIMITED` (wrong pairing
//!   codes) or `INVALID_MESSAGE` would be refused again: the session reports
//!   [`SdkError::SessionRefused`], fails what it holds and closes. Other
//!   refusals (`INTERNAL_ERROR`: the server is full) are retried with
//!   back-off.
//!
//! Heartbeats go out every `heartbeat_interval_ms` on a live connection and
//! carry `last_utterance_index`: the highest index up to which the app has
//! every outcome, so the server can forget those.

use std::collections::BTreeMap;

/// The longest `retry_after_ms` a server may impose on one refusal.
const MAX_RETRY_AFTER_MS: u64 = 30_000;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tolk_protocol::session::{ClientHeartbeat, ClientPlatform, SessionClose, SessionInit, SessionInitAck, TranslationResult};
use tolk_protocol::{AudioFormat, ClientToServer, ErrorCode, ErrorMessage, Features, Message as _, ServerToClient, Validate as _};

use crate::{SdkError, Utterance};

/// Milliseconds on the shell's monotonic clock.
pub type Millis = u64;

/// Codes of [`UtteranceFailure`]s decided by the client (the others are the
/// server's protocol codes, e.g. `NODE_UNAVAILABLE`).
pub mod failure {
    /// No outcome arrived within `outcome_timeout_ms` of sending on a live
    /// connection.
    pub const NO_OUTCOME: &str = "CLIENT_NO_OUTCOME";
    /// The client closed before the outcome arrived.
    pub const CLOSED: &str = "CLIENT_CLOSED";
}

/// How utterance audio goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioEncoding {
    /// Raw little-endian PCM16 (256 kbit/s at 16 kHz).
    Pcm16,
    /// A RIFF/WAVE file per utterance (44 bytes more).
    Wav,
    /// One Ogg Opus stream per utterance (extension 12), the default:
    /// about a tenth of pcm16 at 24 kbit/s.
    Opus {
        /// Target bitrate, 6000 to 510000 bit/s.
        bitrate_bps: u32,
        /// libopus complexity, 0 (least CPU) to 10 (best).
        complexity: u8,
    },
}

impl Default for AudioEncoding {
    /// Opus at 24 kbit/s, complexity 5 (see README: as accurate for ASR as
    /// pcm16, at a fraction of the CPU of complexity 10).
    fn default() -> Self {
        Self::Opus { bitrate_bps: 24_000, complexity: 5 }
    }
}

/// An utterance already encoded by the app (the web page encodes Opus with
/// WebCodecs), taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedUtterance {
    /// The bytes of one utterance in `format` (for Opus, one Ogg Opus stream).
    pub audio: Vec<u8>,
    pub format: AudioFormat,
    /// The rate it was captured at.
    pub sample_rate: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub manual_cut: bool,
}

/// Settings of a [`Session`]. Times are in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Reported in `session_init`.
    pub client_version: String,
    pub platform: ClientPlatform,
    /// Language heard, a BCP 47 tag (`zh`, `en-US`).
    pub src_lang: String,
    /// Language wanted.
    pub tgt_lang: String,
    /// Narrows `src_lang` (`zh-sichuan`).
    pub dialect: Option<String>,
    /// Optional analyses asked for.
    pub features: Features,
    /// Six digits from a node: bind the session to that node.
    pub pairing_code: Option<String>,
    pub audio_encoding: AudioEncoding,
    /// The format results' speech is asked for (`session_init.tts_format`).
    pub tts_format: AudioFormat,
    /// Opus results are decoded to pcm16 for the app (`tts_format` then
    /// says `pcm16`, `tts_sample_rate` the rate); `false` hands over the Ogg
    /// Opus bytes as they came.
    pub decode_tts: bool,
    /// A heartbeat every this often on a live connection.
    pub heartbeat_interval_ms: u64,
    /// A live connection that brings no frame for this long is dead (the
    /// server answers every heartbeat, so keep it a few intervals).
    pub dead_after_ms: u64,
    /// Opening the connection plus `session_init_ack` must take less.
    pub handshake_timeout_ms: u64,
    /// First reconnect delay (before jitter)...
    pub reconnect_min_ms: u64,
    /// ...doubling per failed attempt up to this.
    pub reconnect_max_ms: u64,
    /// Utterances kept without a delivered outcome; more are not taken.
    pub max_unanswered: usize,
    /// Their audio (base64), in bytes; more is not taken.
    pub max_buffered_bytes: usize,
    /// Utterances sent and unanswered at once (keep it below the server's
    /// `max_pending_per_session`, 64 by default).
    pub max_in_flight: usize,
    /// An utterance sent on a live connection fails after this long without
    /// an outcome.
    pub outcome_timeout_ms: u64,
    /// After a `RATE_LIMITED` refusal, send again after this long (or at the
    /// next outcome).
    pub rate_limit_retry_ms: u64,
    /// [`Input::Close`] waits this long for outcomes and the close ack.
    pub close_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client_version: concat!("tolk-sdk/", env!("CARGO_PKG_VERSION")).to_owned(),
            platform: ClientPlatform::Android,
            src_lang: "en".to_owned(),
            tgt_lang: "en".to_owned(),
            dialect: None,
            features: Features::default(),
            pairing_code: None,
            audio_encoding: AudioEncoding::default(),
            tts_format: AudioFormat::Opus,
            decode_tts: true,
            heartbeat_interval_ms: 5_000,
            dead_after_ms: 15_000,
            handshake_timeout_ms: 10_000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            max_unanswered: 64,
            max_buffered_bytes: 32 << 20,
            max_in_flight: 32,
            outcome_timeout_ms: 300_000,
            rate_limit_retry_ms: 1_000,
            close_timeout_ms: 15_000,
        }
    }
}

impl SessionConfig {
    /// Checks the languages, pairing code and timings; [`Session::new`]
    /// calls it.
    pub fn validate(&self) -> Result<(), SdkError> {
        self.init_frame(None).validate().map_err(|e| SdkError::client_config(e.field.unwrap_or_default(), e.message))?;
        let positive = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("reconnect_min_ms", self.reconnect_min_ms),
            ("outcome_timeout_ms", self.outcome_timeout_ms),
            ("max_unanswered", self.max_unanswered as u64),
            ("max_buffered_bytes", self.max_buffered_bytes as u64),
            ("max_in_flight", self.max_in_flight as u64),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(SdkError::client_config(*field, "must be positive"));
        }
        if self.dead_after_ms <= self.heartbeat_interval_ms {
            return Err(SdkError::client_config("dead_after_ms", "must be longer than heartbeat_interval_ms"));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(SdkError::client_config("reconnect_max_ms", "shorter than reconnect_min_ms"));
        }
        crate::codec::validate(self.audio_encoding)
    }

    fn init_frame(&self, resume: Option<(&Ident, Option<u64>)>) -> SessionInit {
        let (session_id, resume_token, last) = match resume {
            Some((ident, last)) => (Some(ident.id.clone()), ident.token.clone(), last),
            None => (None, None, None),
        };
        SessionInit {
            client_version: self.client_version.clone(),
            platform: self.platform,
            src_lang: self.src_lang.clone(),
            tgt_lang: self.tgt_lang.clone(),
            dialect: self.dialect.clone(),
            features: Some(self.features),
            pairing_code: self.pairing_code.clone(),
            session_id,
            resume_token,
            last_utterance_index: last,
            tts_format: Some(self.tts_format),
        }
    }
}

/// What the session is fed.
#[derive(Debug)]
pub enum Input<'a> {
    /// The connection asked for by [`Action::Connect`] is open.
    Connected,
    /// It could not be opened.
    ConnectFailed(String),
    /// The open connection closed or failed.
    ConnectionLost(String),
    /// A text frame arrived.
    Frame(&'a str),
    /// The app has an utterance to translate.
    Utterance(Utterance),
    /// The app has an utterance it encoded itself.
    Encoded(EncodedUtterance),
    /// The app is done: drain, close the session, stop.
    Close,
    /// The app is gone: close now without waiting for outcomes.
    Abort,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a new connection to `/ws/session`; report [`Input::Connected`] or
    /// [`Input::ConnectFailed`].
    Connect,
    /// Send this text frame on the open connection.
    Send(String),
    /// Drop the connection (open or opening); report nothing for it.
    Disconnect,
    /// Hand this to the app.
    Deliver(Event),
}

/// What the app hears.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection changed.
    State(ConnectionState),
    /// An utterance was taken and got this index; its outcome will follow.
    Queued(Queued),
    /// An utterance's translation (in index order).
    Result(Translation),
    /// An utterance ended without a translation (in index order).
    Failed(UtteranceFailure),
    /// Something went wrong that is not an utterance's outcome.
    Error(SdkError),
}

/// The connection as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a connection; `attempt` counts failures since the last
    /// success.
    Connecting { attempt: u32 },
    /// The session is open (new, or `resumed`).
    Connected { session_id: String, resumed: bool, assigned_node_id: Option<String> },
    /// The connection was lost or refused; the next attempt is in
    /// `retry_in_ms`.
    Disconnected { reason: String, retry_in_ms: u64 },
    /// Stopped for good (the last event).
    Closed { reason: String },
}

/// An utterance the session took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub index: u64,
    /// Position of its audio in the app's stream.
    pub start_ms: u64,
    pub end_ms: u64,
    pub manual_cut: bool,
}

/// A `translation_result`, as the SDK hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub index: u64,
    pub job_id: String,
    pub text_asr: String,
    pub text_translated: String,
    /// Decoded synthesized speech, when the pipeline has TTS.
    pub tts_audio: Option<Vec<u8>>,
    pub tts_format: Option<AudioFormat>,
    /// Sample rate of `tts_audio` (needed for `pcm16`), when the server
    /// says.
    pub tts_sample_rate: Option<u32>,
    pub emotion: Option<String>,
    pub speech_rate: Option<f64>,
    pub voice_style: Option<String>,
}

/// An utterance that ended without a translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtteranceFailure {
    pub index: u64,
    /// A protocol error code (`NODE_UNAVAILABLE`, ...) or one of [`failure`].
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ident {
    id: String,
    /// Without a token (an old server) the session cannot be resumed.
    token: Option<String>,
}

#[derive(Debug)]
enum Link {
    /// Waiting to reconnect.
    Waiting { retry_at: Millis },
    /// Opening a connection.
    Connecting { since: Millis },
    /// Connected, `session_init` sent, waiting for the ack.
    Handshake { since: Millis },
    /// The session is open on this connection.
    Live { session_id: String, last_rx: Millis, next_heartbeat: Millis },
    /// Stopped.
    Closed,
}

#[derive(Debug)]
enum Outcome {
    Result(Translation),
    Failed(UtteranceFailure),
}

#[derive(Debug)]
enum EntryState {
    /// To be sent on the live connection.
    Unsent,
    /// Sent on the live connection at this time.
    Sent { at: Millis },
    /// Has its outcome; waits for the indexes before it.
    Done(Outcome),
}

/// An utterance taken and not yet delivered.
#[derive(Debug)]
struct Entry {
    /// Base64, built once and sent as is on every attempt.
    audio: tolk_protocol::Base64Audio,
    audio_format: AudioFormat,
    sample_rate: u32,
    manual_cut: bool,
    state: EntryState,
}

/// The session client's decisions; see the [module docs](self).
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    rng: StdRng,
    /// Wall-clock milliseconds (Unix epoch) at monotonic time 0, for the
    /// heartbeat timestamps.
    epoch_ms: u64,
    link: Link,
    ident: Option<Ident>,
    /// Utterances taken and not delivered, by index.
    entries: BTreeMap<u64, Entry>,
    next_index: u64,
    /// Every index up to this one has its outcome delivered.
    delivered_upto: Option<u64>,
    buffered_bytes: usize,
    /// Failed connection attempts since the last `session_init_ack`.
    attempt: u32,
    /// Utterances to keep in flight (shrinks on `RATE_LIMITED`).
    window: usize,
    /// No utterance is sent before this (after `RATE_LIMITED`), unless an
    /// outcome arrives first.
    paused_until: Option<Millis>,
    /// The window does not grow before this (after `RATE_LIMITED`: the
    /// server's `retry_after_ms`, so probing for more costs it at most one
    /// refusal per wait).
    grow_after: Option<Millis>,
    /// Closing: the deadline.
    closing: Option<Millis>,
    /// `session_close` was sent: waiting for its ack.
    close_sent: bool,
    actions: Vec<Action>,
}

impl Session {
    /// A session that starts connecting at once (its first action is
    /// [`Action::Connect`]). `seed` drives the back-off jitter; `epoch_ms`
    /// is the wall clock at `now`.
    pub fn new(cfg: SessionConfig, seed: u64, epoch_ms: u64, now: Millis) -> Result<Self, SdkError> {
        cfg.validate()?;
        let window = cfg.max_in_flight;
        let mut s = Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            epoch_ms: epoch_ms.saturating_sub(now),
            link: Link::Connecting { since: now },
            ident: None,
            entries: BTreeMap::new(),
            next_index: 0,
            delivered_upto: None,
            buffered_bytes: 0,
            attempt: 0,
            window,
            paused_until: None,
            grow_after: None,
            closing: None,
            close_sent: false,
            actions: Vec::new(),
        };
        s.actions.push(Action::Connect);
        s.deliver(Event::State(ConnectionState::Connecting { attempt: 0 }));
        Ok(s)
    }

    /// The actions queued so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether the session has stopped for good.
    pub fn is_closed(&self) -> bool {
        matches!(self.link, Link::Closed)
    }

    /// Utterances taken whose outcome has not been delivered.
    pub fn unanswered(&self) -> usize {
        self.entries.len()
    }

    /// When [`on_timeout`](Self::on_timeout) must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        let link = match &self.link {
            Link::Closed => return None,
            Link::Waiting { retry_at } => Some(*retry_at),
            Link::Connecting { since } | Link::Handshake { since } => Some(since + self.cfg.handshake_timeout_ms),
            Link::Live { last_rx, next_heartbeat, .. } => Some((*next_heartbeat).min(last_rx + self.cfg.dead_after_ms)),
        };
        let oldest_sent = self.entries.values().filter_map(|e| if let EntryState::Sent { at } = e.state { Some(at) } else { None }).min();
        let has_unsent = self.entries.values().any(|e| matches!(e.state, EntryState::Unsent));
        [link, oldest_sent.map(|at| at + self.cfg.outcome_timeout_ms), self.paused_until.filter(|_| has_unsent), self.closing]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input<'_>) {
        if self.is_closed() {
            if let Input::Utterance(_) = input {
                self.deliver(Event::Error(SdkError::Closed));
            }
            return;
        }
        match input {
            Input::Connected => {
                if let Link::Connecting { since } = self.link {
                    self.link = Link::Handshake { since };
                    self.send_init();
                }
            }
            Input::ConnectFailed(reason) => {
                if matches!(self.link, Link::Connecting { .. }) {
                    self.lose_connection(now, format!("could not connect: {reason}"));
                }
            }
            Input::ConnectionLost(reason) => {
                if matches!(self.link, Link::Handshake { .. } | Link::Live { .. }) {
                    if self.close_sent {
                        // The server drops the session with the connection anyway.
                        return self.finish("closed by the app");
                    }
                    self.lose_connection(now, format!("connection lost: {reason}"));
                }
            }
            Input::Frame(text) => self.on_frame(now, text),
            Input::Utterance(u) => self.take_utterance(now, u),
            Input::Encoded(u) => self.take_encoded(now, u),
            Input::Close => {
                if self.closing.is_none() {
                    self.closing = Some(now + self.cfg.close_timeout_ms);
                    self.maybe_close(now);
                }
            }
            Input::Abort => self.force_close("aborted by the app"),
        }
    }

    /// Fires every timer due at `now`.
    pub fn on_timeout(&mut self, now: Millis) {
        if self.is_closed() {
            return;
        }
        if self.closing.is_some_and(|deadline| now >= deadline) {
            return self.force_close("closed by the app (timed out waiting for outcomes)");
        }
        enum Due {
            Nothing,
            Reconnect,
            Lost(String),
            Heartbeat(String),
        }
        let due = match &self.link {
            Link::Waiting { retry_at } if now >= *retry_at => Due::Reconnect,
            Link::Connecting { since } | Link::Handshake { since } if now >= *since + self.cfg.handshake_timeout_ms => {
                Due::Lost(format!("no session_init_ack within {} ms", self.cfg.handshake_timeout_ms))
            }
            Link::Live { last_rx, .. } if now >= *last_rx + self.cfg.dead_after_ms => {
                Due::Lost(format!("no frame from the server for {} ms", self.cfg.dead_after_ms))
            }
            Link::Live { session_id, next_heartbeat, .. } if now >= *next_heartbeat => Due::Heartbeat(session_id.clone()),
            _ => Due::Nothing,
        };
        match due {
            Due::Nothing => {}
            Due::Reconnect => {
                self.link = Link::Connecting { since: now };
                self.actions.push(Action::Connect);
                let attempt = self.attempt;
                self.deliver(Event::State(ConnectionState::Connecting { attempt }));
            }
            Due::Lost(reason) => self.lose_connection(now, reason),
            Due::Heartbeat(session_id) => {
                if let Link::Live { next_heartbeat, .. } = &mut self.link {
                    *next_heartbeat = now + self.cfg.heartbeat_interval_ms;
                }
                let hb = ClientHeartbeat { session_id, timestamp: self.epoch_ms + now, last_utterance_index: self.delivered_upto };
                self.actions.push(Action::Send(ClientToServer::ClientHeartbeat(hb).to_json()));
            }
        }
        // Outcome timeouts.
        let timeout = self.cfg.outcome_timeout_ms;
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Sent { at } if now >= at + timeout))
            .map(|(&i, _)| i)
            .collect();
        for index in expired {
            let message = format!("no outcome from the server within {timeout} ms");
            self.complete(now, index, Outcome::Failed(UtteranceFailure { index, code: failure::NO_OUTCOME.to_owned(), message }));
        }
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            self.pump(now);
        }
    }

    // ------------------------------------------------------------ internals

    fn deliver(&mut self, event: Event) {
        self.actions.push(Action::Deliver(event));
    }

    fn send_init(&mut self) {
        let resume = self.ident.as_ref().filter(|i| i.token.is_some()).map(|i| (i, self.delivered_upto));
        let init = self.cfg.init_frame(resume);
        self.actions.push(Action::Send(ClientToServer::SessionInit(init).to_json()));
    }

    fn backoff(&mut self) -> u64 {
        let shift = self.attempt.min(20);
        let full = self.cfg.reconnect_min_ms.saturating_mul(1 << shift).min(self.cfg.reconnect_max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        full - half + self.rng.random_range(0..=half)
    }

    /// Drops the connection and schedules the next attempt.
    fn lose_connection(&mut self, now: Millis, reason: String) {
        self.actions.push(Action::Disconnect);
        for e in self.entries.values_mut() {
            if let EntryState::Sent { .. } = e.state {
                e.state = EntryState::Unsent;
            }
        }
        let delay = self.backoff();
        self.link = Link::Waiting { retry_at: now + delay };
        self.deliver(Event::State(ConnectionState::Disconnected { reason, retry_in_ms: delay }));
    }

    fn take_utterance(&mut self, now: Millis, u: Utterance) {
        if self.closing.is_some() {
            return self.deliver(Event::Error(SdkError::Closed));
        }
        if u.samples.is_empty() {
            return;
        }
        let (audio, format) = match crate::codec::encode(self.cfg.audio_encoding, &u.samples, u.sample_rate) {
            Ok(encoded) => encoded,
            Err(e) => return self.deliver(Event::Error(e)),
        };
        let encoded = EncodedUtterance {
            audio,
            format,
            sample_rate: u.sample_rate,
            start_ms: u.start_ms,
            end_ms: u.end_ms,
            manual_cut: u.manual_cut,
        };
        self.take_encoded(now, encoded);
    }

    fn take_encoded(&mut self, now: Millis, u: EncodedUtterance) {
        if self.closing.is_some() {
            return self.deliver(Event::Error(SdkError::Closed));
        }
        if u.audio.is_empty() {
            return;
        }
        let audio: tolk_protocol::Base64Audio = tolk_protocol::audio::to_base64(&u.audio).into();
        if self.entries.len() >= self.cfg.max_unanswered || self.buffered_bytes + audio.len() > self.cfg.max_buffered_bytes {
            let why = format!(
                "{} utterances ({} bytes) are waiting for outcomes; the limit is {} ({} bytes)",
                self.entries.len(),
                self.buffered_bytes,
                self.cfg.max_unanswered,
                self.cfg.max_buffered_bytes
            );
            return self.deliver(Event::Error(SdkError::BufferFull(why)));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.buffered_bytes += audio.len();
        let entry =
            Entry { audio, audio_format: u.format, sample_rate: u.sample_rate, manual_cut: u.manual_cut, state: EntryState::Unsent };
        self.entries.insert(index, entry);
        self.deliver(Event::Queued(Queued { index, start_ms: u.start_ms, end_ms: u.end_ms, manual_cut: u.manual_cut }));
        self.pump(now);
    }

    /// Sends unsent utterances, lowest index first, while the window allows.
    fn pump(&mut self, now: Millis) {
        let Link::Live { session_id, .. } = &self.link else { return };
        if self.close_sent || self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        let mut in_flight = self.entries.values().filter(|e| matches!(e.state, EntryState::Sent { .. })).count();
        for (&index, e) in self.entries.iter_mut() {
            if in_flight >= self.window {
                break;
            }
            if !matches!(e.state, EntryState::Unsent) {
                continue;
            }
            let frame = tolk_protocol::session::Utterance {
                session_id: session_id.clone(),
                utterance_index: index,
                manual_cut: e.manual_cut,
                src_lang: self.cfg.src_lang.clone(),
                tgt_lang: self.cfg.tgt_lang.clone(),
                dialect: self.cfg.dialect.clone(),
                features: None,
                audio: e.audio.clone(),
                audio_format: e.audio_format,
                sample_rate: e.sample_rate,
            };
            self.actions.push(Action::Send(ClientToServer::Utterance(frame).to_json()));
            e.state = EntryState::Sent { at: now };
            in_flight += 1;
        }
    }

    fn on_frame(&mut self, now: Millis, text: &str) {
        if let Link::Live { last_rx, .. } = &mut self.link {
            *last_rx = now;
        }
        let msg = match ServerToClient::parse_unvalidated(text) {
            Ok(msg) => msg,
            Err(e) => return self.deliver(Event::Error(SdkError::BadFrame(e.message))),
        };
        match msg {
            ServerToClient::SessionInitAck(ack) => {
                if matches!(self.link, Link::Handshake { .. }) {
                    self.on_ack(now, ack);
                }
            }
            ServerToClient::TranslationResult(r) => {
                let ours = matches!(&self.link, Link::Live { session_id, .. } if *session_id == r.session_id);
                if ours {
                    let index = r.utterance_index;
                    let t = self.translation(r);
                    self.complete(now, index, Outcome::Result(t));
                }
            }
            ServerToClient::ServerHeartbeat(_) => {}
            ServerToClient::SessionCloseAck(_) => {
                if self.close_sent {
                    self.finish("closed by the app");
                }
            }
            ServerToClient::Error(e) => self.on_error(now, e),
        }
    }

    fn translation(&mut self, r: TranslationResult) -> Translation {
        let tts_audio = match r.tts_audio.as_deref() {
            None | Some("") => None,
            Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    self.deliver(Event::Error(SdkError::BadFrame(format!("tts_audio is not valid base64: {e}"))));
                    None
                }
            },
        };
        let (mut tts_format, mut tts_sample_rate) = (r.tts_format, r.tts_sample_rate);
        // Opus results become pcm16 for the app unless it wants the bytes.
        let tts_audio = match tts_audio {
            Some(bytes) if self.cfg.decode_tts && tts_format == Some(AudioFormat::Opus) => {
                match crate::codec::decode_opus(&bytes, tts_sample_rate.unwrap_or(48_000)) {
                    Ok((samples, rate)) => {
                        (tts_format, tts_sample_rate) = (Some(AudioFormat::Pcm16), Some(rate));
                        Some(tolk_protocol::audio::encode_pcm16(&samples))
                    }
                    Err(e) => {
                        // The texts still arrive; only the speech is lost.
                        self.deliver(Event::Error(e));
                        (tts_format, tts_sample_rate) = (None, None);
                        None
                    }
                }
            }
            other => other,
        };
        let extra = r.extra.unwrap_or_default();
        Translation {
            index: r.utterance_index,
            job_id: r.job_id,
            text_asr: r.text_asr,
            text_translated: r.text_translated,
            tts_audio,
            tts_format,
            tts_sample_rate,
            emotion: extra.emotion,
            speech_rate: extra.speech_rate,
            voice_style: extra.voice_style,
        }
    }

    fn on_ack(&mut self, now: Millis, ack: SessionInitAck) {
        let resumed = self.ident.as_ref().is_some_and(|i| i.id == ack.session_id);
        self.ident = Some(Ident { id: ack.session_id.clone(), token: ack.resume_token });
        self.attempt = 0;
        self.link = Link::Live { session_id: ack.session_id.clone(), last_rx: now, next_heartbeat: now + self.cfg.heartbeat_interval_ms };
        let state = ConnectionState::Connected { session_id: ack.session_id, resumed, assigned_node_id: ack.assigned_node_id };
        self.deliver(Event::State(state));
        self.pump(now);
        self.maybe_close(now);
    }

    fn on_error(&mut self, now: Millis, e: ErrorMessage) {
        let details = e.details.as_ref();
        let field = details.and_then(|d| d.get("field")).and_then(|f| f.as_str()).map(str::to_owned);
        let refused = details.and_then(|d| d.get("refused_index")).and_then(|i| i.as_u64());
        let server_error = |e: &ErrorMessage, field| SdkError::Server { code: e.code.to_string(), message: e.message.clone(), field };
        match &self.link {
            Link::Handshake { .. } => {
                if e.code == ErrorCode::InvalidSession && self.ident.is_some() {
                    // The resume was refused: open a new session on this connection.
                    self.ident = None;
                    return self.send_init();
                }
                let fatal = matches!(
                    e.code,
                    ErrorCode::InvalidPairingCode
                        | ErrorCode::UnsupportedFeature
                        | ErrorCode::Unauthorized
                        | ErrorCode::RateLimited
                        | ErrorCode::InvalidMessage
                );
                if fatal {
                    let err = SdkError::SessionRefused { code: e.code.to_string(), message: e.message.clone() };
                    self.fail_all(e.code.as_str(), &format!("the server refused the session: {}", e.message));
                    self.deliver(Event::Error(err));
                    return self.finish(&format!("the server refused the session: {}", e.code));
                }
                self.deliver(Event::Error(server_error(&e, field)));
                self.lose_connection(now, format!("session_init refused: {}", e.code));
            }
            Link::Live { .. } => {
                if let Some(index) = e.utterance_index() {
                    let f = UtteranceFailure { index, code: e.code.to_string(), message: e.message };
                    return self.complete(now, index, Outcome::Failed(f));
                }
                if field.as_deref() == Some("utterance_index") {
                    return match refused {
                        Some(index) if e.code == ErrorCode::RateLimited => {
                            let retry_after = details.and_then(|d| d.get("retry_after_ms")).and_then(|v| v.as_u64());
                            self.rate_limited(now, index, retry_after)
                        }
                        Some(index) => {
                            let f = UtteranceFailure { index, code: e.code.to_string(), message: e.message };
                            self.complete(now, index, Outcome::Failed(f))
                        }
                        // Cannot be tied to an utterance: the outcome timeout ends the wait.
                        None => self.deliver(Event::Error(server_error(&e, field))),
                    };
                }
                if e.code == ErrorCode::InvalidSession {
                    // Expired, or owned by another connection: start over.
                    self.ident = None;
                    self.deliver(Event::Error(server_error(&e, field)));
                    if self.close_sent {
                        return self.finish("closed by the app");
                    }
                    return self.lose_connection(now, "the server ended the session".to_owned());
                }
                self.deliver(Event::Error(server_error(&e, field)));
            }
            Link::Waiting { .. } | Link::Connecting { .. } | Link::Closed => {}
        }
    }

    /// A `RATE_LIMITED` refusal of `index`: send it again after the
    /// server's `retry_after_ms` (extension 10; bounded, so a hostile server
    /// cannot stall the session for long) or `rate_limit_retry_ms` without
    /// one, or at the next outcome, whichever is first. The window is cut to
    /// what the server had accepted and stays so for that wait.
    fn rate_limited(&mut self, now: Millis, index: u64, retry_after_ms: Option<u64>) {
        let Some(e) = self.entries.get_mut(&index) else { return };
        if !matches!(e.state, EntryState::Sent { .. }) {
            return;
        }
        e.state = EntryState::Unsent;
        let accepted_below = self.entries.range(..index).filter(|(_, e)| matches!(e.state, EntryState::Sent { .. })).count();
        self.window = accepted_below.max(1);
        let wait = retry_after_ms.map_or(self.cfg.rate_limit_retry_ms, |ms| ms.min(MAX_RETRY_AFTER_MS));
        self.paused_until = Some(now + wait);
        self.grow_after = Some(now + wait);
    }

    /// Records `index`'s outcome (never replacing one) and delivers what is
    /// now in order.
    fn complete(&mut self, now: Millis, index: u64, outcome: Outcome) {
        let Some(e) = self.entries.get_mut(&index) else { return };
        if matches!(e.state, EntryState::Done(_)) {
            return;
        }
        e.state = EntryState::Done(outcome);
        if self.grow_after.is_none_or(|t| now >= t) {
            self.grow_after = None;
            self.window = (self.window + 1).min(self.cfg.max_in_flight);
        }
        self.paused_until = None;
        self.deliver_ready();
        self.pump(now);
        self.maybe_close(now);
    }

    fn deliver_ready(&mut self) {
        while let Some(first) = self.entries.first_entry() {
            if !matches!(first.get().state, EntryState::Done(_)) {
                break;
            }
            let index = *first.key();
            let entry = first.remove();
            self.buffered_bytes -= entry.audio.len();
            self.delivered_upto = Some(index);
            match entry.state {
                EntryState::Done(Outcome::Result(t)) => self.deliver(Event::Result(t)),
                EntryState::Done(Outcome::Failed(f)) => self.deliver(Event::Failed(f)),
                EntryState::Unsent | EntryState::Sent { .. } => {}
            }
        }
    }

    /// Fails every utterance without an outcome, in index order.
    fn fail_all(&mut self, code: &str, message: &str) {
        for (&index, e) in self.entries.iter_mut() {
            if !matches!(e.state, EntryState::Done(_)) {
                let f = UtteranceFailure { index, code: code.to_owned(), message: message.to_owned() };
                e.state = EntryState::Done(Outcome::Failed(f));
            }
        }
        self.deliver_ready();
    }

    /// Closing and nothing left to wait for: send `session_close`.
    fn maybe_close(&mut self, _now: Millis) {
        if self.closing.is_none() || self.close_sent || !self.entries.is_empty() {
            return;
        }
        match &self.link {
            Link::Live { session_id, .. } => {
                let close = SessionClose { session_id: session_id.clone(), reason: Some("user_finished".to_owned()) };
                self.actions.push(Action::Send(ClientToServer::SessionClose(close).to_json()));
                self.close_sent = true;
            }
            // An ack is on its way (or the handshake times out): close the
            // session on the server once it is open; the deadline bounds this.
            Link::Connecting { .. } | Link::Handshake { .. } if self.ident.is_some() => {}
            _ => self.finish("closed by the app"),
        }
    }

    fn force_close(&mut self, reason: &str) {
        self.fail_all(failure::CLOSED, "the client closed before the outcome arrived");
        if let (Link::Live { session_id, .. }, false) = (&self.link, self.close_sent) {
            let close = SessionClose { session_id: session_id.clone(), reason: Some("app_exit".to_owned()) };
            self.actions.push(Action::Send(ClientToServer::SessionClose(close).to_json()));
        }
        self.finish(reason);
    }

    fn finish(&mut self, reason: &str) {
        self.link = Link::Closed;
        self.actions.push(Action::Disconnect);
        self.deliver(Event::State(ConnectionState::Closed { reason: reason.to_owned() }));
    }
}
