//! The load generator at tiny scale against an in-process dispatcher and an
//! in-process bare relay: every utterance answered, sane numbers. No
//! wall-clock thresholds: the figures themselves are for README.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test: a panic is a failed test

use std::time::Duration;

use tolk_loadgen::idle::{self, IdleConfig};
use tolk_loadgen::procstat::Pid;
use tolk_loadgen::sim::{self, LoadConfig, LoadReport, Target};

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("stops in time").unwrap();
    }
}

fn start_dispatcher() -> (std::net::SocketAddr, Running) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = tolk_dispatcher::Config { shutdown_grace_ms: 0, ..Default::default() };
    config.core.max_jobs_per_node = 1024;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tolk_dispatcher::shell::seeded(config, 7)
            .run(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, Running { stop, task })
}

async fn start_relay() -> (std::net::SocketAddr, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tolk_loadgen::relay::serve(listener, Default::default(), async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, Running { stop, task })
}

fn tiny(rate: f64, node_delay_ms: u64) -> LoadConfig {
    LoadConfig {
        sessions: 5,
        nodes: 2,
        utterance_ms: 200,
        tts_ms: 100,
        rate,
        node_delay: Duration::from_millis(node_delay_ms),
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(20),
        ..LoadConfig::default()
    }
}

fn check(r: &LoadReport) {
    println!("{}", tolk_loadgen::report::table(&[r]));
    assert!(r.sent > 0, "{r:?}");
    assert_eq!((r.answered, r.failed, r.refused, r.lost, r.unexpected, r.untimed), (r.sent, 0, 0, 0, 0, 0), "{r:?}");
    assert_eq!(r.jobs, r.sent, "each utterance reached a node once");
    assert!(r.window_answered > 0 && r.window_answered <= r.answered, "{r:?}");
    assert!(r.utterances_per_s() > 0.0 && r.mb_per_s() > 0.0);
    for p in [r.out, r.back, r.total] {
        assert_eq!(p.count as u64, r.window_answered);
        assert!(p.is_ordered(), "{p:?}");
    }
    assert!(r.total.p50 >= r.out.p50.min(r.back.p50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_runs_against_the_dispatcher_and_the_relay_answer_everything() {
    let me = Some(Pid(std::process::id()));
    let (daddr, dispatcher) = start_dispatcher();
    let ours = sim::run(Target::Dispatcher(daddr), &tiny(0.0, 0), me).await.unwrap();
    check(&ours);
    assert!(ours.server_cpu.is_some() && ours.server_memory.is_some());
    // At a rate, with nodes that take their time.
    let paced = sim::run(Target::Dispatcher(daddr), &tiny(20.0, 15), None).await.unwrap();
    check(&paced);
    // Faster than one unanswered utterance per phone allows: what falls
    // due with the window full is dropped, or held and sent when it may
    // (the SDK's queue). Either way every utterance due is sent or counted.
    for hold_unsent in [false, true] {
        let cfg = LoadConfig { max_pending: 1, hold_unsent, ..tiny(50.0, 60) };
        let r = sim::run(Target::Dispatcher(daddr), &cfg, None).await.unwrap();
        check(&r);
        let due = cfg.sessions as f64 * cfg.rate * (cfg.warmup + cfg.duration).as_secs_f64();
        let counted = (r.sent + r.skipped) as f64;
        assert!((counted - due).abs() <= cfg.sessions as f64, "hold {hold_unsent}: {counted} counted, {due} due: {r:?}");
        assert!(r.skipped > 0 && r.sent > 0, "{r:?}");
    }

    let (addr, relay) = start_relay().await;
    let bare = sim::run(Target::Relay(addr), &tiny(0.0, 0), None).await.unwrap();
    check(&bare);
    let paced = sim::run(Target::Relay(addr), &tiny(20.0, 15), None).await.unwrap();
    check(&paced);
    let table = tolk_loadgen::report::table(&[&ours, &bare]);
    assert!(table.contains("dispatcher / relay"), "{table}");
    relay.stop().await;

    let cfg = IdleConfig {
        sessions: 20,
        warmup_sessions: 2,
        hold: Duration::from_millis(300),
        heartbeat: Duration::from_millis(100),
        connect_parallel: 8,
    };
    let idle = idle::run(Target::Dispatcher(daddr), &cfg, Pid(std::process::id())).await.unwrap();
    assert_eq!((idle.open, idle.failed), (20, 0), "{idle:?}");
    assert!(idle.after.rss_kib > 0 && idle.bytes_per_session().is_finite());
    dispatcher.stop().await;
}
