//! Test double: exports `tolk_engine_descriptor` with ABI version 999 and no
//! functions. A node must refuse it before reading anything past the version.
//!
//! # Layout
//! - this file only.

use tolk_engine_sdk::abi::{Descriptor, STAGE_ASR};

/// The descriptor of an engine from the future.
// `no_mangle` exports the symbol by name; the function itself is safe.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn tolk_engine_descriptor() -> *const Descriptor {
    static D: Descriptor = Descriptor {
        abi_version: 999,
        stage: STAGE_ASR,
        name: c"from-the-future".as_ptr(),
        version: c"9".as_ptr(),
        create: None,
        destroy: None,
        process: None,
        free_output: None,
        stages: 0,
    };
    &D
}
