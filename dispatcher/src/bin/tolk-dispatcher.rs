//! `tolk-dispatcher`: runs the dispatcher. See README.md for every setting.

use std::path::PathBuf;

use clap::Parser;
use tolk_dispatcher::shell::Dispatcher;
use tolk_dispatcher::{Config, Error};

/// Frames of tens of kB are allocated and freed thousands of times a second;
/// glibc's malloc spent a tenth of the dispatcher's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Tolk dispatcher: sessions on /ws/session, nodes on /ws/node.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:8080, or `listen` from the config].
    #[arg(long, env = "TOLK_LISTEN")]
    listen: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "TOLK_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("tolk-dispatcher: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Error> {
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    init_logging(config.log_json);
    let listener = std::net::TcpListener::bind(&config.listen).map_err(|source| Error::Bind { addr: config.listen.clone(), source })?;
    let scheme = if config.tls_cert.is_some() { "wss" } else { "ws" };
    let addr = listener.local_addr()?;
    tracing::info!("listening: sessions on {scheme}://{addr}/ws/session, nodes on {scheme}://{addr}/ws/node");
    println!("tolk-dispatcher listening on {scheme}://{addr} (/ws/session, /ws/node, /metrics)");
    Dispatcher::new(config)?.run(listener, shutdown_signal()).await
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The NATS client logs every failed reconnect attempt at info; the
    // cluster link says once that NATS is away and once that it is back.
    let quiet_nats = std::env::var("RUST_LOG").map_or(true, |v| !v.contains("async_nats"));
    let filter = match "async_nats=warn".parse() {
        Ok(directive) if quiet_nats => filter.add_directive(directive),
        _ => filter,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
