//! `tolk-node --dispatcher ws://HOST:PORT --config FILE [--state-dir DIR] [--pair]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tolk_node::config::Config;
use tolk_node::shell::{self, NodeOptions};

/// A Tolk node: runs speech recognition, translation and synthesis jobs for a dispatcher.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The dispatcher, `ws://HOST:PORT` (default: `dispatcher` in the config file).
    #[arg(long, env = "TOLK_DISPATCHER")]
    dispatcher: Option<String>,
    /// The node's configuration file (TOML; see tolk-node.example.toml).
    #[arg(long, env = "TOLK_NODE_CONFIG")]
    config: PathBuf,
    /// Where the node's identity is kept (default: `state_dir` in the config file,
    /// else $XDG_STATE_HOME/tolk-node or ~/.local/state/tolk-node).
    #[arg(long, env = "TOLK_NODE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Ask the dispatcher for a pairing code once registered and print it
    /// (also on SIGUSR1 while running).
    #[arg(long)]
    pair: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tolk-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config = Config::load(&args.config)?;
        let dispatcher = args
            .dispatcher
            .or(config.dispatcher)
            .ok_or_else(|| tolk_node::Error::Usage("no dispatcher: pass --dispatcher ws://HOST:PORT".into()))?;
        let state_dir = args.state_dir.or(config.state_dir).unwrap_or_else(tolk_node::identity::default_state_dir);
        let opts = NodeOptions { dispatcher, config_path: args.config, state_dir, pair: args.pair };
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
