//! `tolk-loadgen`: runs the dispatcher (a child process) and the bare relay
//! under the same simulated load, prints them side by side, then measures
//! the dispatcher's memory per idle session. `tolk-loadgen relay` serves the
//! bare relay alone (the benchmark starts it that way). See README.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tolk_loadgen::child::{self, Server};
use tolk_loadgen::idle::{self, IdleConfig};
use tolk_loadgen::relay::Options as RelayOptions;
use tolk_loadgen::sim::{self, LoadConfig, Target};
use tolk_loadgen::{Error, report};

/// The dispatcher's allocator, for the relay too: a like-for-like comparison.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator and benchmarks: the dispatcher against a bare WebSocket relay.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open-loop sweep: offer multiples of capacity to the dispatcher and to
    /// the relay, one fresh server per run; print delivered, refused, timed
    /// out, served latency and CPU per offered rate, side by side.
    Sweep {
        #[command(flatten)]
        bench: Box<Bench>,
        /// Offered loads, as multiples of capacity.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0.8, 1.0, 1.5, 2.0, 4.0])]
        multiples: Vec<f64>,
        /// Capacity in utterances/s [default: nodes × max_jobs / node delay;
        /// with no delay, measured by a closed-loop run of the dispatcher].
        #[arg(long)]
        capacity: Option<f64>,
        /// Rounds of the whole sweep (each round runs every multiple once,
        /// so a machine that drifts drifts over all of them); with more
        /// than one, a table of medians follows. One run on a shared
        /// machine swings by a third.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        repeat: u32,
    },
    /// Serve the bare relay (sessions on /s/{session}/{node}, nodes on /n/{node}).
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Leave Nagle's algorithm on (as the dispatcher's server does).
        #[arg(long)]
        no_nodelay: bool,
        /// Bytes of each connection's WebSocket read buffer (tungstenite's default: 131072).
        #[arg(long, default_value_t = 128 * 1024)]
        read_buffer: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    Dispatcher,
    Relay,
    /// Only the idle-session memory test.
    None,
}

#[derive(Debug, clap::Args)]
struct Bench {
    /// Simulated sessions (phones).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Simulated nodes (the relay pairs session i with node i mod nodes).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Length of each utterance, ms of pcm16.
    #[arg(long, default_value_t = 1000)]
    utterance_ms: u32,
    /// Length of the TTS audio in each result, ms of pcm16 (0: none).
    #[arg(long, default_value_t = 1000)]
    tts_ms: u32,
    #[arg(long, default_value_t = 16_000)]
    sample_rate: u32,
    /// Utterances per second per session; 0: closed loop (next one when the result arrives).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long a node holds each job before it answers, ms.
    #[arg(long, default_value_t = 0)]
    node_delay_ms: u64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// max_jobs of each simulated node (and the dispatcher's max_jobs_per_node).
    #[arg(long, default_value_t = 1024)]
    max_jobs: u32,
    /// What to measure under load.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    target: Which,
    /// Seconds between each session's client_heartbeat (with last_utterance_index, as the SDK sends); 0: none.
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Idle sessions of the memory test (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Seconds the idle sessions stay open (heartbeat every 5 s) before RSS is read.
    #[arg(long, default_value_t = 10.0)]
    idle_hold: f64,
    /// Also measure the relay's memory per idle connection.
    #[arg(long)]
    idle_relay: bool,
    /// The dispatcher binary [default: tolk-dispatcher next to this binary, i.e. target/release/].
    #[arg(long)]
    dispatcher_bin: Option<PathBuf>,
    /// Leave Nagle's algorithm on in the relay (the dispatcher does not set TCP_NODELAY).
    #[arg(long)]
    relay_no_nodelay: bool,
    /// Bytes of the relay's WebSocket read buffer per connection (tungstenite's default: 131072; the dispatcher reads its sockets itself, see dispatcher/src/ws/read.rs).
    #[arg(long, default_value_t = 128 * 1024)]
    relay_read_buffer: usize,
    /// Also run two dispatchers of one cluster over a fresh nats-server:
    /// sessions on one, nodes on the other, so every job is forwarded.
    #[arg(long)]
    cluster: bool,
    /// Also print each run step by step (every 250 ms: served, refused,
    /// latency, and the dispatcher's scheduling lag and shed window, scraped
    /// from its /metrics).
    #[arg(long)]
    timeline: bool,
    /// Open loop: a phone holds an utterance it may not send when it falls
    /// due (window full, or told to wait) and sends it as soon as it may, as
    /// the SDK's queue does, instead of dropping it.
    #[arg(long)]
    hold_unsent: bool,
    /// Confine the measured servers (dispatcher, relay, nats-server excepted)
    /// to these CPUs, as `taskset -c` takes them (`0`, `0,2`, `1-3`).
    #[arg(long)]
    server_cpus: Option<String>,
    /// Confine the load generator (its simulated phones and nodes) to these
    /// CPUs. With `--server-cpus 0 --generator-cpus 1` on two cores, the
    /// generator's work does not come out of the server's CPU as the offered
    /// load grows.
    #[arg(long)]
    generator_cpus: Option<String>,
    /// The nats-server binary [default: where scripts/setup.sh installs it].
    #[arg(long)]
    nats_server: Option<PathBuf>,
}

fn main() {
    // Top-level error path: print and exit non-zero (no panic, no unwrap).
    if let Err(e) = start() {
        eprintln!("tolk-loadgen: {e}");
        std::process::exit(1);
    }
}

/// Pins the process before the runtime starts, so it sizes its worker
/// threads to the CPUs it is given.
fn start() -> Result<(), Error> {
    let args = Args::parse();
    match &args.command {
        Some(Cmd::Sweep { bench, .. }) => pin(bench)?,
        Some(Cmd::Relay { .. }) => {}
        None => pin(&args.bench)?,
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    if let Some(Cmd::Relay { listen, no_nodelay, read_buffer }) = args.command {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("tolk-loadgen relay listening on ws://{}", listener.local_addr()?);
        let options = RelayOptions { nodelay: !no_nodelay, read_buffer };
        tolk_loadgen::relay::serve(listener, options, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        return Ok(());
    }
    if let Some(Cmd::Sweep { bench, multiples, capacity, repeat }) = args.command {
        return sweep(*bench, &multiples, capacity, repeat).await;
    }
    let b = args.bench;
    let fds = tolk_loadgen::raise_fd_limit()?;
    let need = (b.idle_sessions + 100).max(b.sessions + b.nodes + 100) as u64;
    if fds < need {
        eprintln!("warning: the open-file limit is {fds}, below the {need} sockets this run needs");
    }
    let cfg = load_config(&b);
    let dispatcher_bin = match b.dispatcher_bin.clone().or_else(child::default_dispatcher_binary) {
        Some(path) => path,
        None if b.target == Which::Relay && b.idle_sessions == 0 => PathBuf::new(),
        None => return Err(
            "tolk-dispatcher not found next to this binary: run `cargo build --release -p tolk-dispatcher` first, or pass --dispatcher-bin"
                .into(),
        ),
    };
    main_bench(b, cfg, dispatcher_bin).await
}

/// Applies `--server-cpus` and `--generator-cpus`, and says so.
fn pin(b: &Bench) -> Result<(), Error> {
    if let Some(cpus) = &b.server_cpus {
        child::pin_servers(cpus)?;
        println!("servers confined to CPUs {cpus}");
    }
    if let Some(cpus) = &b.generator_cpus {
        child::pin_this_process(cpus)?;
        println!("load generator confined to CPUs {cpus}");
    }
    Ok(())
}

fn load_config(b: &Bench) -> LoadConfig {
    LoadConfig {
        sessions: b.sessions,
        nodes: b.nodes,
        utterance_ms: b.utterance_ms,
        tts_ms: b.tts_ms,
        sample_rate: b.sample_rate,
        rate: b.rate,
        node_delay: Duration::from_millis(b.node_delay_ms),
        warmup: Duration::from_secs_f64(b.warmup),
        duration: Duration::from_secs_f64(b.duration),
        max_jobs: b.max_jobs,
        heartbeat: (b.heartbeat > 0.0).then(|| Duration::from_secs_f64(b.heartbeat)),
        scrape_timeline: b.timeline,
        hold_unsent: b.hold_unsent,
        ..LoadConfig::default()
    }
}

async fn sweep(b: Bench, multiples: &[f64], capacity: Option<f64>, repeat: u32) -> Result<(), Error> {
    tolk_loadgen::raise_fd_limit()?;
    let bin =
        b.dispatcher_bin.clone().or_else(child::default_dispatcher_binary).ok_or("tolk-dispatcher not found: pass --dispatcher-bin")?;
    let relay = RelayOptions { nodelay: !b.relay_no_nodelay, read_buffer: b.relay_read_buffer };
    let mut cfg = load_config(&b);
    let capacity = match capacity {
        Some(c) => c,
        None if b.node_delay_ms > 0 => (b.nodes as f64) * f64::from(b.max_jobs) * 1000.0 / b.node_delay_ms as f64,
        None => {
            let closed = LoadConfig { rate: 0.0, ..cfg.clone() };
            let server = Server::dispatcher(&bin, b.max_jobs)?;
            let r = sim::run(Target::Dispatcher(server.addr), &closed, Some(server.pid())).await?;
            println!("capacity measured closed-loop: {:.0} utterances/s", r.utterances_per_s());
            r.utterances_per_s()
        }
    };
    let mut rows = Vec::new();
    for round in 1..=repeat {
        for &m in multiples {
            cfg.rate = m * capacity / b.sessions.max(1) as f64;
            let of = if repeat > 1 { format!(" (round {round} of {repeat})") } else { String::new() };
            println!("offered {m}× capacity = {:.0}/s{of}: {}", m * capacity, report::describe(&cfg));
            let mut runs = Vec::new();
            if matches!(b.target, Which::Both | Which::Dispatcher) {
                let server = Server::dispatcher(&bin, b.max_jobs)?;
                runs.push(sim::run(Target::Dispatcher(server.addr), &cfg, Some(server.pid())).await?);
                drop(server);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if matches!(b.target, Which::Both | Which::Relay) {
                let server = Server::relay(relay)?;
                runs.push(sim::run(Target::Relay(server.addr), &cfg, Some(server.pid())).await?);
                drop(server);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            println!("{}", report::table(&runs.iter().collect::<Vec<_>>()));
            if b.timeline {
                runs.iter().for_each(|r| println!("{}", report::timeline_table(r)));
            }
            rows.push(report::SweepRow { multiple: m, offered_per_s: m * capacity, runs });
        }
    }
    let run_s = cfg.warmup.as_secs_f64() + cfg.duration.as_secs_f64();
    println!("{}", report::sweep_table(capacity, &rows, run_s));
    if repeat > 1 {
        println!("{}", report::sweep_medians(capacity, &rows, run_s));
    }
    Ok(())
}

async fn main_bench(b: Bench, cfg: LoadConfig, dispatcher_bin: PathBuf) -> Result<(), Error> {
    let relay = RelayOptions { nodelay: !b.relay_no_nodelay, read_buffer: b.relay_read_buffer };
    println!("load: {}", report::describe(&cfg));
    let mut reports = Vec::new();
    if matches!(b.target, Which::Both | Which::Dispatcher) {
        let server = Server::dispatcher(&dispatcher_bin, b.max_jobs)?;
        println!("dispatcher {} (pid {}) …", server.addr, server.pid().0);
        reports.push(sim::run(Target::Dispatcher(server.addr), &cfg, Some(server.pid())).await?);
        drop(server);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if b.cluster {
        reports.push(cluster_run(&b, &cfg, &dispatcher_bin).await?);
    }
    if matches!(b.target, Which::Both | Which::Relay) {
        let server = Server::relay(relay)?;
        println!(
            "bare relay {} (pid {}, TCP_NODELAY {}, read buffer {} B) …",
            server.addr,
            server.pid().0,
            relay.nodelay,
            relay.read_buffer
        );
        reports.push(sim::run(Target::Relay(server.addr), &cfg, Some(server.pid())).await?);
        drop(server);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !reports.is_empty() {
        println!("{}", report::table(&reports.iter().collect::<Vec<_>>()));
        if b.timeline {
            reports.iter().for_each(|r| println!("{}", report::timeline_table(r)));
        }
    }
    if b.idle_sessions > 0 {
        let icfg = IdleConfig { sessions: b.idle_sessions, hold: Duration::from_secs_f64(b.idle_hold), ..IdleConfig::default() };
        let mut idle_reports = Vec::new();
        let server = Server::dispatcher(&dispatcher_bin, b.max_jobs)?;
        println!("idle: {} sessions against a fresh dispatcher (pid {}) …", icfg.sessions, server.pid().0);
        idle_reports.push(idle::run(Target::Dispatcher(server.addr), &icfg, server.pid()).await?);
        drop(server);
        if b.idle_relay {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let server = Server::relay(relay)?;
            println!(
                "idle: {} connections against a fresh bare relay (pid {}, read buffer {} B) …",
                icfg.sessions,
                server.pid().0,
                relay.read_buffer
            );
            idle_reports.push(idle::run(Target::Relay(server.addr), &icfg, server.pid()).await?);
        }
        println!("{}", report::idle_table(&idle_reports.iter().collect::<Vec<_>>()));
    }
    Ok(())
}

/// Two dispatchers of one cluster over a fresh nats-server, sessions on the
/// first and nodes on the second: every job is forwarded over NATS and its
/// result comes back the same way. CPU is the two dispatchers' together;
/// NATS's own is printed beside it.
async fn cluster_run(b: &Bench, cfg: &LoadConfig, dispatcher_bin: &std::path::Path) -> Result<tolk_loadgen::sim::LoadReport, Error> {
    let nats_bin = b
        .nats_server
        .clone()
        .or_else(child::default_nats_binary)
        .ok_or("nats-server not found: run scripts/setup.sh or pass --nats-server")?;
    let nats = child::Nats::start(&nats_bin)?;
    let table = |name: &str| format!("[cluster]\nnats_url = \"{}\"\nname = \"{name}\"\nsecret = \"loadgen-cluster-secret\"\n", nats.url());
    let sessions = Server::dispatcher_with(dispatcher_bin, b.max_jobs, &table("a"), "cluster-a")?;
    let nodes = Server::dispatcher_with(dispatcher_bin, b.max_jobs, &table("b"), "cluster-b")?;
    println!(
        "2 dispatchers: sessions on {} (pid {}), nodes on {} (pid {}), NATS pid {} …",
        sessions.addr,
        sessions.pid().0,
        nodes.addr,
        nodes.pid().0,
        nats.pid().0
    );
    let before = nats.pid().cpu().ok();
    let target = Target::Cluster { sessions: sessions.addr, nodes: nodes.addr };
    let report = sim::run_with(target, cfg, vec![sessions.pid(), nodes.pid()]).await?;
    if let (Some(a), Ok(z)) = (before, nats.pid().cpu()) {
        let per = if report.window_answered > 0 { a.seconds_until(z) * 1e6 / report.window_answered as f64 } else { 0.0 };
        println!(
            "nats-server over the whole run: {:.0} % of a core ({per:.0} µs per utterance answered in the window, warm-up included)",
            a.percent_until(z)
        );
    }
    drop((sessions, nodes));
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(report)
}
