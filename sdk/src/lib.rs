//! `tolk-sdk`: the client SDK of Tolk, in plain Rust.
//!
//! A phone app records audio, cuts it into utterances and sends each to the
//! dispatcher over the session protocol. This crate holds all of that logic so
//! the platform bindings (`tolk-ffi`) stay thin. Today it holds the first half:
//! a voice-activity chunker that turns a continuous PCM stream into
//! utterances. The session client (heartbeats, reconnect, resume, re-send,
//! in-order delivery) will come next.
//!
//! Everything here is sans-IO: no threads, sockets or clocks. Time is derived
//! from the number of samples pushed, so behaviour is deterministic and tested
//! without audio devices.
//!
//! # Layout
//! - [`chunker`]: [`Chunker`] frames PCM16 for `webrtc-vad` and emits
//!   [`Utterance`]s with pre-roll, hang-over, min/max length and manual cut;
//!   configured by [`ChunkerConfig`].
//! - [`SdkError`]: the crate's one error enum.

pub mod chunker;
mod error;

pub use chunker::{Chunker, ChunkerConfig, Utterance};
pub use error::SdkError;
