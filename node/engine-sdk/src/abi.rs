//! The raw C ABI, version 2: the Rust mirror of `include/tolk_engine.h`.
//! Version 1 (no `stages` in the descriptor, no `stage` in the input) is
//! still loaded: [`DescriptorV1`] is its layout.
//! The node's loader reads these types; engines written with this crate never
//! touch them (the export macros do).

// The one `unsafe impl` here says a descriptor may be shared between threads:
// it only holds pointers to static, immutable C strings and to functions.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};

/// The ABI version this crate speaks and its engines declare.
pub const ABI_VERSION: u32 = 2;
/// The first version, which the node still loads.
pub const ABI_VERSION_1: u32 = 1;

/// The symbol every engine library exports (NUL-terminated for `dlsym`).
pub const DESCRIPTOR_SYMBOL: &[u8] = b"tolk_engine_descriptor\0";

/// `tolk_stage`: speech recognition.
pub const STAGE_ASR: u32 = 1;
/// `tolk_stage`: translation.
pub const STAGE_NMT: u32 = 2;
/// `tolk_stage`: speech synthesis.
pub const STAGE_TTS: u32 = 3;
/// `tolk_stage` (ABI 2): speech translation, audio in `src_lang` → text in `tgt_lang`.
pub const STAGE_SPEECH_TRANSLATION: u32 = 4;

/// The `stages` bit of `stage`.
pub const fn stage_bit(stage: u32) -> u32 {
    if stage < 32 { 1 << stage } else { 0 }
}

/// Every stage bit this ABI defines.
pub const KNOWN_STAGES: u32 = stage_bit(STAGE_ASR) | stage_bit(STAGE_NMT) | stage_bit(STAGE_TTS) | stage_bit(STAGE_SPEECH_TRANSLATION);

/// `tolk_status` values.
pub const OK: i32 = 0;
pub const ERR_INVALID_INPUT: i32 = 1;
pub const ERR_UNSUPPORTED: i32 = 2;
pub const ERR_BACKEND: i32 = 3;
pub const ERR_PANIC: i32 = 4;

/// `tolk_str`: UTF-8 bytes with a length, not NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Str {
    pub ptr: *const c_char,
    pub len: usize,
}

impl Str {
    /// Borrows `s` for the duration of a call.
    pub fn borrow(s: &str) -> Self {
        Self { ptr: s.as_ptr().cast(), len: s.len() }
    }

    /// The empty string.
    pub const EMPTY: Str = Str { ptr: std::ptr::null(), len: 0 };
}

/// `tolk_input`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Input {
    pub samples: *const i16,
    pub n_samples: usize,
    pub sample_rate: u32,
    pub text: Str,
    pub src_lang: Str,
    pub tgt_lang: Str,
    /// ABI 2: the stage of this call (one of the descriptor's `stages`). A
    /// version 1 engine reads the fields above only.
    pub stage: u32,
}

/// `tolk_output`.
#[repr(C)]
#[derive(Debug)]
pub struct Output {
    pub text: *mut c_char,
    pub text_len: usize,
    pub samples: *mut i16,
    pub n_samples: usize,
    pub sample_rate: u32,
}

impl Default for Output {
    fn default() -> Self {
        Self { text: std::ptr::null_mut(), text_len: 0, samples: std::ptr::null_mut(), n_samples: 0, sample_rate: 0 }
    }
}

pub type CreateFn = unsafe extern "C" fn(config: Str, out_engine: *mut *mut c_void, err: *mut c_char, err_cap: usize) -> i32;
pub type DestroyFn = unsafe extern "C" fn(engine: *mut c_void);
pub type ProcessFn =
    unsafe extern "C" fn(engine: *mut c_void, input: *const Input, output: *mut Output, err: *mut c_char, err_cap: usize) -> i32;
pub type FreeOutputFn = unsafe extern "C" fn(engine: *mut c_void, output: *mut Output);

/// `tolk_engine_descriptor`, version 2. Function pointers are `Option` so
/// that a NULL from a C engine is a value the loader can refuse, not
/// undefined behaviour.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    pub abi_version: u32,
    /// The engine's main stage (what a version 1 host would read).
    pub stage: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub create: Option<CreateFn>,
    pub destroy: Option<DestroyFn>,
    pub process: Option<ProcessFn>,
    pub free_output: Option<FreeOutputFn>,
    /// Every stage the engine serves, as [`stage_bit`]s (`stage` included).
    pub stages: u32,
}

/// `tolk_engine_descriptor`, version 1: the same without `stages`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DescriptorV1 {
    pub abi_version: u32,
    pub stage: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub create: Option<CreateFn>,
    pub destroy: Option<DestroyFn>,
    pub process: Option<ProcessFn>,
    pub free_output: Option<FreeOutputFn>,
}

// SAFETY (both): a descriptor is immutable after construction and holds only
// pointers to static C strings and to functions, all valid from any thread.
unsafe impl Sync for Descriptor {}
unsafe impl Sync for DescriptorV1 {}

/// `tolk_engine_descriptor_fn`: the exported symbol's type.
pub type DescriptorFn = unsafe extern "C" fn() -> *const Descriptor;
