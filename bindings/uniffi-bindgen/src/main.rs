//! `uniffi-bindgen`: uniffi's generator CLI at the workspace's uniffi version.
//! It runs `cargo metadata`, so run it inside the workspace:
//! `cargo run -p uniffi-bindgen -- generate --library target/debug/libtolk_ffi.so --language kotlin --out-dir DIR`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
