//! `tolk-engine-espeak`: a Tolk TTS engine over eSpeak NG 1.51 (Debian's
//! `libespeak-ng-dev`, data in `espeak-ng-data`). Speaks many languages,
//! robotically. Licence: GPL-3.0-or-later, like the library it links.
//!
//! Options: `voice` (an eSpeak NG voice name; default: the language tag's
//! primary subtag, e.g. `es`). Mandarin: use `cmn-latn-pinyin`; Debian's 1.51
//! `cmn` voice is broken. `rate` (words per minute, optional).
//!
//! eSpeak NG is one process-wide synthesiser: every call holds a process-wide
//! lock, sets this instance's voice, and collects the samples its callback
//! delivers on the calling thread.
//!
//! # Layout
//! - `ffi`: hand-written declarations of the few C functions used.
//! - this file: the engine.

// FFI to libespeak-ng: every call is wrapped in a safe method below, under `ESPEAK`.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CString, c_int, c_void};
use std::sync::Mutex;

use tolk_engine_sdk::{Error, Options, Speech, Tts, export_tts};

mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
    pub const POS_CHARACTER: c_int = 1;
    pub const ESPEAK_CHARS_UTF8: c_uint = 1;
    pub const ESPEAK_RATE: c_int = 1;

    pub type SynthCallback = unsafe extern "C" fn(wav: *mut i16, numsamples: c_int, events: *mut c_void) -> c_int;

    unsafe extern "C" {
        pub fn espeak_Initialize(output: c_int, buflength: c_int, path: *const c_char, options: c_int) -> c_int;
        pub fn espeak_SetSynthCallback(cb: SynthCallback);
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
        pub fn espeak_Synth(
            text: *const c_void,
            size: usize,
            position: c_uint,
            position_type: c_int,
            end_position: c_uint,
            flags: c_uint,
            unique_identifier: *mut c_uint,
            user_data: *mut c_void,
        ) -> c_int;
    }
}

/// The process-wide synthesiser: its sample rate once initialised.
static ESPEAK: Mutex<Option<Result<u32, String>>> = Mutex::new(None);

thread_local! {
    /// Samples of the synthesis running on this thread (under `ESPEAK`).
    static COLLECTED: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn collect(wav: *mut i16, numsamples: c_int, _events: *mut c_void) -> c_int {
    if !wav.is_null() && numsamples > 0 {
        // SAFETY: eSpeak NG passes `numsamples` valid samples at `wav` for this call.
        let chunk = unsafe { std::slice::from_raw_parts(wav, numsamples as usize) };
        COLLECTED.with(|c| c.borrow_mut().extend_from_slice(chunk));
    }
    0 // continue
}

/// One voice of the process-wide synthesiser.
#[derive(Debug)]
pub struct Espeak {
    voice: CString,
    rate: Option<i32>,
    sample_rate: u32,
}

impl Tts for Espeak {
    fn create(options: &Options) -> Result<Self, Error> {
        let mut state = ESPEAK.lock().unwrap_or_else(|e| e.into_inner());
        let init = state.get_or_insert_with(|| {
            // SAFETY: NULL path = the installed espeak-ng-data; synchronous mode, no playback.
            let rate = unsafe { ffi::espeak_Initialize(ffi::AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
            if rate <= 0 {
                return Err("espeak-ng failed to initialise (is espeak-ng-data installed?)".to_owned());
            }
            // SAFETY: `collect` has the callback's signature and lives for the program.
            unsafe { ffi::espeak_SetSynthCallback(collect) };
            Ok(rate as u32)
        });
        let sample_rate = init.clone().map_err(Error::backend)?;
        let voice = options.get("voice").or_else(|| options.get("lang")).unwrap_or("en");
        let voice = CString::new(voice).map_err(|_| Error::unsupported("voice contains NUL"))?;
        // SAFETY: a valid C string, under the ESPEAK lock.
        if unsafe { ffi::espeak_SetVoiceByName(voice.as_ptr()) } != 0 {
            return Err(Error::unsupported(format!("espeak-ng has no voice {voice:?}")));
        }
        let rate = options.get("rate").map(|r| r.parse::<i32>().map_err(|_| Error::unsupported("rate must be an integer"))).transpose()?;
        Ok(Self { voice, rate, sample_rate })
    }

    fn synthesize(&mut self, text: &str, _lang: &str) -> Result<Speech, Error> {
        let text = CString::new(text.replace('\0', " ")).map_err(|_| Error::invalid_input("text contains NUL"))?;
        let _guard = ESPEAK.lock().unwrap_or_else(|e| e.into_inner());
        COLLECTED.with(|c| c.borrow_mut().clear());
        // SAFETY: valid C strings under the ESPEAK lock; synchronous mode, so
        // the callback runs on this thread before espeak_Synth returns.
        let status = unsafe {
            if ffi::espeak_SetVoiceByName(self.voice.as_ptr()) != 0 {
                return Err(Error::backend(format!("espeak-ng lost voice {:?}", self.voice)));
            }
            if let Some(rate) = self.rate {
                ffi::espeak_SetParameter(ffi::ESPEAK_RATE, rate, 0);
            }
            let bytes = text.as_bytes_with_nul();
            ffi::espeak_Synth(
                bytes.as_ptr().cast::<c_void>(),
                bytes.len(),
                0,
                ffi::POS_CHARACTER,
                0,
                ffi::ESPEAK_CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let samples = COLLECTED.with(|c| std::mem::take(&mut *c.borrow_mut()));
        if status != 0 {
            return Err(Error::backend(format!("espeak_Synth failed with status {status}")));
        }
        Ok(Speech { samples, sample_rate: self.sample_rate })
    }
}

export_tts!(Espeak, "espeak-ng", "1.51");
