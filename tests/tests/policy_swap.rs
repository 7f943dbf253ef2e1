//! The scheduling policy file is swapped while sessions send: the
//! dispatcher (the binary, watching its plugin folder) loads the new Wasm
//! policy live, no utterance fails, and the new policy decides from then on:
//! `sticky-session` keeps a session on one node, `round-robin` then takes
//! turns over both. Which node ran a job is read from the nodes' own logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{DispatcherProcess, NodeProcess, NodeSetup, build, eventually, scratch, wait_until, wire, workspace_root};

/// Sends utterance `index` and waits for its outcome, which must be a
/// result; returns its job id.
async fn translate(ws: &mut wire::Socket, sid: &str, index: u64, clip: &[i16]) -> String {
    wire::send(ws, &wire::utterance(sid, index, clip)).await;
    let out = wire::recv(ws).await;
    assert_eq!((out["type"].as_str(), out["utterance_index"].as_u64()), (Some("translation_result"), Some(index)), "{out}");
    out["job_id"].as_str().unwrap().to_owned()
}

/// Which of `nodes` ran `job` (0 or 1).
async fn node_of(nodes: &[NodeProcess; 2], job: &str) -> usize {
    wait_until(
        &format!("a node logs job {job}"),
        Duration::from_secs(10),
        || nodes.iter().position(|n| n.jobs_done().iter().any(|j| j == job)),
        String::new,
    )
    .await
}

async fn active_scheduler(dispatcher: &DispatcherProcess) -> Option<String> {
    let plugins = dispatcher.admin("/admin/plugins").await;
    plugins.as_array()?.iter().find(|p| p["kind"] == "scheduler" && p["active"] == true).and_then(|p| p["name"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_policy_file_while_sessions_send_loses_nothing_and_changes_the_decisions() {
    let dir = scratch("policy-swap");
    let clips = speech::clips(&dir.join("speech"), SENTENCES);
    let plugins = dir.join("plugins");
    build::install_wasm_plugin("sticky-session", &plugins, "policy");
    // Compiled plugins are cached by content hash across runs.
    let cache = workspace_root().join("target").join("tmp").join("e2e-plugin-cache");
    let config = format!(
        "[core]\nadmission_wait_ms = 60000\n[plugins]\ndir = \"{}\"\nscheduler = \"policy\"\npoll_ms = 100\ncache_dir = \"{}\"\n",
        plugins.display(),
        cache.display()
    );
    let dispatcher = Arc::new(DispatcherProcess::start(&dir, &config, &[]).await);
    eventually("sticky-session is in effect", Duration::from_secs(120), || async {
        (active_scheduler(&dispatcher).await.as_deref() == Some("sticky-session")).then_some(())
    })
    .await;
    let setup = NodeSetup::new(Engines::Quick);
    let mut nodes = [
        NodeProcess::start(&dir, "a", &dispatcher.ws_base(), &setup, false),
        NodeProcess::start(&dir, "b", &dispatcher.ws_base(), &setup, false),
    ];
    for n in &mut nodes {
        n.registered(1).await;
    }

    // A background session sends one utterance after another, all along
    // the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let background = {
        let (mut ws, ack) = wire::open_session(dispatcher.addr, &wire::session_init()).await;
        let sid = ack["session_id"].as_str().unwrap().to_owned();
        let (stop, done, clips) = (stop.clone(), done.clone(), clips.clone());
        tokio::spawn(async move {
            let mut jobs = Vec::new();
            for i in 0..200u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                jobs.push(translate(&mut ws, &sid, i, &clips[i as usize % clips.len()]).await);
                done.fetch_add(1, Ordering::SeqCst);
            }
            jobs
        })
    };

    // The session under watch, one utterance at a time: under
    // sticky-session it stays on one node.
    let (mut ws, ack) = wire::open_session(dispatcher.addr, &wire::session_init()).await;
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    let mut before = Vec::new();
    for i in 0..4u64 {
        let job = translate(&mut ws, &sid, i, &clips[i as usize]).await;
        before.push(node_of(&nodes, &job).await);
    }
    assert!(before.iter().all(|&n| n == before[0]), "sticky-session keeps the session on one node: {before:?}");

    // The operator swaps the policy file; the background session goes on.
    let at_swap = done.load(Ordering::SeqCst);
    assert!(at_swap > 0, "the background session was sending before the swap");
    build::install_wasm_plugin("round-robin", &plugins, "policy");
    eventually("round-robin takes over", Duration::from_secs(120), || async {
        (active_scheduler(&dispatcher).await.as_deref() == Some("round-robin")).then_some(())
    })
    .await;
    // The background session finished utterances before the swap and goes
    // on finishing them after it.
    let at_effect = done.load(Ordering::SeqCst);
    wait_until(
        "the background session goes on",
        Duration::from_secs(60),
        || (done.load(Ordering::SeqCst) > at_effect).then_some(()),
        String::new,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let background_jobs = tokio::time::timeout(Duration::from_secs(60), background).await.expect("the background session ends").unwrap();
    assert!(!background_jobs.is_empty());

    // Alone again, the watched session now takes turns over both nodes.
    let mut after = Vec::new();
    for i in 4..10u64 {
        let job = translate(&mut ws, &sid, i, &clips[i as usize % clips.len()]).await;
        after.push(node_of(&nodes, &job).await);
    }
    assert!(after.windows(2).all(|w| w[0] != w[1]), "round-robin alternates between the nodes: {after:?}");
    println!(
        "sticky-session: {before:?}; round-robin: {after:?}; the background session sent {} utterances across the swap, none failed",
        background_jobs.len()
    );
    let metrics = wire::http(dispatcher.addr, "GET", "/metrics", None).await.1;
    assert!(metrics.contains("tolk_plugin_calls_total{plugin=\"round-robin\""), "per-plugin metrics");
    assert_eq!(dispatcher.metric("tolk_policy_fallbacks_total").await, 0.0, "every decision was the policy's own");
}
