//! `tolk-engine-flite`: a Tolk TTS engine over CMU Flite 2.2 (Debian's
//! `flite1-dev`). English only; it speaks English well.
//!
//! Options (all optional): `voice` = `slt` (default, female, 16 kHz), `rms`,
//! `awb`, `kal16`; `lang` (default `en`: other languages are refused).
//!
//! Flite keeps process-wide state and is not documented as thread-safe, so
//! every call into it holds one process-wide lock. Flite reports internal
//! errors through `cst_error()`, which exits the process: a crash of the
//! engine takes the node with it (see ARCHITECTURE.md).
//!
//! # Layout
//! - `ffi`: hand-written declarations of the few C functions used.
//! - this file: the engine.

// FFI to libflite: every call is wrapped in a safe method below, under `FLITE`.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::sync::Mutex;

use tolk_engine_sdk::{Error, Options, Speech, Tts, export_tts};

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    /// `cst_wave`.
    #[repr(C)]
    pub struct CstWave {
        pub kind: *const c_char,
        pub sample_rate: c_int,
        pub num_samples: c_int,
        pub num_channels: c_int,
        pub samples: *mut i16,
    }

    unsafe extern "C" {
        pub fn flite_init() -> c_int;
        pub fn register_cmu_us_slt(voxdir: *const c_char) -> *mut c_void;
        pub fn register_cmu_us_rms(voxdir: *const c_char) -> *mut c_void;
        pub fn register_cmu_us_awb(voxdir: *const c_char) -> *mut c_void;
        pub fn register_cmu_us_kal16(voxdir: *const c_char) -> *mut c_void;
        pub fn flite_text_to_wave(text: *const c_char, voice: *mut c_void) -> *mut CstWave;
        pub fn delete_wave(wave: *mut CstWave);
    }
}

/// Serialises every call into Flite (process-wide state).
static FLITE: Mutex<bool> = Mutex::new(false);

/// One Flite voice.
#[derive(Debug)]
pub struct Flite {
    voice: *mut c_void,
    lang: String,
}

// SAFETY: the voice pointer is only used under the `FLITE` lock; Flite has no
// thread-affine state.
unsafe impl Send for Flite {}

impl Tts for Flite {
    fn create(options: &Options) -> Result<Self, Error> {
        let name = options.get("voice").unwrap_or("slt");
        let mut initialised = FLITE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: flite_init and the register functions take no pointers we
        // own (NULL voxdir = built-in data) and run under the FLITE lock.
        let voice = unsafe {
            if !*initialised {
                ffi::flite_init();
                *initialised = true;
            }
            match name {
                "slt" => ffi::register_cmu_us_slt(std::ptr::null()),
                "rms" => ffi::register_cmu_us_rms(std::ptr::null()),
                "awb" => ffi::register_cmu_us_awb(std::ptr::null()),
                "kal16" => ffi::register_cmu_us_kal16(std::ptr::null()),
                other => return Err(Error::unsupported(format!("unknown flite voice {other:?} (slt, rms, awb, kal16)"))),
            }
        };
        if voice.is_null() {
            return Err(Error::backend(format!("flite could not load voice {name}")));
        }
        Ok(Self { voice, lang: options.get("lang").unwrap_or("en").to_owned() })
    }

    fn synthesize(&mut self, text: &str, lang: &str) -> Result<Speech, Error> {
        let base = lang.split('-').next().unwrap_or(lang);
        if !base.eq_ignore_ascii_case(&self.lang) {
            return Err(Error::unsupported(format!("flite speaks {}, not {lang}", self.lang)));
        }
        let text = CString::new(text.replace('\0', " ")).map_err(|_| Error::invalid_input("text contains NUL"))?;
        let _guard = FLITE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `text` is a valid C string and `self.voice` a registered
        // voice, under the FLITE lock; the wave is read, then freed once.
        unsafe {
            let wave = ffi::flite_text_to_wave(text.as_ptr(), self.voice);
            if wave.is_null() {
                return Err(Error::backend("flite produced no audio"));
            }
            let w = &*wave;
            let channels = w.num_channels.max(1) as usize;
            let n = w.num_samples.max(0) as usize * channels;
            let all = if w.samples.is_null() || n == 0 { Vec::new() } else { std::slice::from_raw_parts(w.samples, n).to_vec() };
            let rate = w.sample_rate.max(0) as u32;
            ffi::delete_wave(wave);
            let samples = if channels == 1 { all } else { all.chunks_exact(channels).map(|f| f[0]).collect() };
            Ok(Speech { samples, sample_rate: rate })
        }
    }
}

export_tts!(Flite, "flite", "2.2");
