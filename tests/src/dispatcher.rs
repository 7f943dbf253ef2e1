//! The dispatcher as a child process: the real binary, a config file, a log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{ADMIN_TOKEN, wait_until, wire};

/// A running (or stopped) `tolk-dispatcher`; killed when dropped.
#[derive(Debug)]
pub struct DispatcherProcess {
    child: Option<Child>,
    /// Where it listens; a restart listens here again.
    pub addr: SocketAddr,
    dir: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// How many times it was started (names its log files).
    starts: u32,
}

/// The dispatcher binary under test.
pub fn binary() -> PathBuf {
    crate::binary("tolk-e2e-dispatcher")
}

impl DispatcherProcess {
    /// Starts the dispatcher on a free port of 127.0.0.1 with `config` (TOML;
    /// the admin token [`ADMIN_TOKEN`] is set before it) and extra
    /// environment variables; returns once it listens.
    pub async fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("dispatcher.toml");
        std::fs::write(&path, format!("admin_token = \"{ADMIN_TOKEN}\"\n{config}")).unwrap();
        let mut this = Self {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: dir.to_owned(),
            config: path,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            starts: 0,
        };
        this.spawn_and_wait().await;
        this
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.join(format!("dispatcher-{}.out", self.starts))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("dispatcher-{}.log", self.starts))
    }

    /// Spawns on `self.addr` and waits for the "listening on" line. A port
    /// still held by the previous run's sockets is retried a few times.
    async fn spawn_and_wait(&mut self) {
        for attempt in 0..20 {
            self.starts += 1;
            let out = std::fs::File::create(self.stdout_path()).unwrap();
            let err = std::fs::File::create(self.log_path()).unwrap();
            let mut cmd = Command::new(binary());
            cmd.arg("--listen").arg(self.addr.to_string()).arg("--config").arg(&self.config);
            cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err);
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("start the dispatcher binary");
            let stdout = self.stdout_path();
            let listening = wait_until(
                "the dispatcher listens",
                Duration::from_secs(60),
                || {
                    let text = std::fs::read_to_string(&stdout).unwrap_or_default();
                    if let Some(addr) = text.lines().find_map(|l| l.split("listening on ws://").nth(1)) {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        return Some(Some(addr.parse::<SocketAddr>().expect("an address")));
                    }
                    match child.try_wait() {
                        Ok(Some(_)) => Some(None),
                        _ => None,
                    }
                },
                || self.log(),
            )
            .await;
            match listening {
                Some(addr) => {
                    self.addr = addr;
                    self.child = Some(child);
                    return;
                }
                None => {
                    let log = self.log();
                    assert!(log.contains("Address already in use") || log.contains("in use"), "the dispatcher exited:\n{log}");
                    assert!(attempt < 19, "the dispatcher cannot bind {}:\n{log}", self.addr);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// `ws://ADDR`, for nodes.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `ws://ADDR/ws/session`, for session clients.
    pub fn session_url(&self) -> String {
        format!("ws://{}/ws/session", self.addr)
    }

    /// The current run's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: a crash. Returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: a graceful shutdown. Returns once the process has exited.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        let exited =
            wait_until("the dispatcher exits on SIGTERM", Duration::from_secs(30), || child.try_wait().ok().flatten(), || self.log()).await;
        assert!(exited.success(), "the dispatcher exited with {exited} on SIGTERM:\n{}", self.log());
    }

    /// Starts it again on the same address (after [`kill`](Self::kill) or
    /// [`terminate`](Self::terminate)): a fresh process with empty state.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the dispatcher before restarting it");
        self.spawn_and_wait().await;
    }

    /// GET an admin endpoint (`/admin/nodes`, ...) as JSON.
    pub async fn admin(&self, path: &str) -> serde_json::Value {
        let (status, body) = wire::http(self.addr, "GET", path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The node `node_id` as `/admin/nodes` lists it.
    pub async fn admin_node(&self, node_id: &str) -> Option<serde_json::Value> {
        let nodes = self.admin("/admin/nodes").await;
        nodes.as_array().unwrap().iter().find(|n| n["node_id"] == node_id).cloned()
    }

    /// The value of a metric line of `/metrics` (`tolk_job_retries_total`,
    /// `tolk_bad_frames_total{endpoint="node"}`), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, body) = wire::http(self.addr, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap_or_else(|_| panic!("metric {name}: {v}")))
    }
}

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
