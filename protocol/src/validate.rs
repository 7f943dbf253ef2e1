//! Semantic checks that serde's types alone cannot express: value ranges,
//! identifier and language-tag syntax, length bounds.

use crate::ProtocolError;

/// Longest identifier (session, node, job, token) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (messages, reasons, model ids) accepted.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most models one node may declare.
pub const MAX_MODELS: usize = 256;
/// Sample rates accepted for audio.
pub const SAMPLE_RATES: [u32; 8] = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000];

/// A message that can check its own values after parsing.
pub trait Validate {
    /// `Ok` when every value is in range; otherwise the first offending field.
    fn validate(&self) -> Result<(), ProtocolError>;
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), ProtocolError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be 1 to {MAX_ID_LEN} bytes")));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(ProtocolError::invalid_field(field, format!("{field} may contain only ASCII letters, digits, '-', '_' and '.'")));
    }
    Ok(())
}

pub(crate) fn opt_id(field: &str, value: Option<&str>) -> Result<(), ProtocolError> {
    value.map_or(Ok(()), |v| id(field, v))
}

pub(crate) fn text(field: &str, value: &str) -> Result<(), ProtocolError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(ProtocolError::invalid_field(field, format!("{field} exceeds {MAX_TEXT_LEN} bytes")));
    }
    Ok(())
}

/// Whether `tag` has the shape of a BCP 47 language tag: a 2–8 letter primary
/// subtag, then subtags of 1–8 letters or digits separated by `-`
/// (`zh`, `en-US`, `zh-sichuan`, `cmn-latn-pinyin`).
pub fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let Some(primary) = parts.next() else { return false };
    (2..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

pub(crate) fn lang(field: &str, value: &str) -> Result<(), ProtocolError> {
    if !is_language_tag(value) {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be a language tag such as \"en\" or \"zh-sichuan\"")));
    }
    Ok(())
}

pub(crate) fn opt_lang(field: &str, value: Option<&str>) -> Result<(), ProtocolError> {
    value.map_or(Ok(()), |v| lang(field, v))
}

pub(crate) fn sample_rate(field: &str, value: u32) -> Result<(), ProtocolError> {
    if !SAMPLE_RATES.contains(&value) {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be one of {SAMPLE_RATES:?}")));
    }
    Ok(())
}

pub(crate) fn percent(field: &str, value: f64) -> Result<(), ProtocolError> {
    if !(0.0..=100.0).contains(&value) {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be between 0 and 100")));
    }
    Ok(())
}

pub(crate) fn non_negative(field: &str, value: f64) -> Result<(), ProtocolError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be a non-negative number")));
    }
    Ok(())
}

/// A pairing code: exactly six ASCII digits.
pub fn is_pairing_code(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn pairing_code(field: &str, value: &str) -> Result<(), ProtocolError> {
    if !is_pairing_code(value) {
        return Err(ProtocolError::invalid_field(field, format!("{field} must be exactly 6 digits")));
    }
    Ok(())
}
