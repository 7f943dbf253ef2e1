//! What the person running the node sees: `status.json` in the state
//! directory, rewritten by the running node whenever it changes, and read by
//! `tolk-node status`. Plain data; the core counts, the shell adds what only
//! it knows (why the last connection failed) and writes the file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Errors kept for the status view (the newest last).
pub const RECENT_ERRORS: usize = 10;

/// The node as its owner sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `connecting`, `registering`, `connected`, `draining`, `stopping`.
    pub state: String,
    pub connected: bool,
    /// Why it is not connected (the last connection error), when it is not.
    pub why_not_connected: Option<String>,
    pub dispatcher: String,
    pub node_id: Option<String>,
    pub pairing_code: Option<String>,
    /// Unix ms.
    pub pairing_expires_at: Option<u64>,
    pub models: Vec<ModelStatus>,
    pub jobs_running: usize,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub recent_errors: VecDeque<String>,
    /// The process writing this file, and when (unix ms).
    pub pid: u32,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub model_id: String,
    pub kind: String,
    pub languages: String,
    pub enabled: bool,
    /// `running`, or why the engine is restarting (engines in child processes).
    #[serde(default)]
    pub state: String,
}

/// Keeps the newest `RECENT_ERRORS` errors.
pub fn push_error(list: &mut VecDeque<String>, error: String) {
    if list.len() == RECENT_ERRORS {
        list.pop_front();
    }
    list.push_back(error);
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Writes `status` atomically (temporary file, then rename), readable by
/// the owner only: it holds the pairing code.
pub fn write(state_dir: &Path, status: &NodeStatus) -> Result<(), Error> {
    let state = |source| Error::State { path: state_dir.to_owned(), source };
    std::fs::create_dir_all(state_dir).map_err(state)?;
    let tmp = state_dir.join(format!("status.json.{}", std::process::id()));
    let text = serde_json::to_string_pretty(status).map_err(|e| Error::Usage(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(state)?;
        f.write_all(text.as_bytes()).map_err(state)?;
    }
    std::fs::rename(&tmp, path(state_dir)).map_err(state)
}

pub fn read(state_dir: &Path) -> Result<NodeStatus, Error> {
    let p = path(state_dir);
    let text = std::fs::read_to_string(&p).map_err(|source| Error::State { path: p.clone(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", p.display())))
}

/// The status as lines for a person; `alive` says whether its process runs.
pub fn render(s: &NodeStatus, alive: bool, now_ms: u64) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    if !alive {
        line(format!("not running (the last status, from pid {}, is {} s old)", s.pid, now_ms.saturating_sub(s.updated_at) / 1000));
    }
    let state =
        if s.connected { format!("connected to {}", s.dispatcher) } else { format!("not connected to {} ({})", s.dispatcher, s.state) };
    line(format!("state:    {state}"));
    if let (false, Some(why)) = (s.connected, &s.why_not_connected) {
        line(format!("why:      {why}"));
    }
    line(format!("node id:  {}", s.node_id.as_deref().unwrap_or("(none yet)")));
    match (&s.pairing_code, s.pairing_expires_at) {
        (Some(code), Some(at)) if at > now_ms => line(format!("pairing:  {code} (expires in {} min)", (at - now_ms).div_ceil(60_000))),
        (Some(code), Some(_)) => line(format!("pairing:  {code} (expired; run with --pair or send SIGUSR1 for a new one)")),
        _ => line("pairing:  no code (run with --pair or send SIGUSR1)".to_owned()),
    }
    line(format!("jobs:     {} running, {} done, {} failed", s.jobs_running, s.jobs_done, s.jobs_failed));
    line(format!("models:   {}", s.models.len()));
    for m in &s.models {
        let state = match m.state.as_str() {
            "" | "running" if m.enabled => String::new(),
            "" | "running" => " (disabled)".to_owned(),
            other => format!(" ({other})"),
        };
        line(format!("  {} {} {}{state}", m.kind, m.model_id, m.languages));
    }
    if s.recent_errors.is_empty() {
        line("errors:   none".to_owned());
    } else {
        line(format!("errors:   the last {}", s.recent_errors.len()));
        for e in &s.recent_errors {
            line(format!("  {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_status_reads_back_and_renders_what_the_owner_needs() {
        let dir = std::env::temp_dir().join(format!("tolk-status-{}", std::process::id()));
        let mut s = NodeStatus {
            state: "connecting".into(),
            why_not_connected: Some("cannot connect: invalid peer certificate".into()),
            dispatcher: "wss://d.example/ws/node".into(),
            node_id: Some("n-1".into()),
            pairing_code: Some("483920".into()),
            pairing_expires_at: Some(10 * 60_000),
            models: vec![
                ModelStatus {
                    model_id: "echo".into(),
                    kind: "nmt".into(),
                    languages: "en → es".into(),
                    enabled: true,
                    state: "running".into(),
                },
                ModelStatus {
                    model_id: "asr".into(),
                    kind: "asr".into(),
                    languages: "en".into(),
                    enabled: false,
                    state: "restarting in 400 ms (failed 3× in a row): SIGSEGV".into(),
                },
            ],
            jobs_done: 3,
            jobs_failed: 1,
            pid: 42,
            updated_at: 0,
            ..NodeStatus::default()
        };
        for i in 0..12 {
            push_error(&mut s.recent_errors, format!("e{i}"));
        }
        assert_eq!((s.recent_errors.len(), s.recent_errors.front().map(String::as_str)), (RECENT_ERRORS, Some("e2")));
        write(&dir, &s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&dir).ok().as_ref(), Some(&s));
        let text = render(&s, true, 0);
        for want in [
            "not connected to wss://d.example/ws/node",
            "invalid peer certificate",
            "n-1",
            "483920 (expires in 10 min)",
            "3 done, 1 failed",
            "nmt echo en → es\n",
            "asr asr en (restarting in 400 ms (failed 3× in a row): SIGSEGV)",
            "e11",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(render(&s, false, 5_000).starts_with("not running"), "a stale file says so");
    }
}
