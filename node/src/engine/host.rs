//! The child side of an out-of-process engine: `tolk-node engine-host
//! --library PATH`, started by [`super::process`]. It limits its own memory,
//! arranges to die with the node, loads the library with the ordinary
//! loader ([`super::plugin`]), creates one instance with the options of the
//! `Init` frame, says `Ready`, and then answers one request frame at a time
//! on stdin/stdout ([`super::wire`]) until stdin closes.
//!
//! Its stdout carries frames only: fd 1 is pointed at stderr before the
//! library is loaded, so an engine printing to stdout cannot corrupt the
//! stream; everything on stderr ends in the node's log.

use std::io::Write as _;
use std::path::Path;

use super::plugin::{Library, PluginEngine};
use super::wire::{self, FromChild, ToChild, WireError};
use super::{EngineError, EngineErrorKind};

/// What the engine host needs to know.
#[derive(Debug, Clone)]
pub struct HostOptions<'a> {
    pub library: &'a Path,
    /// `RLIMIT_DATA` in MiB (heap, private writable mappings); `None`: no limit.
    pub memory_limit_mb: Option<u64>,
    /// The node's pid: the host exits if its parent is already another process.
    pub parent_pid: Option<u32>,
}

/// Runs the engine host until stdin closes; returns the process exit code.
pub fn serve(opts: &HostOptions<'_>) -> u8 {
    match run(opts) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("engine host: {message}");
            2
        }
    }
}

fn run(opts: &HostOptions<'_>) -> Result<(), String> {
    die_with_parent(opts.parent_pid)?;
    if let Some(mb) = opts.memory_limit_mb {
        limit_memory(mb)?;
    }
    let mut out = std::io::BufWriter::new(frames_output()?);
    let mut input = std::io::BufReader::new(std::io::stdin().lock());

    let send = |out: &mut std::io::BufWriter<Box<dyn std::io::Write>>, msg: &FromChild| -> Result<(), String> {
        let frame = wire::encode_from_child(msg).map_err(|e| e.to_string())?;
        wire::write_frame(out, &frame).map_err(|e| format!("cannot write to the node: {e}"))
    };
    let options = match wire::read_frame(&mut input).and_then(|b| wire::decode_to_child(&b)) {
        Ok(ToChild::Init { options }) => options,
        Ok(ToChild::Request(_)) => return Err("a request before Init".into()),
        Err(e) => return Err(format!("no Init frame: {e}")),
    };
    let engine = match start(opts.library, &options) {
        Ok((engine, ready)) => {
            send(&mut out, &FromChild::Ready(ready))?;
            engine
        }
        Err(e) => {
            send(&mut out, &FromChild::InitFailed(e.clone()))?;
            return Err(e.message);
        }
    };
    loop {
        let body = match wire::read_frame(&mut input) {
            Ok(b) => b,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(format!("reading from the node: {e}")),
        };
        let reply = match wire::decode_to_child(&body) {
            Ok(ToChild::Request(r)) => match r.as_request() {
                Some(request) => super::Engine::process(&engine, request),
                None => Err(EngineError::new(EngineErrorKind::Backend, format!("unknown stage {}", r.stage))),
            },
            Ok(ToChild::Init { .. }) => return Err("a second Init".into()),
            Err(e) => return Err(format!("from the node: {e}")),
        };
        // An answer beyond the frame bound is the engine's error, not the host's end.
        let frame = wire::encode_from_child(&FromChild::Reply(reply)).or_else(|e| {
            let error = EngineError::new(EngineErrorKind::Backend, format!("the engine's output is too large: {e}"));
            wire::encode_from_child(&FromChild::Reply(Err(error)))
        });
        let frame = frame.map_err(|e| e.to_string())?;
        wire::write_frame(&mut out, &frame).map_err(|e| format!("cannot write to the node: {e}"))?;
        let _ = std::io::stderr().flush();
    }
}

/// Die with the node, whatever kills it (SIGKILL included). The signal is
/// sent when the thread that forked us ends: the node forks from a thread
/// that lives as long as the engine. Elsewhere than Linux the node still
/// kills its children when it stops an engine, not when it is killed.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn die_with_parent(parent: Option<u32>) -> Result<(), String> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("cannot set the parent death signal: {e}"))?;
    // The node may have died before the line above: then our parent is another process.
    if let Some(parent) = parent {
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_pid() as u32);
        if ppid != parent {
            return Err(format!("the node ({parent}) is gone"));
        }
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn die_with_parent(_parent: Option<u32>) -> Result<(), String> {
    Ok(())
}

/// `RLIMIT_DATA`: heap and private writable mappings, so a leak ends in a
/// failed allocation here rather than in the machine's OOM killer.
#[cfg(unix)]
fn limit_memory(mb: u64) -> Result<(), String> {
    let bytes = mb.saturating_mul(1 << 20);
    let limit = rustix::process::Rlimit { current: Some(bytes), maximum: Some(bytes) };
    rustix::process::setrlimit(rustix::process::Resource::Data, limit).map_err(|e| format!("cannot set the memory limit: {e}"))
}

#[cfg(not(unix))]
fn limit_memory(mb: u64) -> Result<(), String> {
    eprintln!("engine host: no memory limit on this platform (asked for {mb} MiB)");
    Ok(())
}

/// Where frames go: a private copy of stdout, with fd 1 pointed at stderr.
#[cfg(unix)]
fn frames_output() -> Result<Box<dyn std::io::Write>, String> {
    let fd = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned().map_err(|e| format!("dup stdout: {e}"))?;
    rustix::stdio::dup2_stdout(std::io::stderr()).map_err(|e| format!("dup2 stderr over stdout: {e}"))?;
    Ok(Box::new(std::fs::File::from(fd)))
}

#[cfg(not(unix))]
fn frames_output() -> Result<Box<dyn std::io::Write>, String> {
    Ok(Box::new(std::io::stdout()))
}

fn start(library: &Path, options: &str) -> Result<(PluginEngine, wire::Ready), EngineError> {
    let backend = |m: String| EngineError::new(EngineErrorKind::Backend, m);
    let lib = Library::open(library).map_err(|e| backend(e.to_string()))?;
    let ready = wire::Ready {
        abi_version: lib.abi_version(),
        stage: lib.stage_code(),
        stages: lib.stages(),
        name: lib.name().to_owned(),
        version: lib.version().to_owned(),
    };
    let engine = PluginEngine::create(lib, &tolk_engine_sdk::Options::parse(options))?;
    Ok((engine, ready))
}
