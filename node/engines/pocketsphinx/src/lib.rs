//! `tolk-engine-pocketsphinx`: a Tolk ASR engine over CMU PocketSphinx 5prealpha
//! (Debian bookworm's `libpocketsphinx3`), with the US English model of
//! `pocketsphinx-en-us`.
//!
//! Options (all optional): `hmm`, `lm`, `dict` (model paths; default the
//! Debian `en-us` model), `lang` (the language this model hears; default
//! `en`: other languages are refused as unsupported). Audio at any rate is
//! resampled to the model's 16 kHz.
//!
//! # Layout
//! - `ffi`: hand-written declarations of the few C functions used.
//! - this file: the engine.

// FFI to libpocketsphinx/libsphinxbase: every call is wrapped in a safe method below.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};

use tolk_engine_sdk::{Asr, Error, Options, export_asr};

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    unsafe extern "C" {
        pub fn ps_args() -> *const c_void;
        pub fn cmd_ln_parse_r(inout: *mut c_void, defn: *const c_void, argc: i32, argv: *const *const c_char, strict: i32) -> *mut c_void;
        pub fn cmd_ln_free_r(cmdln: *mut c_void) -> c_int;
        pub fn ps_init(config: *mut c_void) -> *mut c_void;
        pub fn ps_free(ps: *mut c_void) -> c_int;
        pub fn ps_start_utt(ps: *mut c_void) -> c_int;
        pub fn ps_process_raw(ps: *mut c_void, data: *const i16, n_samples: usize, no_search: c_int, full_utt: c_int) -> c_int;
        pub fn ps_end_utt(ps: *mut c_void) -> c_int;
        pub fn ps_get_hyp(ps: *mut c_void, out_best_score: *mut i32) -> *const c_char;
        pub fn err_set_logfp(stream: *mut c_void);
    }
}

const MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";
const MODEL_RATE: u32 = 16_000;

/// One decoder.
#[derive(Debug)]
pub struct PocketSphinx {
    ps: *mut c_void,
    lang: String,
    // cmd_ln keeps pointers into these strings for the decoder's life.
    _args: Vec<CString>,
}

// SAFETY: a decoder is used by one thread at a time (the ABI never calls one
// instance concurrently, and `&mut self` enforces it); PocketSphinx keeps no
// thread-affine state.
unsafe impl Send for PocketSphinx {}

impl Asr for PocketSphinx {
    fn create(options: &Options) -> Result<Self, Error> {
        let hmm = options.get("hmm").map_or_else(|| format!("{MODEL_DIR}/en-us"), str::to_owned);
        let lm = options.get("lm").map_or_else(|| format!("{MODEL_DIR}/en-us.lm.bin"), str::to_owned);
        let dict = options.get("dict").map_or_else(|| format!("{MODEL_DIR}/cmudict-en-us.dict"), str::to_owned);
        for (what, path) in [("hmm", &hmm), ("lm", &lm), ("dict", &dict)] {
            if !std::path::Path::new(path).exists() {
                return Err(Error::backend(format!("pocketsphinx {what} not found at {path} (install pocketsphinx-en-us)")));
            }
        }
        let lang = options.get("lang").unwrap_or("en").to_owned();
        let strings = ["pocketsphinx", "-hmm", &hmm, "-lm", &lm, "-dict", &dict, "-logfn", "/dev/null"];
        let args: Vec<CString> = strings
            .iter()
            .map(|s| CString::new(*s))
            .collect::<Result<_, _>>()
            .map_err(|_| Error::unsupported("a model path contains NUL"))?;
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: argv holds valid C strings that outlive the decoder (kept in `_args`);
        // ps_args() is a static definition table. Logging off is process-wide and idempotent.
        let ps = unsafe {
            ffi::err_set_logfp(std::ptr::null_mut());
            let config = ffi::cmd_ln_parse_r(std::ptr::null_mut(), ffi::ps_args(), argv.len() as i32, argv.as_ptr(), 1);
            if config.is_null() {
                return Err(Error::backend("pocketsphinx refused its configuration"));
            }
            let ps = ffi::ps_init(config);
            // ps_init keeps its own reference to the configuration.
            ffi::cmd_ln_free_r(config);
            ps
        };
        if ps.is_null() {
            return Err(Error::backend(format!("pocketsphinx could not load its model from {hmm}")));
        }
        Ok(Self { ps, lang, _args: args })
    }

    fn transcribe(&mut self, samples: &[i16], sample_rate: u32, lang: &str) -> Result<String, Error> {
        if !lang_matches(&self.lang, lang) {
            return Err(Error::unsupported(format!("this pocketsphinx model hears {}, not {lang}", self.lang)));
        }
        if sample_rate == 0 {
            return Err(Error::invalid_input("sample rate 0"));
        }
        let audio = resample(samples, sample_rate, MODEL_RATE);
        // SAFETY: `self.ps` is a live decoder used only here; `audio` is a valid slice for the call.
        let hyp = unsafe {
            if ffi::ps_start_utt(self.ps) < 0 {
                return Err(Error::backend("ps_start_utt failed"));
            }
            let processed = ffi::ps_process_raw(self.ps, audio.as_ptr(), audio.len(), 0, 1);
            let ended = ffi::ps_end_utt(self.ps);
            if processed < 0 || ended < 0 {
                return Err(Error::backend("pocketsphinx failed to decode the audio"));
            }
            let hyp = ffi::ps_get_hyp(self.ps, std::ptr::null_mut());
            if hyp.is_null() { String::new() } else { CStr::from_ptr(hyp).to_string_lossy().into_owned() }
        };
        Ok(hyp.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl Drop for PocketSphinx {
    fn drop(&mut self) {
        // SAFETY: `self.ps` came from ps_init and is freed once.
        unsafe {
            ffi::ps_free(self.ps);
        }
    }
}

/// `en` hears `en-US`; `en-US` hears only `en-US`.
fn lang_matches(model: &str, wanted: &str) -> bool {
    wanted.get(..model.len()).is_some_and(|p| p.eq_ignore_ascii_case(model))
        && matches!(wanted.as_bytes().get(model.len()), None | Some(b'-'))
}

/// Linear-interpolation resampling, averaging over the source span when
/// downsampling (a crude low-pass, enough for speech into a 16 kHz model).
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let n_out = ((samples.len() as f64) / ratio).floor() as usize;
    let last = samples.len() - 1;
    (0..n_out)
        .map(|i| {
            let pos = i as f64 * ratio;
            if ratio > 1.0 {
                let start = pos.floor() as usize;
                let end = ((pos + ratio).ceil() as usize).min(samples.len()).max(start + 1);
                let sum: i64 = samples[start.min(last)..end].iter().map(|&s| i64::from(s)).sum();
                (sum / (end - start.min(last)) as i64) as i16
            } else {
                let i0 = (pos.floor() as usize).min(last);
                let i1 = (i0 + 1).min(last);
                let frac = pos - pos.floor();
                (f64::from(samples[i0]) * (1.0 - frac) + f64::from(samples[i1]) * frac).round() as i16
            }
        })
        .collect()
}

export_asr!(PocketSphinx, "pocketsphinx", "5prealpha");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_duration_and_level() {
        let tone: Vec<i16> = (0..48_000).map(|i| ((i as f64 * 0.01).sin() * 10_000.0) as i16).collect();
        let down = resample(&tone, 48_000, 16_000);
        assert_eq!(down.len(), 16_000);
        let up = resample(&tone[..8_000], 8_000, 16_000);
        assert_eq!(up.len(), 16_000);
        assert!(down.iter().map(|&s| i32::from(s).abs()).max().unwrap() > 9_000);
        assert_eq!(resample(&[], 8_000, 16_000), Vec::<i16>::new());
    }

    #[test]
    fn languages_match_by_prefix() {
        assert!(lang_matches("en", "en-US") && lang_matches("en", "EN") && !lang_matches("en", "es") && !lang_matches("en", "eng"));
    }
}
