//! Test double: an engine built before ABI 2, exporting a version 1
//! descriptor (no `stages` field). Translating `text` gives `v1:text`.
//!
//! # Layout
//! - this file only.

use tolk_engine_sdk::abi::{ABI_VERSION_1, DescriptorV1, STAGE_NMT};
use tolk_engine_sdk::export::{NmtAdapter, c_str, create, destroy, free_output, process};
use tolk_engine_sdk::{Error, Nmt, Options};

#[derive(Debug)]
pub struct Old;

impl Nmt for Old {
    fn create(_: &Options) -> Result<Self, Error> {
        Ok(Self)
    }
    fn translate(&mut self, text: &str, _src: &str, _tgt: &str) -> Result<String, Error> {
        Ok(format!("v1:{text}"))
    }
}

/// The version 1 descriptor.
// `no_mangle` exports the symbol by name; the function itself is safe.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn tolk_engine_descriptor() -> *const DescriptorV1 {
    static D: DescriptorV1 = DescriptorV1 {
        abi_version: ABI_VERSION_1,
        stage: STAGE_NMT,
        name: c_str("abi-v1\0"),
        version: c_str("1\0"),
        create: Some(create::<NmtAdapter<Old>>),
        destroy: Some(destroy::<NmtAdapter<Old>>),
        process: Some(process::<NmtAdapter<Old>>),
        free_output: Some(free_output::<NmtAdapter<Old>>),
    };
    &D
}
