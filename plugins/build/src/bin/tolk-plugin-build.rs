//! `tolk-plugin-build`: builds the shipped plugins into `target/plugins/`,
//! or `--crate-dir DIR --out OUT` one plugin crate into `OUT/`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    let result = match value("--crate-dir") {
        Some(dir) => tolk_plugin_build::build_crate(&dir, &value("--out").unwrap_or_else(|| dir.join("target/plugins"))),
        None => tolk_plugin_build::build_shipped(),
    };
    match result {
        Ok(files) => files.iter().for_each(|f| println!("{}", f.display())),
        Err(e) => {
            eprintln!("tolk-plugin-build: {e}");
            std::process::exit(1);
        }
    }
}
