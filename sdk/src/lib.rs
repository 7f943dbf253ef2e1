//! `tolk-sdk`: the client SDK of Tolk, in plain Rust.
//!
//! A phone app records audio, cuts it into utterances and sends each to the
//! dispatcher over the session protocol (`docs/protocol.md`), then shows the
//! translations in order. This crate holds all of that logic so the platform
//! bindings (`tolk-ffi`) stay thin:
//!
//! - a voice-activity chunker that turns a continuous PCM stream into
//!   utterances;
//! - a session client that sends them and survives bad networks: heartbeats,
//!   dead-connection detection, reconnect with back-off and jitter, resume,
//!   re-send of unanswered utterances, refusals, in-order delivery of
//!   outcomes even when the server misbehaves, clean close. Given several
//!   dispatchers of a cluster ([`ClientConfig::fallback_urls`]), it moves
//!   to the next one after a failed attempt or a lost connection and resumes
//!   the session there, so a dead dispatcher costs one back-off step.
//!
//! The logic is sans-IO: [`Chunker`] and [`Session`] read no clock and touch
//! no socket, so they are tested exhaustively with plain events. [`Client`]
//! is the thin tokio shell that runs both on a worker thread and moves bytes.
//!
//! ```no_run
//! use tolk_sdk::{Client, ClientConfig, Event};
//!
//! let mut config = ClientConfig::new("ws://127.0.0.1:8080/ws/session");
//! config.session.src_lang = "zh".into();
//! config.session.tgt_lang = "en".into();
//! let client = Client::start(config, |event: Event| println!("{event:?}"))?;
//! client.push_audio(&[0i16; 1600])?; // 100 ms of 16 kHz audio from the microphone
//! client.close()?;
//! client.wait_closed(std::time::Duration::from_secs(20));
//! # Ok::<(), tolk_sdk::SdkError>(())
//! ```
//!
//! # Layout
//! - [`chunker`]: [`Chunker`] frames PCM16 for `webrtc-vad` and emits
//!   [`Utterance`]s with pre-roll, hang-over, min/max length and manual cut;
//!   configured by [`ChunkerConfig`].
//! - [`session`]: [`Session`], the session protocol client as a state
//!   machine ([`Input`] in, [`Action`] out, [`Event`]s for the app);
//!   configured by [`SessionConfig`].
//! - [`client`]: [`Client`], the tokio shell (one worker thread per client),
//!   with its [`Listener`]; configured by [`ClientConfig`].
//! - `codec`: utterances to pcm16, wav or Ogg Opus (libopus), Opus results
//!   back to PCM; the session calls it.
//! - [`SdkError`]: the crate's one error enum.

pub mod chunker;
pub mod client;
mod codec;
mod error;
pub mod session;

pub use chunker::{Chunker, ChunkerConfig, Utterance};
pub use client::{Client, ClientConfig, Listener};
pub use error::SdkError;
pub use session::{
    Action, AudioEncoding, ConnectionState, EncodedUtterance, Event, Input, Millis, Queued, Session, SessionConfig, Translation,
    UtteranceFailure, failure,
};
pub use tolk_protocol::session::ClientPlatform;
pub use tolk_protocol::{AudioFormat, Features};
