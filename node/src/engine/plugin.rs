//! The plugin loader: engines as shared libraries with the Tolk engine C ABI
//! (`node/engine-sdk/include/tolk_engine.h`, version [`abi::ABI_VERSION`];
//! version 1 engines still load).
//!
//! Loading checks, in order: the file opens as a shared library; it exports
//! `tolk_engine_descriptor`; the descriptor's first field, `abi_version`, is
//! 1 or 2 (read before anything else, so a future layout is never misread;
//! the rest is then read with that version's layout); the stage is known and
//! (version 2) `stages` holds it and only known stages; every function
//! pointer is non-NULL. Each refusal is a [`LoadError`] naming the file and
//! the reason.
//!
//! Libraries are never unloaded: `dlclose` of a library whose threads left
//! thread-local destructors behind is unsound, and engines are few. A
//! `reload_config` creates new instances; a changed `.so` at the same path
//! needs a node restart.
//!
//! What a plugin cannot be protected from *in process*: a segfault or
//! `abort()` in an engine ends the process that loaded it. That is why the
//! node loads libraries here only in its engine host children by default
//! ([`super::host`], supervised by [`super::process`]); in the node's own
//! process only with `engine_isolation = "in-process"`. Errors and panics
//! are contained either way (statuses, `catch_unwind` in the SDK). See
//! ARCHITECTURE.md.

// This module is the host side of the FFI boundary: loading libraries, calling
// their functions, reading the memory they return. Each `unsafe` says why it holds.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tolk_engine_sdk::{Options, abi};

use super::{Engine, EngineError, EngineErrorKind, Request, Response};

/// Size of the buffer an engine writes its error message into.
const ERR_CAP: usize = 1024;

/// The stage a library's descriptor declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Asr,
    Nmt,
    Tts,
    /// ABI 2: audio in one language → text in another.
    SpeechTranslation,
}

impl Stage {
    /// The stage of an ABI stage code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            abi::STAGE_ASR => Some(Self::Asr),
            abi::STAGE_NMT => Some(Self::Nmt),
            abi::STAGE_TTS => Some(Self::Tts),
            abi::STAGE_SPEECH_TRANSLATION => Some(Self::SpeechTranslation),
            _ => None,
        }
    }

    /// The ABI stage code.
    pub fn code(self) -> u32 {
        match self {
            Self::Asr => abi::STAGE_ASR,
            Self::Nmt => abi::STAGE_NMT,
            Self::Tts => abi::STAGE_TTS,
            Self::SpeechTranslation => abi::STAGE_SPEECH_TRANSLATION,
        }
    }
}

/// Why a library was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot load the library: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: not a Tolk engine: it does not export `tolk_engine_descriptor` ({message})")]
    MissingSymbol { path: PathBuf, message: String },
    #[error("{path}: engine ABI version {found}, this node speaks version {expected} (and 1)")]
    AbiVersion { path: PathBuf, found: u32, expected: u32 },
    #[error("{path}: invalid descriptor: {message}")]
    Descriptor { path: PathBuf, message: String },
}

/// A loaded engine library (kept loaded for the life of the process).
#[derive(Debug)]
pub struct Library {
    path: PathBuf,
    // Functions checked non-NULL at load time.
    create: abi::CreateFn,
    destroy: abi::DestroyFn,
    process: abi::ProcessFn,
    free_output: abi::FreeOutputFn,
    stage: Stage,
    /// Every stage served, as `abi::stage_bit`s.
    stages: u32,
    abi_version: u32,
    name: String,
    version: String,
}

impl Library {
    /// Loads and checks the library at `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>, LoadError> {
        let path_buf = path.to_owned();
        // SAFETY: loading a library runs its initialisers. Engines are code
        // the operator chose to trust by naming them in the configuration.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open { path: path_buf.clone(), message: e.to_string() })?;
        // Never unloaded (see the module docs): the library lives as long as the process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: the symbol's type is the ABI's `tolk_engine_descriptor_fn`.
        let get = unsafe { lib.get::<abi::DescriptorFn>(abi::DESCRIPTOR_SYMBOL) };
        let get = get.map_err(|e| LoadError::MissingSymbol { path: path_buf.clone(), message: e.to_string() })?;
        // SAFETY: the ABI says the function takes nothing and returns a pointer
        // to a descriptor that lives as long as the library.
        let ptr = unsafe { get() };
        if ptr.is_null() {
            return Err(LoadError::Descriptor { path: path_buf, message: "tolk_engine_descriptor returned NULL".into() });
        }
        // Read the version alone first: every ABI version starts with it.
        // SAFETY: a non-NULL descriptor pointer points to at least its first u32.
        let found = unsafe { std::ptr::read(ptr.cast::<u32>()) };
        let descriptor = match found {
            abi::ABI_VERSION => {
                // SAFETY: version 2: the pointer is to a whole v2 descriptor, static.
                unsafe { *ptr }
            }
            abi::ABI_VERSION_1 => {
                // SAFETY: version 1: the pointer is to a whole v1 descriptor, static.
                let v1 = unsafe { *ptr.cast::<abi::DescriptorV1>() };
                let abi::DescriptorV1 { abi_version, stage, name, version, create, destroy, process, free_output } = v1;
                let stages = abi::stage_bit(stage);
                abi::Descriptor { abi_version, stage, name, version, create, destroy, process, free_output, stages }
            }
            _ => return Err(LoadError::AbiVersion { path: path_buf, found, expected: abi::ABI_VERSION }),
        };
        let bad = |message: &str| LoadError::Descriptor { path: path_buf.clone(), message: message.into() };
        let stage = match descriptor.stage {
            abi::STAGE_ASR => Stage::Asr,
            abi::STAGE_NMT => Stage::Nmt,
            abi::STAGE_TTS => Stage::Tts,
            abi::STAGE_SPEECH_TRANSLATION => Stage::SpeechTranslation,
            other => return Err(bad(&format!("unknown stage {other}"))),
        };
        let stages = descriptor.stages;
        if stages & abi::stage_bit(descriptor.stage) == 0 || stages & !abi::KNOWN_STAGES != 0 {
            return Err(bad(&format!("stages {stages:#x} do not hold stage {} or name unknown stages", descriptor.stage)));
        }
        let (Some(create), Some(destroy), Some(process), Some(free_output)) =
            (descriptor.create, descriptor.destroy, descriptor.process, descriptor.free_output)
        else {
            return Err(bad("a function pointer is NULL"));
        };
        // SAFETY: name and version are NULL or static NUL-terminated strings per the ABI.
        let (name, version) = unsafe { (c_string(descriptor.name), c_string(descriptor.version)) };
        tracing::info!(path = %path.display(), %name, %version, ?stage, stages, abi = found, "engine library loaded");
        Ok(Arc::new(Self { path: path_buf, create, destroy, process, free_output, stage, stages, abi_version: found, name, version }))
    }

    /// The main stage (the descriptor's `stage`).
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// Whether the library serves `stage` (its main one or, ABI 2, another of its `stages`).
    pub fn serves(&self, stage: Stage) -> bool {
        self.stages & abi::stage_bit(stage.code()) != 0
    }
    /// The main stage's ABI code.
    pub fn stage_code(&self) -> u32 {
        self.stage.code()
    }
    /// Every stage served, as `abi::stage_bit`s.
    pub fn stages(&self) -> u32 {
        self.stages
    }
    /// The ABI version the library declared.
    pub fn abi_version(&self) -> u32 {
        self.abi_version
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads an ABI C string; NULL or non-UTF-8 become placeholders.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return "?".into();
    }
    // SAFETY: per the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The engine's opaque instance pointer.
#[derive(Debug)]
struct Handle(*mut c_void);

// SAFETY: the ABI allows an instance to be used from any thread, one call at a
// time; the Mutex in PluginEngine provides the "one at a time".
unsafe impl Send for Handle {}

/// One instance of a plugin engine.
#[derive(Debug)]
pub struct PluginEngine {
    library: Arc<Library>,
    handle: Mutex<Handle>,
}

fn status_error(status: i32, err: &[u8]) -> EngineError {
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    let message = String::from_utf8_lossy(&err[..end]).into_owned();
    let kind = match status {
        abi::ERR_INVALID_INPUT => EngineErrorKind::InvalidInput,
        abi::ERR_UNSUPPORTED => EngineErrorKind::Unsupported,
        abi::ERR_PANIC => EngineErrorKind::Panic,
        _ => EngineErrorKind::Backend,
    };
    let message = if message.is_empty() { format!("engine failed with status {status}") } else { message };
    EngineError { kind, message }
}

impl PluginEngine {
    /// Creates an instance with `options`.
    pub fn create(library: Arc<Library>, options: &Options) -> Result<Self, EngineError> {
        let config = options.encode();
        let mut out: *mut c_void = std::ptr::null_mut();
        let mut err = [0u8; ERR_CAP];
        // SAFETY: per the ABI: config is valid for the call, `out` is writable,
        // `err` has ERR_CAP writable bytes.
        let status = unsafe { (library.create)(abi::Str::borrow(&config), &mut out, err.as_mut_ptr().cast(), ERR_CAP) };
        if status != abi::OK {
            return Err(status_error(status, &err));
        }
        if out.is_null() {
            return Err(EngineError::new(EngineErrorKind::Backend, format!("{}: create succeeded but returned no instance", library.name)));
        }
        Ok(Self { library, handle: Mutex::new(Handle(out)) })
    }

    pub fn library(&self) -> &Library {
        &self.library
    }
}

impl Engine for PluginEngine {
    fn process(&self, request: Request<'_>) -> Result<Response, EngineError> {
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        self.process_locked(&handle, request)
    }
}

impl PluginEngine {
    /// Runs `request` if the instance is free now; `None` when it is busy.
    pub fn try_process(&self, request: Request<'_>) -> Option<Result<Response, EngineError>> {
        let handle = match self.handle.try_lock() {
            Ok(h) => h,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.process_locked(&handle, request))
    }

    fn process_locked(&self, handle: &Handle, request: Request<'_>) -> Result<Response, EngineError> {
        let empty: &[i16] = &[];
        let (samples, sample_rate, text, src, tgt, stage) = match request {
            Request::Asr { samples, sample_rate, lang } => (samples, sample_rate, "", lang, "", Stage::Asr),
            Request::Nmt { text, src_lang, tgt_lang } => (empty, 0, text, src_lang, tgt_lang, Stage::Nmt),
            Request::Tts { text, lang } => (empty, 0, text, lang, "", Stage::Tts),
            Request::SpeechTranslation { samples, sample_rate, src_lang, tgt_lang } => {
                (samples, sample_rate, "", src_lang, tgt_lang, Stage::SpeechTranslation)
            }
        };
        if !self.library.serves(stage) {
            let message = format!("{} is a {:?} engine, asked for {:?}", self.library.name, self.library.stage, stage);
            return Err(EngineError::new(EngineErrorKind::Backend, message));
        }
        let input = abi::Input {
            samples: samples.as_ptr(),
            n_samples: samples.len(),
            sample_rate,
            text: abi::Str::borrow(text),
            src_lang: abi::Str::borrow(src),
            tgt_lang: abi::Str::borrow(tgt),
            stage: stage.code(),
        };
        let mut output = abi::Output::default();
        let mut err = [0u8; ERR_CAP];
        // SAFETY: per the ABI: the instance is ours and used by one call at a
        // time (the caller holds its lock); input's pointers are valid for the call; output is
        // zeroed and writable; err has ERR_CAP bytes.
        let status = unsafe { (self.library.process)(handle.0, &input, &mut output, err.as_mut_ptr().cast(), ERR_CAP) };
        if status != abi::OK {
            return Err(status_error(status, &err));
        }
        // Copy what the engine returned, then hand its buffers back.
        let response = match stage {
            Stage::Asr | Stage::Nmt | Stage::SpeechTranslation => {
                let bytes = if output.text.is_null() || output.text_len == 0 {
                    Vec::new()
                } else {
                    // SAFETY: the engine returned text_len readable bytes at text.
                    unsafe { std::slice::from_raw_parts(output.text.cast::<u8>(), output.text_len) }.to_vec()
                };
                String::from_utf8(bytes).map(Response::Text).map_err(|_| {
                    EngineError::new(EngineErrorKind::Backend, format!("{} returned text that is not UTF-8", self.library.name))
                })
            }
            Stage::Tts => {
                let samples = if output.samples.is_null() || output.n_samples == 0 {
                    Vec::new()
                } else {
                    // SAFETY: the engine returned n_samples readable samples.
                    unsafe { std::slice::from_raw_parts(output.samples, output.n_samples) }.to_vec()
                };
                Ok(Response::Speech { samples, sample_rate: output.sample_rate })
            }
        };
        // SAFETY: output was filled by a successful process of this instance; freed once.
        unsafe { (self.library.free_output)(handle.0, &mut output) };
        response
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        let handle = self.handle.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the instance came from create, is not in use (we own it
        // exclusively here) and is destroyed once.
        unsafe { (self.library.destroy)(handle.0) };
        handle.0 = std::ptr::null_mut();
    }
}

/// Several instances of one engine: a call takes a free one, or waits for
/// one (round robin) when all are busy. `instances = N` in the configuration.
#[derive(Debug)]
pub struct EnginePool {
    members: Vec<PluginEngine>,
    next: std::sync::atomic::AtomicUsize,
}

impl EnginePool {
    /// A pool of at least one instance.
    pub fn new(members: Vec<PluginEngine>) -> Option<Self> {
        (!members.is_empty()).then(|| Self { members, next: std::sync::atomic::AtomicUsize::new(0) })
    }
}

impl Engine for EnginePool {
    fn process(&self, request: Request<'_>) -> Result<Response, EngineError> {
        for m in &self.members {
            if let Some(result) = m.try_process(request) {
                return result;
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.members.len();
        self.members[i].process(request)
    }
}
