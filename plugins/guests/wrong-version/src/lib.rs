//! Test fixture: exports `tolk:plugin/scheduling@0.3.0`, which the host must refuse.

#![allow(unsafe_code)] // wit-bindgen's generated export glue (plugins using the SDK never need this)

wit_bindgen::generate!({ path: "wit", world: "scheduler" });

struct Future;

impl exports::tolk::plugin::scheduling::Guest for Future {
    fn pick(_candidates: u32) -> Option<u32> {
        Some(0)
    }
}

export!(Future);
