//! Links the Debian libraries (libpocketsphinx-dev pulls in libsphinxbase-dev).
fn main() {
    println!("cargo:rustc-link-lib=dylib=pocketsphinx");
    println!("cargo:rustc-link-lib=dylib=sphinxbase");
}
