//! A node as a child process: the real `tolk-node` binary with real engine
//! plugins, its configuration file, state directory, log and stdout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{build, log_field, wait_until};

/// Which engines a node runs. Every job runs ASR → NMT → TTS (the
/// dispatcher asks for all three when the languages differ), for sessions
/// `en` → `es`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engines {
    /// PocketSphinx (en) → Apertium (en → es) → eSpeak NG (es): a real
    /// translation.
    Real,
    /// PocketSphinx (en) → the `echo` test engine (`[en→es] TEXT`) → eSpeak
    /// NG (es): the same recognition and speech, a translation that costs
    /// nothing. For tests where the translated text does not matter.
    Quick,
    /// The neural engines on the installed models (`tolk-node models`):
    /// whisper base ASR for zh, en, es; whisper's speech translation zh, es →
    /// en; Apertium en → es; Kokoro TTS (es, zh) and piper (en).
    Neural,
}

/// The models folder, as `tolk-node models` chooses it (`TOLK_MODELS_DIR`,
/// else `~/.cache/tolk/models`); scripts/setup.sh installs into it.
pub fn models_dir() -> PathBuf {
    tolk_node::store::default_dir()
}

/// The installed file `name` of model `id`; panics with what to run when missing.
pub fn model_file(id: &str, name: &str) -> String {
    let path = models_dir().join(id).join(name);
    assert!(path.is_file(), "{} is missing: run scripts/setup.sh (tolk-node models install {id})", path.display());
    path.display().to_string()
}

/// The `[engine.options]` lines of the whisper engine on whisper base.
pub fn whisper_options() -> String {
    format!("model = \"{}\"\nthreads = 2", model_file("whisper-base", "ggml-base.bin"))
}

/// The `[engine.options]` lines of Kokoro (`kind = "kokoro"`) or piper.
pub fn tts_options(kind: &str) -> String {
    let ort = model_file("onnxruntime", "libonnxruntime.so.1.31.1");
    match kind {
        "piper" => format!(
            "kind = \"piper\"\nonnxruntime = \"{ort}\"\nmodel = \"{}\"\nconfig = \"{}\"",
            model_file("piper-en-us-joe", "en_US-joe-medium.onnx"),
            model_file("piper-en-us-joe", "en_US-joe-medium.onnx.json")
        ),
        _ => format!(
            "kind = \"kokoro\"\nonnxruntime = \"{ort}\"\nmodel = \"{}\"\nvocab = \"{}\"\nvoices = \"{}\"",
            model_file("kokoro", "kokoro-v1.0.int8.onnx"),
            model_file("kokoro", "vocab.json"),
            model_file("kokoro", "voices.npz")
        ),
    }
}

/// A node's configuration file.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub engines: Engines,
    pub accept_public_jobs: bool,
    /// Jobs at once (the dispatcher's default `max_jobs_per_node` is 4).
    pub max_jobs: usize,
    /// PocketSphinx decoders: this many ASR calls at once; more jobs wait
    /// for one inside the node.
    pub asr_instances: usize,
    /// The dispatcher's registration secret, when it has one.
    pub auth_token: Option<String>,
}

impl NodeSetup {
    pub fn new(engines: Engines) -> Self {
        Self { engines, accept_public_jobs: true, max_jobs: 4, asr_instances: 1, auth_token: None }
    }

    fn engine(stage: &str, package: &str, model_id: &str, langs: &str, extra: &str, options: &str) -> String {
        format!(
            "[[engine]]\nstage = \"{stage}\"\nlibrary = \"{}\"\nmodel_id = \"{model_id}\"\n{langs}\n{extra}\n[engine.options]\n{options}\n\n",
            build::engine(package).display()
        )
    }

    /// The TOML text. Short heartbeats and reconnect delays: tests restart
    /// dispatchers and wait for nodes to come back.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "accept_public_jobs = {}\nmax_jobs = {}\nheartbeat_ms = 1000\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n",
            self.accept_public_jobs, self.max_jobs
        );
        if let Some(token) = &self.auth_token {
            t += &format!("auth_token = \"{token}\"\n");
        }
        t += "\n";
        if self.engines == Engines::Neural {
            let w = whisper_options();
            t += &Self::engine("asr", "tolk-engine-whisper", "whisper-base", "src_langs = [\"zh\", \"en\", \"es\"]", "", &w);
            let st = "src_langs = [\"zh\", \"es\"]\ntgt_lang = \"en\"";
            t += &Self::engine("speech_translation", "tolk-engine-whisper", "whisper-base-translate", st, "", &w);
            let en_es = "src_lang = \"en\"\ntgt_lang = \"es\"";
            t += &Self::engine("nmt", "tolk-engine-apertium", "apertium-eng-spa", en_es, "", "mode = \"eng-spa\"");
            let kokoro = tts_options("kokoro");
            t += &Self::engine("tts", "tolk-engine-onnx-tts", "kokoro", "src_langs = [\"es\", \"zh\"]", "", &kokoro);
            t += &Self::engine("tts", "tolk-engine-onnx-tts", "piper-en-us-joe", "src_lang = \"en\"", "", &tts_options("piper"));
            return t;
        }
        let instances = format!("instances = {}", self.asr_instances);
        t += &Self::engine("asr", "tolk-engine-pocketsphinx", "pocketsphinx-en-us", "src_lang = \"en\"", &instances, "");
        t += &match self.engines {
            Engines::Real => Self::engine(
                "nmt",
                "tolk-engine-apertium",
                "apertium-eng-spa",
                "src_lang = \"en\"\ntgt_lang = \"es\"",
                "",
                "mode = \"eng-spa\"",
            ),
            Engines::Quick | Engines::Neural => {
                Self::engine("nmt", "tolk-test-engine-echo", "echo-en-es", "src_lang = \"en\"\ntgt_lang = \"es\"", "", "")
            }
        };
        t += &Self::engine("tts", "tolk-engine-espeak", "espeak-ng-es", "src_lang = \"es\"", "", "voice = \"es\"");
        t
    }
}

/// A running `tolk-node`; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    pub name: String,
    log: PathBuf,
    stdout: PathBuf,
}

impl NodeProcess {
    /// Starts the node `name` (its files go to `dir/name/`) against the
    /// dispatcher at `dispatcher` (`ws://HOST:PORT`); `pair` passes `--pair`.
    pub fn start(dir: &Path, name: &str, dispatcher: &str, setup: &NodeSetup, pair: bool) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        std::fs::write(&config, setup.toml()).unwrap();
        let (log, stdout) = (dir.join("node.log"), dir.join("node.out"));
        let mut cmd = Command::new(crate::binary("tolk-e2e-node"));
        cmd.arg("--dispatcher").arg(dispatcher).arg("--config").arg(&config).arg("--state-dir").arg(dir.join("state"));
        if pair {
            cmd.arg("--pair");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the node binary");
        Self { child: Some(child), name: name.to_owned(), log, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the node runs")
    }

    /// Its log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it printed (stdout).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until its log holds `needle` at least `count` times.
    pub async fn wait_for(&mut self, needle: &str, count: usize) {
        let name = self.name.clone();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("the node runs");
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until(
            &format!("node {name}: {count}× {needle:?} in its log"),
            Duration::from_secs(60),
            || {
                if read().matches(needle).count() >= count {
                    return Some(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("node {name} exited ({status}) before {needle:?}:\n{}", read());
                }
                None
            },
            read,
        )
        .await;
    }

    /// Waits for its `count`-th registration; returns the node id it got.
    pub async fn registered(&mut self, count: usize) -> String {
        self.wait_for("registered node_id=", count).await;
        self.node_id()
    }

    /// The node id of its last registration.
    pub fn node_id(&self) -> String {
        let log = self.log();
        let line =
            log.lines().rfind(|l| l.contains("registered node_id=")).unwrap_or_else(|| panic!("node {} never registered", self.name));
        log_field(line, "node_id").unwrap().to_owned()
    }

    /// The ids of the jobs it finished ("job done" in its log).
    pub fn jobs_done(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains("job done")).filter_map(|l| log_field(l, "job_id").map(str::to_owned)).collect()
    }

    /// The last pairing code it printed (`--pair`), waiting for one.
    pub async fn pairing_code(&self) -> String {
        wait_until(
            &format!("node {} prints a pairing code", self.name),
            Duration::from_secs(60),
            || {
                let out = self.stdout();
                let line = out.lines().rfind(|l| l.starts_with("Pairing code: "))?;
                let code: String = line.trim_start_matches("Pairing code: ").chars().take_while(char::is_ascii_digit).collect();
                (code.len() == 6).then_some(code)
            },
            || format!("stdout:\n{}\nlog:\n{}", self.stdout(), self.log()),
        )
        .await
    }

    /// SIGKILL: the node dies mid-work, without a word to the dispatcher.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
