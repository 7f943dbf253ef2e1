//! Cluster mode end to end (extension 13): three real dispatchers over a
//! real `nats-server` with JetStream, nodes split across them, SDK apps.
//!
//! - One fleet: an app on dispatcher A is served by a node connected only
//!   to B (jobs and results over NATS), in order, once each.
//! - A dispatcher dies (SIGKILL) mid-stream: its app reconnects to the next
//!   URL and **resumes** the same session there (rebuilt from JetStream);
//!   its node reconnects through a TCP front under the same identity;
//!   nothing is lost and nothing is delivered twice.
//! - NATS dies: each dispatcher keeps serving its own sessions and nodes,
//!   `/readyz` says degraded; NATS comes back and the cluster heals by
//!   itself (forwarding works again).
//!
//! Every outcome is counted: each app sees exactly one result per
//! utterance, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::time::Duration;

use tolk_e2e::nats::{NatsServer, TcpFront};
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, eventually, scratch, wire};
use tolk_sdk::{ConnectionState, Event};

const LIMIT: Duration = Duration::from_secs(60);
const SECRET: &str = "e2e-cluster-secret-0123456789";

fn cluster_config(nats: &NatsServer, name: &str) -> String {
    format!(
        "[cluster]\nnats_url = \"{}\"\nname = \"{name}\"\nsecret = \"{SECRET}\"\nannounce_ms = 100\npeer_timeout_ms = 1500\n\n[core]\nadmission_wait_ms = 30000\n",
        nats.url()
    )
}

fn results(app: &App) -> usize {
    app.results().len()
}

async fn readyz(d: &DispatcherProcess) -> String {
    wire::http(d.addr, "GET", "/readyz", None).await.1
}

/// Waits until dispatcher `d` lists node `id` as held by dispatcher `by`.
async fn sees_node(d: &DispatcherProcess, id: &str, by: Option<&str>) {
    let want = by.map(str::to_owned);
    eventually(&format!("{} lists node {id} on {by:?}", d.addr), LIMIT, || {
        let want = want.clone();
        async move {
            let n = d.admin_node(id).await?;
            let on = n["dispatcher"].as_str().map(str::to_owned);
            (n["connected"] == true && on == want).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatchers_one_fleet_survive_a_dispatcher_crash_and_a_nats_restart() {
    let dir = scratch("cluster");
    let clips = speech::clips(&dir.join("speech"), SENTENCES);
    let mut nats = NatsServer::start(&dir.join("nats")).await;
    let mut a = DispatcherProcess::start(&dir.join("a"), &cluster_config(&nats, "a"), &[]).await;
    let b = DispatcherProcess::start(&dir.join("b"), &cluster_config(&nats, "b"), &[]).await;
    let c = DispatcherProcess::start(&dir.join("c"), &cluster_config(&nats, "c"), &[]).await;
    for d in [&a, &b, &c] {
        eventually("every dispatcher reaches NATS", LIMIT, || async { (readyz(d).await == "ready").then_some(()) }).await;
    }

    // Node 1 on B only; node 2 on A, through a front (a load balancer).
    let setup = NodeSetup::new(Engines::Quick);
    let mut node1 = NodeProcess::start(&dir, "node1", &b.ws_base(), &setup, false);
    let id1 = node1.registered(1).await;
    let front = TcpFront::start(a.addr).await;
    let mut node2 = NodeProcess::start(&dir, "node2", &front.ws_base(), &setup, false);
    let id2 = node2.registered(1).await;
    sees_node(&a, &id1, Some("b")).await;
    sees_node(&c, &id2, Some("a")).await;

    // --- One fleet: C has no node; its app is served by A's and B's.
    let mut app_c = App::start(app::config(&c.session_url()));
    app_c.push_audio(&speech::stream(&clips[..3], 1000));
    app_c.until_count("C's app: three results from other dispatchers' nodes", LIMIT, 3, |e| matches!(e, Event::Result(_))).await;
    let forwarded = c.metric("tolk_cluster_jobs_forwarded_total").await;
    let proxied = a.metric("tolk_cluster_jobs_proxied_total").await + b.metric("tolk_cluster_jobs_proxied_total").await;
    assert!(forwarded >= 3.0 && proxied >= 3.0, "forwarded {forwarded}, proxied {proxied}");
    println!("one fleet: C forwarded {forwarded} jobs, A and B ran {proxied} for it");

    // --- A dies mid-stream. Its app falls over to B and resumes there;
    // node 2 comes back through the front on C under the same identity.
    let mut config = app::config(&a.session_url());
    config.fallback_urls = vec![b.session_url(), c.session_url()];
    let mut app_a = App::start(config);
    app_a.push_audio(&speech::stream(&clips[..6], 1000));
    app_a.until("A's app: a first result", LIMIT, |e| matches!(e, Event::Result(_))).await;
    front.point_at(c.addr);
    a.kill();
    app_a.until("A's app notices", LIMIT, |e| matches!(e, Event::State(ConnectionState::Disconnected { .. }))).await;
    app_a.until("A's app resumes elsewhere", LIMIT, |e| matches!(e, Event::State(ConnectionState::Connected { resumed: true, .. }))).await;
    let again = node2.registered(2).await;
    assert_eq!(again, id2, "node 2 kept its identity on another dispatcher");
    sees_node(&b, &id2, Some("c")).await;
    app_a.until_count("A's app: six results", LIMIT, 6, |e| matches!(e, Event::Result(_))).await;
    let restored = b.metric("tolk_cluster_sessions_restored_total").await;
    assert_eq!(restored, 1.0, "B rebuilt A's session from the cluster's store");
    let connections = app_a.connections();
    assert_eq!(connections.len(), 2, "{connections:?}");
    assert_eq!(connections[0].0, connections[1].0, "the same session, resumed: {connections:?}");
    assert!(connections[1].1, "{connections:?}");

    // --- NATS dies: each dispatcher serves its own; readyz says degraded.
    nats.kill();
    for d in [&b, &c] {
        eventually("readyz says degraded", LIMIT, || async { readyz(d).await.starts_with("degraded").then_some(()) }).await;
    }
    // B's app (session on B, node 1 on B) is served without NATS.
    let mut app_b = App::start(app::config(&b.session_url()));
    app_b.push_audio(&speech::stream(&clips[..2], 1000));
    app_b.until_count("B's app is served without NATS", LIMIT, 2, |e| matches!(e, Event::Result(_))).await;
    // NATS returns: the cluster heals by itself.
    nats.restart().await;
    for d in [&b, &c] {
        eventually("readyz says ready again", LIMIT, || async { (readyz(d).await == "ready").then_some(()) }).await;
    }
    sees_node(&b, &id2, Some("c")).await;
    sees_node(&c, &id1, Some("b")).await;
    // With node 2 gone, C's app can only be served by node 1 on B.
    node2.kill();
    let before = c.metric("tolk_cluster_jobs_forwarded_total").await;
    app_c.push_audio(&speech::stream(&clips[3..5], 1000));
    app_c.until_count("C's app: served through B after NATS came back", LIMIT, 5, |e| matches!(e, Event::Result(_))).await;
    let after = c.metric("tolk_cluster_jobs_forwarded_total").await;
    assert!(after >= before + 2.0, "C forwarded {} jobs after the restart", after - before);

    for app in [&mut app_a, &mut app_b, &mut app_c] {
        app.close(Duration::from_secs(90)).await;
        app.assert_one_result_each_in_order();
        assert!(app.failures().is_empty(), "{}", app.summary());
    }
    assert_eq!((results(&app_a), results(&app_b), results(&app_c)), (6, 2, 5));
    assert!(node1.jobs_done().len() >= 2, "node 1 served through the cluster");
}
