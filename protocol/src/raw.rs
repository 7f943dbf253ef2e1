//! [`Base64Audio`]: a JSON string kept as its raw JSON text, so a relay
//! moves audio from one frame into another without unescaping and
//! re-escaping it (extension 9: the audio a client sends reaches the node
//! byte for byte, and the copy costs a `memcpy`, not a scan per byte).
//! A literal read from a frame the caller holds as [`Bytes`] is a slice of
//! that frame: not copied at all.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Base64 audio as it appears on the wire: a JSON string whose raw text is
/// kept. Reads as a `&str` (the string's content); serializes verbatim.
#[derive(Clone)]
pub struct Base64Audio {
    /// The JSON string literal, quotes included.
    raw: Literal,
    /// The decoded content, kept only when the literal has escapes (never for
    /// base64, whose alphabet needs none).
    unescaped: Option<Box<str>>,
}

/// A JSON string literal, quotes included.
#[derive(Clone)]
enum Literal {
    /// Built here, or read from a borrowed `str`.
    Owned(Box<RawValue>),
    /// A slice of a received frame (see [`shared_literal`]): a literal
    /// without escapes or control characters, cut at its quotes.
    Shared(Bytes),
}

impl Literal {
    fn get(&self) -> &str {
        match self {
            Self::Owned(raw) => raw.get(),
            Self::Shared(bytes) => shared_str(bytes),
        }
    }
}

/// The text of a [`Literal::Shared`].
#[allow(unsafe_code)] // a slice of a `str`, cut at ASCII quotes: checked where it is made
fn shared_str(bytes: &Bytes) -> &str {
    // SAFETY: `Literal::Shared` is only built by `shared_literal`, from a
    // sub-slice of a `&str` that starts and ends with an ASCII `"`, so
    // its bytes are valid UTF-8 (a slice of UTF-8 at ASCII boundaries).
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// The literal `text[start - 1..end + 1]` (the value between quotes at
/// `start - 1` and `end`) as a slice of `owner`, when `owner` holds exactly
/// `text`'s bytes; `None` otherwise (the caller copies).
fn shared_literal(text: &str, owner: &Bytes, start: usize, end: usize) -> Option<Literal> {
    let same = text.as_ptr() == owner.as_ptr() && text.len() == owner.len();
    let quoted = start >= 1 && text.as_bytes().get(start - 1) == Some(&b'"') && text.as_bytes().get(end) == Some(&b'"');
    (same && quoted).then(|| Literal::Shared(owner.slice(start - 1..end + 1)))
}

/// Whether `s` can stand between two quotes in JSON as it is. Written as a
/// branch-free fold over chunks so the compiler vectorizes it.
fn needs_no_escape(s: &str) -> bool {
    s.as_bytes().chunks(64).all(|chunk| !chunk.iter().fold(false, |bad, &b| bad | (b == b'"') | (b == b'\\') | (b < 0x20)))
}

impl Base64Audio {
    /// The string's content.
    pub fn as_str(&self) -> &str {
        match &self.unescaped {
            Some(s) => s,
            None => {
                let raw = self.raw.get();
                // Built only from `"…"` literals without escapes (see `from_plain`, `lift`).
                raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default()
            }
        }
    }

    /// The JSON literal, quotes included, exactly as it will be written.
    pub fn raw_json(&self) -> &str {
        self.raw.get()
    }

    fn from_plain(s: &str) -> Option<Self> {
        needs_no_escape(s).then(|| Self::from_checked_plain(s))
    }

    /// [`Base64Audio::from_plain`] for `s` already known to need no escape.
    fn from_checked_plain(s: &str) -> Self {
        debug_assert!(needs_no_escape(s));
        let mut literal = String::with_capacity(s.len() + 2);
        literal.push('"');
        literal.push_str(s);
        literal.push('"');
        Self { raw: Literal::Owned(plain_literal(literal)), unescaped: None }
    }

    fn from_any(s: Cow<'_, str>) -> Self {
        if needs_no_escape(&s)
            && let Some(plain) = Self::from_plain(&s)
        {
            return plain;
        }
        // serde_json escapes a `str` correctly and cannot fail on one.
        let literal = serde_json::to_string(s.as_ref()).unwrap_or_else(|_| "\"\"".to_owned());
        match RawValue::from_string(literal) {
            Ok(raw) => Self { raw: Literal::Owned(raw), unescaped: Some(s.into_owned().into_boxed_str()) },
            Err(_) => Self::default(),
        }
    }
}

/// A `RawValue` of `literal`, which the caller has built as `"` + text
/// for which [`needs_no_escape`] holds + `"`: a well-formed JSON string, so
/// the re-parse `RawValue::from_string` does (a byte-by-byte scan of tens of
/// kB) is skipped.
#[allow(unsafe_code)] // the one `unsafe` call of the crate, on a literal checked here
fn plain_literal(literal: String) -> Box<RawValue> {
    debug_assert!(literal.len() >= 2 && literal.starts_with('"') && literal.ends_with('"'));
    debug_assert!(needs_no_escape(&literal[1..literal.len() - 1]));
    // SAFETY: a quote, then valid UTF-8 (a `String`) without `"`, `\` or
    // control characters, then a quote: exactly one well-formed JSON string,
    // no surrounding whitespace, as `from_string_unchecked` requires.
    unsafe { RawValue::from_string_unchecked(literal) }
}

/// Frames at least this long have their bulk field lifted (below it the
/// full reader is as fast).
pub(crate) const LIFT_MIN_BYTES: usize = 2048;

/// Lifts the string value of the top-level-looking key `"key":"…"` out of
/// `text`: the text with that value emptied (`"key":""`), and the value as a
/// [`Base64Audio`]. The rest (a few hundred bytes) is then parsed as usual,
/// so it still checks everything; the value itself is found with `memchr`
/// and checked for what a plain JSON string may hold, instead of being
/// scanned byte by byte by the JSON reader. `None` (the full reader
/// decides) for anything unusual: whitespace around the colon, an escape
/// or a control character in the value, a key that is part of a string.
/// The caller also falls back when the parsed rest's field is not empty,
/// i.e. when the key found was not the top-level one.
pub(crate) fn lift(text: &str, key: &str, owner: Option<&Bytes>) -> Option<(String, Base64Audio)> {
    let bytes = text.as_bytes();
    let pattern = format!("\"{key}\":\"");
    let at = memchr::memmem::find(bytes, pattern.as_bytes())?;
    // The pattern's first quote must open a key, not be an escaped quote
    // inside a string (preceded by an odd number of backslashes).
    let backslashes = bytes[..at].iter().rev().take_while(|&&b| b == b'\\').count();
    if backslashes % 2 == 1 {
        return None;
    }
    let start = at + pattern.len();
    // One pass finds the end and checks the value: the first byte a plain
    // JSON string may not hold must be its closing quote.
    let end = start + first_special(&bytes[start..])?;
    if bytes[end] != b'"' {
        return None; // an escape or a control character in the value: not base64
    }
    let value = &text[start..end];
    let literal = match owner.and_then(|o| shared_literal(text, o, start, end)) {
        Some(shared) => Base64Audio { raw: shared, unescaped: None },
        None => Base64Audio::from_checked_plain(value),
    };
    let mut rest = String::with_capacity(text.len() - value.len());
    rest.push_str(&text[..start]);
    rest.push_str(&text[end..]);
    Some((rest, literal))
}

/// Where the first byte of `s` is that cannot stand in a JSON string as it
/// is (`"`, `\`, a control character). Checked a chunk at a time without
/// branches (the compiler vectorizes it), then found within the chunk.
fn first_special(s: &[u8]) -> Option<usize> {
    let special = |b: u8| (b == b'"') | (b == b'\\') | (b < 0x20);
    let mut base = 0;
    for chunk in s.chunks(64) {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            return chunk.iter().position(|&b| special(b)).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

impl Default for Base64Audio {
    fn default() -> Self {
        Self::from_plain("").unwrap_or_else(|| Self { raw: Literal::Owned(RawValue::NULL.to_owned()), unescaped: Some("".into()) })
    }
}

impl From<String> for Base64Audio {
    fn from(s: String) -> Self {
        Self::from_any(Cow::Owned(s))
    }
}

impl From<&str> for Base64Audio {
    fn from(s: &str) -> Self {
        Self::from_any(Cow::Borrowed(s))
    }
}

impl std::ops::Deref for Base64Audio {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Base64Audio {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Base64Audio {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Base64Audio {}

impl PartialEq<str> for Base64Audio {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Base64Audio {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Base64Audio {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Base64Audio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Audio is long: show its length and start, not all of it.
        let s = self.as_str();
        let head: String = s.chars().take(16).collect();
        write!(f, "Base64Audio({} bytes: {head:?}…)", s.len())
    }
}

impl fmt::Display for Base64Audio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Base64Audio {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if SPLICE.with(|s| s.leave_out()) {
            return EMPTY_LITERAL.with(|empty| empty.serialize(serializer));
        }
        match &self.raw {
            // Under serde_json this writes the literal verbatim; other
            // serializers get the plain string.
            Literal::Owned(raw) => raw.serialize(serializer),
            // Plain text (no escapes): the same bytes as the literal. The
            // dispatcher's sockets write these literals spliced, not here.
            Literal::Shared(_) => serializer.serialize_str(self.as_str()),
        }
    }
}

thread_local! {
    /// Set while [`to_json_spliced`] serializes on this thread.
    static SPLICE: Splice = const { Splice { active: std::cell::Cell::new(false), written: std::cell::Cell::new(0), at: std::cell::Cell::new(None) } };
    static EMPTY_LITERAL: Box<RawValue> = plain_literal("\"\"".to_owned());
}

/// What a spliced serialization has seen: bytes written so far and where
/// the (one) bulk literal was left out.
struct Splice {
    active: std::cell::Cell<bool>,
    written: std::cell::Cell<usize>,
    at: std::cell::Cell<Option<usize>>,
}

impl Splice {
    /// Whether the literal being serialized is to be left out (recording
    /// where: serde_json writes a value at once, so the bytes written so far
    /// are its offset). Only the first of a message is: each message type
    /// has at most one bulk field.
    fn leave_out(&self) -> bool {
        if !self.active.get() || self.at.get().is_some() {
            return false;
        }
        self.at.set(Some(self.written.get()));
        true
    }
}

/// Counts what serde_json writes, for [`Splice::leave_out`].
struct CountingWriter(Vec<u8>);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        SPLICE.with(|s| s.written.set(self.0.len()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message as JSON with its bulk base64 literal left out: the text holds
/// `""` where the literal goes, at byte `at`. Writing `text[..at]`, the
/// literal and `text[at + 2..]` gives exactly what `to_json` gives, without
/// copying tens of kB of audio into one more buffer (a socket can take the
/// three pieces in one vectored write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spliced {
    /// The JSON text, with `""` in place of the literal.
    pub text: String,
    /// Where the literal's `""` placeholder starts (`None`: the message had
    /// no bulk literal, `text` is the whole frame).
    pub at: Option<usize>,
}

/// Serializes `value` as [`Spliced`]. Not re-entrant (nothing it calls
/// serializes another message).
pub(crate) fn to_json_spliced<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Spliced {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SPLICE.with(|s| s.active.set(false));
        }
    }
    SPLICE.with(|s| {
        s.active.set(true);
        s.written.set(0);
        s.at.set(None);
    });
    let reset = Reset;
    let mut out = CountingWriter(Vec::with_capacity(capacity));
    let ok = serde_json::to_writer(&mut out, value).is_ok();
    let at = SPLICE.with(|s| s.at.get());
    drop(reset);
    if !ok {
        return Spliced { text: String::new(), at: None };
    }
    // serde_json writes valid UTF-8 only (as `to_json` relies on too).
    let text = String::from_utf8(out.0).unwrap_or_default();
    let at = at.filter(|&i| text.get(i..i + 2) == Some("\"\""));
    Spliced { text, at }
}

impl<'de> Deserialize<'de> for Base64Audio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Base64Audio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Base64Audio::from_any(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Base64Audio::from_any(Cow::Borrowed(s)))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Base64Audio::from_any(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl JsonSchema for Base64Audio {
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Holder {
        audio: Base64Audio,
    }

    #[test]
    fn base64_passes_through_verbatim() {
        let text = r#"{"audio":"AAECAwQF+/8="}"#;
        let h: Holder = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.audio, "AAECAwQF+/8=");
        assert!(h.audio.unescaped.is_none(), "no copy of the content is kept");
        assert_eq!(serde_json::to_string(&h).ok().as_deref(), Some(text));
    }

    #[test]
    fn escaped_strings_are_unescaped_and_written_back_valid() {
        let text = r#"{"audio":"a\"b\\c\u0041\n"}"#;
        let h: Holder = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.audio.as_str(), "a\"b\\cA\n");
        let back = serde_json::to_string(&h).unwrap_or_default();
        let again: Holder = serde_json::from_str(&back).unwrap_or_else(|e| panic!("{back}: {e}"));
        assert_eq!(again.audio, h.audio);
        let from_string = Base64Audio::from("q\"\u{1}".to_owned());
        assert_eq!(serde_json::to_string(&from_string).ok().as_deref(), Some(r#""q\"\u0001""#));
        assert_eq!(Base64Audio::default().as_str(), "");
    }

    #[test]
    fn non_strings_are_refused() {
        assert!(serde_json::from_str::<Holder>(r#"{"audio":5}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"audio":null}"#).is_err());
    }

    #[test]
    fn the_first_special_byte_is_found_wherever_it_is() {
        for at in [0usize, 1, 63, 64, 65, 127, 128, 1000] {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut s = vec![b'A'; 1100];
                s[at] = special;
                s[at + 50] = b'"';
                assert_eq!(first_special(&s), Some(at), "{special:#x} at {at}");
            }
        }
        assert_eq!(first_special(b"ABC+/=\x7f"), None);
        assert_eq!(first_special("é ok".as_bytes()), None, "UTF-8 is not special");
    }

    #[test]
    fn the_escape_check_is_exact() {
        for (s, ok) in [("", true), ("abc+/=", true), ("a\"", false), ("\\", false), ("\u{1f}", false), ("é", true)] {
            assert_eq!(needs_no_escape(s), ok, "{s:?}");
        }
        let long = "A".repeat(1000) + "\"";
        assert!(!needs_no_escape(&long));
    }
}
