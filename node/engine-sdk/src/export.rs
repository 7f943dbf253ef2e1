//! The `extern "C"` entry points the export macros instantiate for an
//! engine type. Not for direct use.
//!
//! Every entry point runs the engine inside `catch_unwind`: a panic becomes
//! status [`abi::ERR_PANIC`] with its message, never an unwind across the ABI
//! (which Rust would turn into an abort of the whole node).

// This module is the FFI boundary: it reads the host's raw pointers and hands
// out owned buffers as raw pointers that `free_output` takes back.
#![allow(unsafe_code)]

use std::any::Any;
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{Asr, Error, Nmt, Options, Speech, SpeechTranslation, Tts, abi};

/// What one call of an engine reads, borrowed from the host.
#[derive(Debug)]
pub struct InputView<'a> {
    pub samples: &'a [i16],
    pub sample_rate: u32,
    pub text: &'a str,
    pub src_lang: &'a str,
    pub tgt_lang: &'a str,
    /// The stage the host asks for (ABI 2).
    pub stage: u32,
}

/// What one call produces.
#[derive(Debug)]
pub enum Produced {
    Text(String),
    Speech(Speech),
}

/// One stage trait seen uniformly.
pub trait Adapter: Sized + Send + 'static {
    fn create(options: &Options) -> Result<Self, Error>;
    fn process(&mut self, input: &InputView<'_>) -> Result<Produced, Error>;
}

#[derive(Debug)]
pub struct AsrAdapter<T>(T);
#[derive(Debug)]
pub struct NmtAdapter<T>(T);
#[derive(Debug)]
pub struct TtsAdapter<T>(T);
/// Speech recognition and speech translation from one engine type.
#[derive(Debug)]
pub struct AsrSpeechTranslationAdapter<T>(T);

impl<T: Asr> Adapter for AsrAdapter<T> {
    fn create(options: &Options) -> Result<Self, Error> {
        T::create(options).map(Self)
    }
    fn process(&mut self, i: &InputView<'_>) -> Result<Produced, Error> {
        self.0.transcribe(i.samples, i.sample_rate, i.src_lang).map(Produced::Text)
    }
}

impl<T: Nmt> Adapter for NmtAdapter<T> {
    fn create(options: &Options) -> Result<Self, Error> {
        T::create(options).map(Self)
    }
    fn process(&mut self, i: &InputView<'_>) -> Result<Produced, Error> {
        self.0.translate(i.text, i.src_lang, i.tgt_lang).map(Produced::Text)
    }
}

impl<T: Tts> Adapter for TtsAdapter<T> {
    fn create(options: &Options) -> Result<Self, Error> {
        T::create(options).map(Self)
    }
    fn process(&mut self, i: &InputView<'_>) -> Result<Produced, Error> {
        self.0.synthesize(i.text, i.src_lang).map(Produced::Speech)
    }
}

impl<T: Asr + SpeechTranslation> Adapter for AsrSpeechTranslationAdapter<T> {
    fn create(options: &Options) -> Result<Self, Error> {
        <T as Asr>::create(options).map(Self)
    }
    fn process(&mut self, i: &InputView<'_>) -> Result<Produced, Error> {
        match i.stage {
            abi::STAGE_ASR => self.0.transcribe(i.samples, i.sample_rate, i.src_lang).map(Produced::Text),
            abi::STAGE_SPEECH_TRANSLATION => self.0.translate_speech(i.samples, i.sample_rate, i.src_lang, i.tgt_lang).map(Produced::Text),
            other => Err(Error::unsupported(format!("stage {other} is not served by this engine"))),
        }
    }
}

/// A `'static` NUL-terminated string literal as a C string pointer.
pub const fn c_str(s: &'static str) -> *const c_char {
    s.as_ptr().cast()
}

/// Reads a `tolk_str` argument.
///
/// # Safety
/// `s.ptr` must point to `s.len` readable bytes for `'a` (or `s.len` be 0).
unsafe fn str_arg<'a>(s: abi::Str, what: &str) -> Result<&'a str, Error> {
    if s.len == 0 {
        return Ok("");
    }
    if s.ptr.is_null() {
        return Err(Error::invalid_input(format!("{what} is NULL with a non-zero length")));
    }
    // SAFETY: the host guarantees `len` readable bytes at `ptr` for the call.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) };
    std::str::from_utf8(bytes).map_err(|_| Error::invalid_input(format!("{what} is not UTF-8")))
}

/// Writes `msg` NUL-terminated into the host's buffer, truncated at a char boundary.
fn write_err(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let mut n = msg.len().min(cap - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the host gave `cap` writable bytes at `err`; we write n + 1 <= cap.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| payload.downcast_ref::<String>().cloned());
    format!("engine panicked: {}", what.unwrap_or_else(|| "(no message)".into()))
}

fn report(result: std::thread::Result<Result<(), Error>>, err: *mut c_char, cap: usize) -> i32 {
    match result {
        Ok(Ok(())) => abi::OK,
        Ok(Err(e)) => {
            write_err(err, cap, &e.message);
            e.kind.status()
        }
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            // Dropping a payload can itself panic; never let that unwind out.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            write_err(err, cap, &msg);
            abi::ERR_PANIC
        }
    }
}

/// `create`.
///
/// # Safety
/// Called by the host per the ABI: `config` readable, `out` writable, `err` has `cap` bytes.
pub unsafe extern "C" fn create<A: Adapter>(config: abi::Str, out: *mut *mut c_void, err: *mut c_char, cap: usize) -> i32 {
    if out.is_null() {
        write_err(err, cap, "out_engine is NULL");
        return abi::ERR_BACKEND;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the ABI, config is valid for this call.
        let text = unsafe { str_arg(config, "config") }?;
        let engine = A::create(&Options::parse(text))?;
        // SAFETY: `out` is non-null and writable per the ABI.
        unsafe { *out = Box::into_raw(Box::new(engine)).cast() };
        Ok(())
    }));
    report(result, err, cap)
}

/// `destroy`.
///
/// # Safety
/// `engine` came from `create::<A>` and is not used again.
pub unsafe extern "C" fn destroy<A: Adapter>(engine: *mut c_void) {
    if engine.is_null() {
        return;
    }
    // A panicking Drop must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `engine` is the Box<A> that `create::<A>` leaked.
        drop(unsafe { Box::from_raw(engine.cast::<A>()) });
    }));
}

/// `process`.
///
/// # Safety
/// Called by the host per the ABI: `engine` from `create::<A>`, not used
/// concurrently; `input` readable; `output` writable and zeroed.
pub unsafe extern "C" fn process<A: Adapter>(
    engine: *mut c_void,
    input: *const abi::Input,
    output: *mut abi::Output,
    err: *mut c_char,
    cap: usize,
) -> i32 {
    if engine.is_null() || input.is_null() || output.is_null() {
        write_err(err, cap, "process called with a NULL pointer");
        return abi::ERR_BACKEND;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the ABI, the engine is ours and exclusively borrowed for this call.
        let engine = unsafe { &mut *engine.cast::<A>() };
        // SAFETY: per the ABI, input is readable for this call.
        let input = unsafe { &*input };
        let samples = if input.n_samples == 0 {
            &[][..]
        } else if input.samples.is_null() {
            return Err(Error::invalid_input("samples is NULL with a non-zero count"));
        } else {
            // SAFETY: the host gives n_samples readable samples.
            unsafe { std::slice::from_raw_parts(input.samples, input.n_samples) }
        };
        // SAFETY (three calls): the host's strings are valid for this call.
        let view = InputView {
            samples,
            sample_rate: input.sample_rate,
            text: unsafe { str_arg(input.text, "text") }?,
            src_lang: unsafe { str_arg(input.src_lang, "src_lang") }?,
            tgt_lang: unsafe { str_arg(input.tgt_lang, "tgt_lang") }?,
            stage: input.stage,
        };
        let produced = engine.process(&view)?;
        let mut out = abi::Output::default();
        match produced {
            Produced::Text(text) => {
                let bytes = text.into_bytes().into_boxed_slice();
                out.text_len = bytes.len();
                out.text = Box::into_raw(bytes).cast();
            }
            Produced::Speech(speech) => {
                let samples = speech.samples.into_boxed_slice();
                out.n_samples = samples.len();
                out.sample_rate = speech.sample_rate;
                out.samples = Box::into_raw(samples).cast();
            }
        }
        // SAFETY: output is writable per the ABI.
        unsafe { *output = out };
        Ok(())
    }));
    report(result, err, cap)
}

/// `free_output`.
///
/// # Safety
/// `output` was filled by `process::<A>` and is freed once.
pub unsafe extern "C" fn free_output<A: Adapter>(_engine: *mut c_void, output: *mut abi::Output) {
    if output.is_null() {
        return;
    }
    // SAFETY: output is a valid, exclusively borrowed Output per the ABI.
    let out = unsafe { &mut *output };
    if !out.text.is_null() {
        // SAFETY: `text` is the Box<[u8]> of `text_len` bytes that `process` leaked.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(out.text.cast::<u8>(), out.text_len)) });
    }
    if !out.samples.is_null() {
        // SAFETY: `samples` is the Box<[i16]> of `n_samples` that `process` leaked.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(out.samples, out.n_samples)) });
    }
    *out = abi::Output::default();
}
