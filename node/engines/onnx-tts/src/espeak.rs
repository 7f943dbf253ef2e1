//! Phonemes from libespeak-ng (Debian's `libespeak-ng-dev`): IPA for a
//! text in one of its voices, clause by clause, punctuation put back
//! between clauses. eSpeak NG is one process-wide state: every call holds a
//! process-wide lock.

// FFI to libespeak-ng: each call is wrapped below, under `ESPEAK`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::Mutex;

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
    pub const ESPEAK_CHARS_UTF8: c_int = 1;
    /// `espeakPHONEMES_IPA`.
    pub const PHONEMES_IPA: c_int = 0x02;

    unsafe extern "C" {
        pub fn espeak_Initialize(output: c_int, buflength: c_int, path: *const c_char, options: c_int) -> c_int;
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_TextToPhonemes(textptr: *mut *const c_void, textmode: c_int, phonememode: c_int) -> *const c_char;
    }
}

/// Whether eSpeak NG is initialised (or why it could not be).
static ESPEAK: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Splits `text` into clauses, each with the punctuation that ended it.
pub fn clauses(text: &str) -> Vec<(String, Option<char>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        let p = match c {
            ',' | '，' | '、' => Some(','),
            '.' | '。' => Some('.'),
            '?' | '？' | '¿' => Some('?'),
            '!' | '！' | '¡' => Some('!'),
            ';' | '；' => Some(';'),
            ':' | '：' => Some(':'),
            _ => None,
        };
        match p {
            // Spanish opening marks end nothing: drop them.
            Some(_) if c == '¿' || c == '¡' => {}
            Some(p) => {
                out.push((std::mem::take(&mut cur), Some(p)));
            }
            None => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push((cur, None));
    }
    out.retain(|(t, p)| !t.trim().is_empty() || p.is_some());
    out
}

/// The IPA of `text` in eSpeak NG voice `voice` (e.g. `en-us`, `es`).
pub fn ipa(voice: &str, text: &str) -> Result<String, String> {
    let voice = CString::new(voice).map_err(|_| "voice contains NUL".to_owned())?;
    let mut state = ESPEAK.lock().unwrap_or_else(|e| e.into_inner());
    state
        .get_or_insert_with(|| {
            // SAFETY: NULL path = the installed espeak-ng-data; no playback.
            let rate = unsafe { ffi::espeak_Initialize(ffi::AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
            if rate <= 0 { Err("espeak-ng failed to initialise (is espeak-ng-data installed?)".to_owned()) } else { Ok(()) }
        })
        .clone()?;
    // SAFETY: a valid C string, under the lock.
    if unsafe { ffi::espeak_SetVoiceByName(voice.as_ptr()) } != 0 {
        return Err(format!("espeak-ng has no voice {voice:?}"));
    }
    let mut out = String::new();
    for (clause, punct) in clauses(text) {
        let c = CString::new(clause.replace('\0', " ")).map_err(|_| "text contains NUL".to_owned())?;
        let mut ptr: *const c_void = c.as_ptr().cast();
        let mut words = Vec::new();
        // espeak_TextToPhonemes returns one clause at a time and advances
        // `ptr`, setting it to NULL at the end of the text.
        while !ptr.is_null() {
            // SAFETY: `ptr` points into `c` (NUL-terminated, alive), under the lock.
            let p: *const c_char = unsafe { ffi::espeak_TextToPhonemes(&mut ptr, ffi::ESPEAK_CHARS_UTF8, ffi::PHONEMES_IPA) };
            if p.is_null() {
                break;
            }
            // SAFETY: eSpeak NG returns a NUL-terminated string valid until its next call.
            let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_owned();
            if !s.is_empty() {
                words.push(s);
            }
        }
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(&words.join(" "));
        if let Some(p) = punct {
            out.push(p);
        }
    }
    Ok(out.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_punctuation() {
        assert_eq!(
            clauses("¿Dónde está? Aquí, gracias."),
            [("Dónde está".to_owned(), Some('?')), (" Aquí".to_owned(), Some(',')), (" gracias".to_owned(), Some('.'))]
        );
        assert_eq!(clauses("hello"), [("hello".to_owned(), None)]);
    }

    #[test]
    fn espeak_gives_ipa() {
        let s = ipa("es", "Hola, amigo.").unwrap();
        assert!(s.contains("ola,") && s.ends_with('.'), "{s}");
    }
}
