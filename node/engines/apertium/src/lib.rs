//! `tolk-engine-apertium`: a Tolk translation engine over Apertium
//! (rule-based MT; Debian's `apertium` plus a pair such as
//! `apertium-eng-spa`).
//!
//! The engine runs the `apertium` command per request (`apertium -u MODE`,
//! text on stdin, translation on stdout) rather than linking a library:
//! Apertium is a pipeline of programs, and a process keeps its crashes out of
//! the node. Cost: ~0.1–0.3 s of process start-up per sentence.
//!
//! Options: `mode` (required unless derivable: the Apertium mode, e.g.
//! `eng-spa`; default from the languages asked, `en`→`eng`, `es`→`spa`, …),
//! `command` (default `apertium`), `timeout_ms` (default 20000).
//!
//! # Layout
//! - this file: the engine and the language-code mapping.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tolk_engine_sdk::{Error, Nmt, Options, export_nmt};

/// One Apertium mode (a language pair and direction), or modes derived per call.
#[derive(Debug)]
pub struct Apertium {
    mode: Option<String>,
    command: String,
    timeout: Duration,
}

/// ISO 639-1 → the ISO 639-3 codes Apertium names its pairs with (the pairs Debian ships).
fn iso3(lang: &str) -> Option<&'static str> {
    let base = lang.split('-').next().unwrap_or(lang).to_ascii_lowercase();
    Some(match base.as_str() {
        "en" => "eng",
        "es" => "spa",
        "ca" => "cat",
        "fr" => "fra",
        "pt" => "por",
        "it" => "ita",
        "ro" => "ron",
        "eo" => "epo",
        "eu" => "eus",
        "gl" => "glg",
        "oc" => "oci",
        "an" => "arg",
        "ast" => "ast",
        "nb" => "nob",
        "nn" => "nno",
        "sv" => "swe",
        "da" => "dan",
        "is" => "isl",
        "af" => "afr",
        "nl" => "nld",
        "mk" => "mkd",
        "bg" => "bul",
        "hi" => "hin",
        "ur" => "urd",
        "kk" => "kaz",
        "tt" => "tat",
        "cy" => "cym",
        "br" => "bre",
        "sc" => "srd",
        "mt" => "mlt",
        "ar" => "ara",
        "id" => "ind",
        "ms" => "msa",
        "sl" => "slv",
        "hr" | "sr" | "bs" => "hbs",
        _ => return None,
    })
}

impl Nmt for Apertium {
    fn create(options: &Options) -> Result<Self, Error> {
        let timeout_ms = options
            .get("timeout_ms")
            .map(|t| t.parse::<u64>().map_err(|_| Error::unsupported("timeout_ms must be an integer")))
            .transpose()?;
        let engine = Self {
            mode: options.get("mode").map(str::to_owned),
            command: options.get("command").unwrap_or("apertium").to_owned(),
            timeout: Duration::from_millis(timeout_ms.unwrap_or(20_000)),
        };
        // Fail at start-up, not on the first job, when apertium is missing.
        let probe = Command::new(&engine.command).arg("-l").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).output();
        let listed = probe.map_err(|e| Error::backend(format!("cannot run {:?}: {e} (install apertium)", engine.command)))?;
        if let Some(mode) = &engine.mode {
            let modes = String::from_utf8_lossy(&listed.stdout);
            if !modes.split_whitespace().any(|m| m == mode) {
                return Err(Error::unsupported(format!(
                    "apertium has no mode {mode:?} (install its language pair, e.g. apertium-eng-spa)"
                )));
            }
        }
        Ok(engine)
    }

    fn translate(&mut self, text: &str, src_lang: &str, tgt_lang: &str) -> Result<String, Error> {
        if text.trim().is_empty() {
            return Ok(String::new());
        }
        let mode = match &self.mode {
            Some(m) => m.clone(),
            None => match (iso3(src_lang), iso3(tgt_lang)) {
                (Some(s), Some(t)) => format!("{s}-{t}"),
                _ => return Err(Error::unsupported(format!("no apertium mode known for {src_lang} → {tgt_lang}"))),
            },
        };
        self.run(&mode, text)
    }
}

impl Apertium {
    fn run(&self, mode: &str, text: &str) -> Result<String, Error> {
        let mut child = Command::new(&self.command)
            .args(["-u", mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::backend(format!("cannot run {}: {e}", self.command)))?;
        // Write from another thread: a large text must not dead-lock against a full stdout pipe.
        let mut stdin = child.stdin.take().ok_or_else(|| Error::backend("no stdin"))?;
        let input = text.replace('\n', " ");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let mut stdout = child.stdout.take().ok_or_else(|| Error::backend("no stdout"))?;
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::backend(format!("apertium took longer than {:?}", self.timeout)));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(Error::backend(format!("waiting for apertium: {e}"))),
            }
        };
        let _ = writer.join();
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(Error::backend(format!("apertium {mode} failed ({status}): {}", err.trim())));
        }
        Ok(out.trim().to_owned())
    }
}

export_nmt!(Apertium, "apertium", "3.8");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_derived_from_language_tags() {
        assert_eq!((iso3("en"), iso3("es-MX"), iso3("zh")), (Some("eng"), Some("spa"), None));
    }
}
