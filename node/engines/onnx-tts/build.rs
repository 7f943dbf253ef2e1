//! Links Debian's libespeak-ng-dev.
fn main() {
    println!("cargo:rustc-link-lib=dylib=espeak-ng");
}
