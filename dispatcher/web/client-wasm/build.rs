//! Stamps the module with a hash of the sources it is built from, so
//! `tests/tests/web_chunker.rs` can tell when the checked-in
//! `tolk_client.wasm` is older than the SDK code it claims to be.

const SOURCES: &[&str] =
    &["../../../sdk/src/chunker.rs", "../../../sdk/src/session.rs", "../../../sdk/src/error.rs", "src/lib.rs", "src/codec.rs"];

fn main() {
    // FNV-1a, 64 bits: change detection, not security.
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for path in SOURCES {
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read(path).unwrap_or_default();
        for b in text {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=TOLK_WEB_SOURCES_FNV={h:016x}");
}
