//! `tolk-protocol`: the wire protocol of Tolk, typed and validated.
//!
//! Two WebSocket protocols meet at the dispatcher: the *session* protocol
//! (phone ↔ dispatcher, `/ws/session`) and the *node* protocol (node ↔
//! dispatcher, `/ws/node`). Every frame is a JSON text frame tagged by
//! `"type"`. This crate holds one type per message, one enum per direction
//! ([`ClientToServer`], [`ServerToClient`], [`NodeToServer`],
//! [`ServerToNode`]), a parser that turns bad input into a [`ProtocolError`]
//! naming the protocol code and the offending field, and the JSON Schema of
//! every message. It is the only crate that derives `Serialize`/`Deserialize`
//! for wire types; the others convert at their edge.
//!
//! Audio stays opaque base64 text while parsing, so a relay never copies or
//! decodes it; [`audio`] decodes it for those that need samples.
//!
//! # Layout
//! - [`common`]: types both protocols share (features, extras, error codes).
//! - [`session`], [`node`]: the messages of each protocol.
//! - [`models`]: which installed models serve a job (dispatcher and node share it).
//! - [`validate`]: value checks beyond what types express.
//! - `raw`: [`Base64Audio`], audio kept as raw JSON text (spliced, never re-escaped).
//! - [`audio`]: decoding and encoding pcm16 and wav audio (and Opus, below).
//! - [`ogg_opus`]: the Ogg Opus container: strict validation, length, muxing (pure Rust).
//! - `opus` (feature `opus`): encoding and decoding Opus with libopus.
//! - [`schema`]: JSON Schema generation (checked in under `protocol/schema/`).

pub mod audio;
pub mod common;
mod error;
pub mod models;
pub mod node;
pub mod ogg_opus;
#[cfg(feature = "opus")]
pub mod opus;
mod raw;
pub mod schema;
pub mod session;
pub mod validate;

use std::borrow::Cow;

use serde::Deserialize;

pub use common::{AudioFormat, ErrorCode, ErrorMessage, Extra, Features, JobErrorCode, ModelKind};
pub use error::ProtocolError;
pub use node::{NodeToServer, ServerToNode};
pub use raw::{Base64Audio, Spliced};
pub use session::{ClientToServer, ServerToClient};
pub use validate::Validate;

/// A direction's message enum: parse from and serialize to one text frame.
pub trait Message: Sized + serde::Serialize + Validate {
    /// Every `"type"` this direction carries.
    const TYPES: &'static [&'static str];

    /// The `"type"` of this message.
    fn type_name(&self) -> &'static str;

    /// Deserializes the message whose `"type"` is `ty` (known to be in
    /// [`Self::TYPES`]), without value checks.
    #[doc(hidden)]
    fn deserialize_typed(ty: &str, text: &str) -> Result<Self, ProtocolError>;

    /// The key of the message type's large base64 field (`audio`,
    /// `tts_audio`), which the reader lifts out before parsing the rest.
    #[doc(hidden)]
    fn bulk_key(ty: &str) -> Option<&'static str>;

    /// Puts a lifted base64 literal back into its field, which the rest's
    /// parse left empty; `false` when the field was not empty (the lift
    /// took something else: the full reader decides).
    #[doc(hidden)]
    fn put_bulk(&mut self, literal: Base64Audio) -> bool;

    /// Parses and validates one text frame.
    fn parse(text: &str) -> Result<Self, ProtocolError> {
        let msg = Self::parse_unvalidated(text)?;
        msg.validate()?;
        Ok(msg)
    }

    /// [`Message::parse`] for a frame held as `owner`, whose bytes `text`
    /// is (as a WebSocket library hands a received text frame): the audio
    /// becomes a slice of `owner` instead of a copy. If `text` is not
    /// `owner`'s bytes, this is `parse`.
    fn parse_shared(text: &str, owner: &bytes::Bytes) -> Result<Self, ProtocolError> {
        let msg = Self::parse_inner(text, Some(owner))?;
        msg.validate()?;
        Ok(msg)
    }

    /// Parses one text frame, checking types but not value ranges. For peers
    /// that must accept what an older or newer party sends.
    fn parse_unvalidated(text: &str) -> Result<Self, ProtocolError> {
        Self::parse_inner(text, None)
    }

    #[doc(hidden)]
    fn parse_inner(text: &str, owner: Option<&bytes::Bytes>) -> Result<Self, ProtocolError> {
        if let Some(ty) = leading_type(text).filter(|ty| Self::TYPES.contains(ty)) {
            if text.len() >= raw::LIFT_MIN_BYTES
                && let Some(key) = Self::bulk_key(ty)
                && let Some((rest, literal)) = raw::lift(text, key, owner)
                && let Ok(mut msg) = Self::deserialize_typed(ty, &rest)
                && msg.put_bulk(literal)
            {
                return Ok(msg);
            }
            return Self::deserialize_typed(ty, text).map_err(|typed| {
                // Report as the full reader would: a frame that is not JSON
                // at all says so rather than naming a field.
                message_type(text).err().unwrap_or(typed)
            });
        }
        let ty = message_type(text)?;
        if !Self::TYPES.contains(&ty.as_ref()) {
            return Err(ProtocolError::invalid_field("type", format!("unknown message type {:?}", truncate(&ty, 64))));
        }
        Self::deserialize_typed(&ty, text)
    }

    /// Bytes of the message's bulk base64 field as written (0 without one).
    #[doc(hidden)]
    fn bulk_len(&self) -> usize;

    /// The message's bulk base64 field as its JSON literal, quotes
    /// included (`None` without one).
    fn bulk_literal(&self) -> Option<&str>;

    /// Serializes with the bulk literal left out (see [`Spliced`]), for
    /// writers that send the pieces without joining them.
    fn to_json_spliced(&self) -> Spliced {
        raw::to_json_spliced(self, 512)
    }

    /// Serializes to one JSON text frame.
    fn to_json(&self) -> String {
        // Sized once: a frame carrying tens of kB of audio would otherwise
        // be copied again at every doubling of its buffer.
        let mut out = Vec::with_capacity(self.bulk_len() + 512);
        // Serializing these types cannot fail: every map key is a string and
        // no Serialize impl is fallible.
        if serde_json::to_writer(&mut out, self).is_err() {
            return String::new();
        }
        json_text(out)
    }
}

/// `serde_json`'s output as a `String` without a second pass over it.
#[allow(unsafe_code)] // as serde_json::to_string does itself
fn json_text(bytes: Vec<u8>) -> String {
    // SAFETY: `bytes` is what serde_json's serializer wrote, which is always
    // valid UTF-8 (it writes `str` data and ASCII syntax only).
    unsafe { String::from_utf8_unchecked(bytes) }
}

/// The `"type"` when it is the object's first key, as in every frame we
/// write (serde puts the tag first) and in the documents' examples: read
/// without scanning the rest of the frame (tens of kB of audio). The full
/// parse that follows still checks the whole frame.
fn leading_type(text: &str) -> Option<&str> {
    let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let s = text.trim_start_matches(ws).strip_prefix('{')?.trim_start_matches(ws);
    let s = s.strip_prefix("\"type\"")?.trim_start_matches(ws).strip_prefix(':')?.trim_start_matches(ws);
    let s = s.strip_prefix('"')?;
    let end = s.find(['"', '\\'])?;
    // An escape in the value: leave it to the full reader.
    (s.as_bytes().get(end) == Some(&b'"')).then(|| &s[..end])
}

/// Reads only the `"type"` of a frame (the rest is skipped, not built).
fn message_type(text: &str) -> Result<Cow<'_, str>, ProtocolError> {
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow, default)]
        ty: Option<Cow<'a, str>>,
    }
    match serde_json::from_str::<Tag<'_>>(text) {
        Ok(Tag { ty: Some(ty) }) => Ok(ty),
        Ok(Tag { ty: None }) => Err(ProtocolError::invalid_field("type", "missing field `type`")),
        Err(e) if e.is_data() => {
            let what = if text.trim_start().starts_with('{') { "field `type` must be a string" } else { "a message must be a JSON object" };
            let field = text.trim_start().starts_with('{').then(|| "type".to_owned());
            Err(ProtocolError { code: ErrorCode::InvalidMessage, field, message: what.to_owned() })
        }
        Err(e) => Err(ProtocolError::invalid_frame(format!("not valid JSON: {}", strip_position(&e.to_string())))),
    }
}

/// Deserializes `T` from `text`, reporting the path of the offending field.
#[doc(hidden)]
pub fn deserialize_with_path<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ProtocolError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.inner().to_string()).to_owned();
        let parent = (path != ".").then_some(path);
        // serde reports a missing field at its parent's path; name the field itself.
        let field = match message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
            Some(name) => Some(parent.map_or_else(|| name.to_owned(), |p| format!("{p}.{name}"))),
            None => parent,
        };
        let message = match &field {
            Some(f) if !message.starts_with("missing field") => format!("invalid field `{f}`: {message}"),
            _ => message,
        };
        ProtocolError { code: ErrorCode::InvalidMessage, field, message }
    })
}

fn strip_position(message: &str) -> &str {
    message.find(" at line ").map_or(message, |i| &message[..i])
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Declares a direction enum, internally tagged by `"type"`, with its parser.
#[doc(hidden)]
#[macro_export]
macro_rules! direction_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident($tag:literal) $(= $ty:ty)? $(; bulk $field:ident $($opt:ident)?)?,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(tag = "type")]
        pub enum $name {
            $(#[serde(rename = $tag)] $variant($crate::direction_enum!(@ty $variant $($ty)?)),)*
        }

        impl $crate::Message for $name {
            const TYPES: &'static [&'static str] = &[$($tag),*];

            fn type_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $tag,)* }
            }

            fn deserialize_typed(ty: &str, text: &str) -> Result<Self, $crate::ProtocolError> {
                match ty {
                    $($tag => $crate::deserialize_with_path(text).map(Self::$variant),)*
                    other => Err($crate::ProtocolError::invalid_field("type", format!("unknown message type {other:?}"))),
                }
            }

            fn bulk_key(ty: &str) -> Option<&'static str> {
                match ty {
                    $($tag => $crate::direction_enum!(@key $($field)?),)*
                    _ => None,
                }
            }

            fn bulk_literal(&self) -> Option<&str> {
                match self { $(Self::$variant(m) => $crate::direction_enum!(@lit m $($field $($opt)?)?),)* }
            }

            fn bulk_len(&self) -> usize {
                match self { $(Self::$variant(m) => $crate::direction_enum!(@len m $($field $($opt)?)?),)* }
            }

            #[allow(unused_variables)]
            fn put_bulk(&mut self, literal: $crate::Base64Audio) -> bool {
                match self { $(Self::$variant(m) => $crate::direction_enum!(@put m literal $($field $($opt)?)?),)* }
            }
        }

        impl $crate::Validate for $name {
            fn validate(&self) -> Result<(), $crate::ProtocolError> {
                match self { $(Self::$variant(m) => m.validate(),)* }
            }
        }

        $(
            impl From<$crate::direction_enum!(@ty $variant $($ty)?)> for $name {
                fn from(m: $crate::direction_enum!(@ty $variant $($ty)?)) -> Self { Self::$variant(m) }
            }
        )*
    };
    (@ty $variant:ident $ty:ty) => { $ty };
    (@ty $variant:ident) => { $variant };
    (@key) => { None };
    (@key $field:ident) => { Some(stringify!($field)) };
    (@len $m:ident) => { { let _ = $m; 0 } };
    (@len $m:ident $field:ident) => { $m.$field.raw_json().len() };
    (@len $m:ident $field:ident optional) => { $m.$field.as_ref().map_or(0, |a| a.raw_json().len()) };
    (@lit $m:ident) => { { let _ = $m; None } };
    (@lit $m:ident $field:ident) => { Some($m.$field.raw_json()) };
    (@lit $m:ident $field:ident optional) => { $m.$field.as_ref().map(|a| a.raw_json()) };
    (@put $m:ident $b:ident) => { false };
    (@put $m:ident $b:ident $field:ident) => {
        if $m.$field.as_str().is_empty() { $m.$field = $b; true } else { false }
    };
    (@put $m:ident $b:ident $field:ident optional) => {
        match &mut $m.$field { Some(a) if a.as_str().is_empty() => { *a = $b; true } _ => false }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the full reader makes of `text` (no lift), as comparable text.
    fn full<M: Message + std::fmt::Debug>(ty: &str, text: &str) -> String {
        match M::deserialize_typed(ty, text).map_err(|typed| message_type(text).err().unwrap_or(typed)) {
            Ok(m) => format!("ok {}", m.to_json()),
            Err(e) => format!("err {:?} {}", e.field, e.message),
        }
    }

    fn fast<M: Message + std::fmt::Debug>(text: &str) -> String {
        match M::parse_unvalidated(text) {
            Ok(m) => format!("ok {}", m.to_json()),
            Err(e) => format!("err {:?} {}", e.field, e.message),
        }
    }

    /// [`fast`] for a frame held as `Bytes` (the audio a slice of it).
    fn fast_shared<M: Message + std::fmt::Debug>(text: &str) -> String {
        let owner = bytes::Bytes::from(text.to_owned());
        let Ok(view) = std::str::from_utf8(&owner) else { return "not UTF-8".into() };
        match M::parse_inner(view, Some(&owner)) {
            Ok(m) => format!("ok {}", m.to_json()),
            Err(e) => format!("err {:?} {}", e.field, e.message),
        }
    }

    fn utterance_with(audio_part: &str, before: &str) -> String {
        format!(
            r#"{{"type":"utterance","session_id":"s-1",{before}"utterance_index":3,"src_lang":"en","tgt_lang":"es","audio_format":"pcm16","sample_rate":16000,{audio_part}}}"#
        )
    }

    #[test]
    fn lifting_the_audio_reads_exactly_what_the_full_reader_reads() {
        let audio = "QUJD".repeat(2_000);
        let cases = [
            utterance_with(&format!(r#""audio":"{audio}""#), ""),
            // Audio first, then the rest.
            format!(
                r#"{{"type":"utterance","audio":"{audio}","session_id":"s-1","utterance_index":3,"src_lang":"en","tgt_lang":"es","audio_format":"pcm16","sample_rate":16000}}"#
            ),
            // Whitespace around the colon: the full reader.
            utterance_with(&format!(r#""audio" : "{audio}""#), ""),
            // The key's text inside another string (escaped quotes).
            utterance_with(&format!(r#""audio":"{audio}""#), r#""dialect":"x\"audio\":\"AAAA","#),
            // A nested "audio" before the real one: the rest's parse refuses it.
            utterance_with(&format!(r#""audio":"{audio}""#), r#""features":{"audio":"QUJD"},"#),
            // Two audio keys: a duplicate field either way.
            utterance_with(&format!(r#""audio":"{audio}","audio":"QUJD""#), ""),
            // An escape in the value: the full reader (and the same audio).
            utterance_with(&format!(r#""audio":"{audio}\/""#), ""),
            // No audio at all.
            utterance_with(r#""dialect":null"#, ""),
            // Truncated in the middle of the audio.
            utterance_with(&format!(r#""audio":"{audio}"#), "").trim_end_matches('}').to_owned(),
            // A control character in the value.
            utterance_with(&format!("\"audio\":\"{audio}\u{1}\""), ""),
        ];
        for (i, text) in cases.iter().enumerate() {
            assert!(i == 7 || text.len() >= raw::LIFT_MIN_BYTES, "case {i} is long enough to be lifted");
            assert_eq!(fast::<ClientToServer>(text), full::<ClientToServer>("utterance", text), "case {i}");
            assert_eq!(fast_shared::<ClientToServer>(text), full::<ClientToServer>("utterance", text), "case {i}, shared");
        }
        // Read from a frame held as `Bytes`, the audio is a slice of it.
        let owner = bytes::Bytes::from(cases[0].clone());
        let view = std::str::from_utf8(&owner).unwrap_or_default();
        let Ok(ClientToServer::Utterance(u)) = ClientToServer::parse_shared(view, &owner) else { panic!("parses") };
        let inside = owner.as_ptr_range();
        assert!(inside.contains(&u.audio.raw_json().as_ptr()), "not copied");
        assert_eq!(u.audio.as_str(), audio);
        assert_eq!(serde_json::to_string(&u.audio).ok(), Some(format!("\"{audio}\"")));
        // Another frame's bytes as the owner: copied, the same message.
        let other = bytes::Bytes::from(cases[0].clone());
        let Ok(ClientToServer::Utterance(c)) = ClientToServer::parse_shared(&cases[0], &other) else { panic!("parses") };
        assert!(!other.as_ptr_range().contains(&c.audio.raw_json().as_ptr()));
        assert_eq!(c, u);
        // The common case is lifted, and its audio kept byte for byte.
        let (rest, literal) = raw::lift(&cases[0], "audio", None).expect("lifted");
        assert!(rest.len() < 300 && rest.contains(r#""audio":"""#), "{rest}");
        assert_eq!(literal.as_str(), audio);
        assert!(raw::lift(&cases[2], "audio", None).is_none());
        assert!(raw::lift(&cases[6], "audio", None).is_none());
        assert!(raw::lift(&cases[9], "audio", None).is_none());
    }

    #[test]
    fn optional_speech_is_lifted_from_results_too() {
        let speech = "AAAA".repeat(1_000);
        let result = format!(
            r#"{{"type":"job_result","job_id":"j-1","node_id":"n-1","session_id":"s-1","utterance_index":0,"success":true,"text_asr":"hi","tts_audio":"{speech}","tts_format":"pcm16","tts_sample_rate":16000}}"#
        );
        assert_eq!(fast::<NodeToServer>(&result), full::<NodeToServer>("job_result", &result));
        let Ok(NodeToServer::JobResult(r)) = NodeToServer::parse_unvalidated(&result) else { panic!() };
        assert_eq!(r.tts_audio.as_deref(), Some(speech.as_str()));
        let null = result.replace(&format!(r#""{speech}""#), "null").replace(r#""text_asr":"hi""#, &format!(r#""text_asr":"{speech}""#));
        assert_eq!(fast::<NodeToServer>(&null), full::<NodeToServer>("job_result", &null), "null speech: nothing to lift");
    }

    /// Joins a spliced serialization as a writer would.
    fn joined<M: Message>(m: &M) -> String {
        let Spliced { text, at } = m.to_json_spliced();
        match (at, m.bulk_literal()) {
            (Some(at), Some(literal)) => format!("{}{literal}{}", &text[..at], &text[at + 2..]),
            (None, None) => text,
            (at, literal) => panic!("placeholder at {at:?} but literal {:?}", literal.map(str::len)),
        }
    }

    #[test]
    fn a_spliced_serialization_joins_to_exactly_the_frame() {
        let audio = "QUJD".repeat(2_000);
        let utterance = utterance_with(&format!(r#""audio":"{audio}""#), r#""dialect":"x\"audio\":\"\"","#);
        let u = ClientToServer::parse_unvalidated(&utterance).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(joined(&u), u.to_json());
        let assign = format!(
            r#"{{"type":"job_assign","job_id":"j-1","session_id":"s-1","utterance_index":3,"src_lang":"en","tgt_lang":"es","dialect":"\"audio\":\"\"","audio":"{audio}","audio_format":"pcm16","sample_rate":16000,"deadline_ms":5000}}"#
        );
        let Ok(assign) = ServerToNode::parse_unvalidated(&assign) else { panic!("parses") };
        let spliced = assign.to_json_spliced();
        assert!(spliced.text.len() < 400, "the audio is not in the text: {}", spliced.text);
        assert_eq!(joined(&assign), assign.to_json());
        let speech = "AAAA".repeat(1_000);
        let result = format!(
            r#"{{"type":"job_result","job_id":"j-1","node_id":"n-1","session_id":"s-1","utterance_index":0,"success":true,"text_asr":"\"\"","tts_audio":"{speech}","tts_format":"pcm16","tts_sample_rate":16000}}"#
        );
        let r = NodeToServer::parse_unvalidated(&result).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(joined(&r), r.to_json());
        assert_eq!(joined(&r), result, "byte for byte as received");
        // No speech, or no bulk field at all: the text is the whole frame.
        let silent = result.replace(&format!(r#""{speech}""#), "null");
        let Ok(s) = NodeToServer::parse_unvalidated(&silent) else { panic!("parses") };
        assert_eq!(s.to_json_spliced(), Spliced { text: s.to_json(), at: None });
        let hb = ClientToServer::parse(r#"{"type":"client_heartbeat","session_id":"s-1","timestamp":1}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hb.to_json_spliced(), Spliced { text: hb.to_json(), at: None });
        // Splicing leaves ordinary serialization as it was.
        assert_eq!(serde_json::to_string(&r).ok(), Some(r.to_json()));
    }

    #[test]
    fn a_leading_type_is_read_without_the_rest() {
        assert_eq!(leading_type(r#"{"type":"utterance","audio":"AAAA"}"#), Some("utterance"));
        assert_eq!(leading_type(" {\n\t\"type\" :  \"x\" , "), Some("x"), "whitespace anywhere JSON allows it");
        assert_eq!(leading_type(r#"{"audio":"A","type":"utterance"}"#), None, "not first: the full reader finds it");
        assert_eq!(leading_type(r#"{"type":"a\"b"}"#), None, "escapes go to the full reader");
        assert_eq!(leading_type(r#"{"type":5}"#), None);
        assert_eq!(leading_type(r#"["type"]"#), None);
        assert_eq!(leading_type(r#"{"type":"unterminated"#), None);
        // Whichever path reads it, the message parses the same.
        let first = r#"{"type":"client_heartbeat","session_id":"s-1","timestamp":1}"#;
        let later = r#"{"session_id":"s-1","timestamp":1,"type":"client_heartbeat"}"#;
        assert_eq!(ClientToServer::parse(first).ok(), ClientToServer::parse(later).ok());
        assert!(ClientToServer::parse(first).is_ok());
        // A leading type does not make a broken frame pass.
        assert!(ClientToServer::parse(r#"{"type":"client_heartbeat","session_id":"s-1","timestamp":1"#).is_err());
    }
}
