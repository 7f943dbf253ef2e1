//! Test double: a valid shared library that exports something, but not
//! `tolk_engine_descriptor`.
//!
//! # Layout
//! - this file only.

/// Not the symbol a node looks for.
// `no_mangle` exports the symbol by name; the function itself is safe.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn tolk_engine_descriptor_v0() -> u32 {
    0
}
