//! Links Debian's flite1-dev libraries: the core, US English, the CMU
//! lexicon and the voices this engine offers.
fn main() {
    for lib in
        ["flite_cmu_us_slt", "flite_cmu_us_rms", "flite_cmu_us_awb", "flite_cmu_us_kal16", "flite_usenglish", "flite_cmulex", "flite"]
    {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
