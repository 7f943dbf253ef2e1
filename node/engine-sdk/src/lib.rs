//! `tolk-engine-sdk`: write a Tolk inference engine in safe Rust.
//!
//! A node runs each stage of a job (speech recognition, translation, speech
//! synthesis) through an *engine*: a shared library it loads at run time by
//! path from its configuration, through a small versioned C ABI (see
//! `include/tolk_engine.h` and [`abi`]). This crate is both sides' view of
//! that ABI: the node's loader reads [`abi`]; an engine author implements one
//! of [`Asr`], [`Nmt`], [`Tts`] and exports it with [`export_asr!`],
//! [`export_nmt!`] or [`export_tts!`] (or [`Asr`] + [`SpeechTranslation`]
//! with [`export_asr_and_speech_translation!`]):
//!
//! ```
//! struct Upper;
//! impl tolk_engine_sdk::Nmt for Upper {
//!     fn create(_: &tolk_engine_sdk::Options) -> Result<Self, tolk_engine_sdk::Error> { Ok(Upper) }
//!     fn translate(&mut self, text: &str, _src: &str, _tgt: &str) -> Result<String, tolk_engine_sdk::Error> {
//!         Ok(text.to_uppercase())
//!     }
//! }
//! tolk_engine_sdk::export_nmt!(Upper, "upper", "1.0");
//! ```
//!
//! (with `crate-type = ["cdylib"]`). The generated entry points catch every
//! panic (`catch_unwind`), so neither errors nor panics cross the ABI: an
//! engine's failure reaches the node as a status and a message.
//!
//! # Layout
//! - [`abi`]: the raw `#[repr(C)]` types and constants of ABI version 2 (and 1's descriptor).
//! - this file: the stage traits, [`Options`], [`Error`], the export macros.
//! - `export`: the `extern "C"` functions the macros instantiate (hidden).

pub mod abi;
#[doc(hidden)]
pub mod export;

/// Why an engine call failed; the node maps the kind to a job error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input itself is unusable (becomes `INVALID_AUDIO` for speech).
    InvalidInput,
    /// A language or option this engine does not have (`MODEL_NOT_AVAILABLE`).
    Unsupported,
    /// The engine failed (`INFERENCE_BACKEND_ERROR`).
    Backend,
}

impl ErrorKind {
    /// The ABI status for this kind.
    pub fn status(self) -> i32 {
        match self {
            Self::InvalidInput => abi::ERR_INVALID_INPUT,
            Self::Unsupported => abi::ERR_UNSUPPORTED,
            Self::Backend => abi::ERR_BACKEND,
        }
    }
}

/// An engine's error: a kind and a message for the operator's log.
/// (`Display` and `std::error::Error` by hand: this crate has no
/// dependencies, so that engines and the node's tests build it in seconds.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::InvalidInput, message: message.into() }
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unsupported, message: message.into() }
    }
    pub fn backend(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Backend, message: message.into() }
    }
}

/// An engine's options: the `[engine.options]` table of the node's
/// configuration, passed over the ABI as `key=value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<(String, String)>,
}

impl Options {
    /// Parses `key=value` lines; blank lines and lines without `=` are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        Self { entries }
    }

    /// Builds options from pairs (the host side). Keys must not contain `=`
    /// or newlines and values no newlines; the caller checks.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { entries: pairs.into_iter().collect() }
    }

    /// The wire form: `key=value` lines.
    pub fn encode(&self) -> String {
        self.entries.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    /// The value of `key` (the last one when repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an [`ErrorKind::Unsupported`] error naming it.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key).ok_or_else(|| Error::unsupported(format!("option `{key}` is required")))
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Synthesised speech: mono pcm16 samples at `sample_rate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Speech {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
}

/// A speech recognition engine. `&mut self`: the node never calls one
/// instance from two threads at once.
pub trait Asr: Sized + Send + 'static {
    fn create(options: &Options) -> Result<Self, Error>;
    /// The text spoken in `samples` (mono pcm16 at `sample_rate`), in `lang`.
    fn transcribe(&mut self, samples: &[i16], sample_rate: u32, lang: &str) -> Result<String, Error>;
}

/// A translation engine.
pub trait Nmt: Sized + Send + 'static {
    fn create(options: &Options) -> Result<Self, Error>;
    /// `text` in `src_lang`, translated to `tgt_lang`.
    fn translate(&mut self, text: &str, src_lang: &str, tgt_lang: &str) -> Result<String, Error>;
}

/// A speech synthesis engine.
pub trait Tts: Sized + Send + 'static {
    fn create(options: &Options) -> Result<Self, Error>;
    /// `text` spoken in `lang`.
    fn synthesize(&mut self, text: &str, lang: &str) -> Result<Speech, Error>;
}

/// Speech translation (ABI 2): speech in one language to text in another,
/// without a text stage in between (whisper's `translate` task). On the wire
/// such an engine is an ordinary `nmt` model; the node gives it the audio.
pub trait SpeechTranslation: Sized + Send + 'static {
    /// The text, in `tgt_lang`, of what is said in `samples` in `src_lang`.
    fn translate_speech(&mut self, samples: &[i16], sample_rate: u32, src_lang: &str, tgt_lang: &str) -> Result<String, Error>;
}

/// Exports an [`Asr`] type as this library's engine: `export_asr!(Type, "name", "version");`
#[macro_export]
macro_rules! export_asr {
    ($ty:ty, $name:expr, $version:expr $(,)?) => {
        $crate::__export_engine!($crate::export::AsrAdapter<$ty>, $crate::abi::STAGE_ASR, 0, $name, $version);
    };
}

/// Exports a type that is both [`Asr`] and [`SpeechTranslation`]: one library
/// serving both stages (`export_asr_and_speech_translation!(Type, "name", "version");`).
#[macro_export]
macro_rules! export_asr_and_speech_translation {
    ($ty:ty, $name:expr, $version:expr $(,)?) => {
        $crate::__export_engine!(
            $crate::export::AsrSpeechTranslationAdapter<$ty>,
            $crate::abi::STAGE_ASR,
            $crate::abi::stage_bit($crate::abi::STAGE_SPEECH_TRANSLATION),
            $name,
            $version
        );
    };
}

/// Exports an [`Nmt`] type as this library's engine: `export_nmt!(Type, "name", "version");`
#[macro_export]
macro_rules! export_nmt {
    ($ty:ty, $name:expr, $version:expr $(,)?) => {
        $crate::__export_engine!($crate::export::NmtAdapter<$ty>, $crate::abi::STAGE_NMT, 0, $name, $version);
    };
}

/// Exports a [`Tts`] type as this library's engine: `export_tts!(Type, "name", "version");`
#[macro_export]
macro_rules! export_tts {
    ($ty:ty, $name:expr, $version:expr $(,)?) => {
        $crate::__export_engine!($crate::export::TtsAdapter<$ty>, $crate::abi::STAGE_TTS, 0, $name, $version);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_engine {
    ($adapter:ty, $stage:expr, $more_stages:expr, $name:expr, $version:expr) => {
        /// The engine's descriptor: the one symbol a Tolk node looks up.
        // `no_mangle` is what makes the symbol findable by name; the function
        // itself is safe (it returns a pointer to a static).
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn tolk_engine_descriptor() -> *const $crate::abi::Descriptor {
            static DESCRIPTOR: $crate::abi::Descriptor = $crate::abi::Descriptor {
                abi_version: $crate::abi::ABI_VERSION,
                stage: $stage,
                name: $crate::export::c_str(concat!($name, "\0")),
                version: $crate::export::c_str(concat!($version, "\0")),
                create: Some($crate::export::create::<$adapter>),
                destroy: Some($crate::export::destroy::<$adapter>),
                process: Some($crate::export::process::<$adapter>),
                free_output: Some($crate::export::free_output::<$adapter>),
                stages: $crate::abi::stage_bit($stage) | $more_stages,
            };
            &DESCRIPTOR
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_the_last_value_wins() {
        let o = Options::from_pairs([("hmm".into(), "/a b".into()), ("x".into(), "1=2".into()), ("x".into(), "3".into())]);
        let parsed = Options::parse(&o.encode());
        assert_eq!(parsed, o);
        assert_eq!((parsed.get("hmm"), parsed.get("x"), parsed.get("nope")), (Some("/a b"), Some("3"), None));
        assert_eq!(parsed.require("nope").unwrap_err().kind, ErrorKind::Unsupported);
        assert_eq!(Options::parse("\n junk \n=v\nk=\n"), Options::from_pairs([("k".into(), String::new())]));
    }
}
