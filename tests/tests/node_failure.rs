//! A node process is killed (SIGKILL) while it holds jobs: the dispatcher
//! moves them to the other node, and the client sees exactly one outcome per
//! utterance, in order — none lost, none duplicated. A raw WebSocket client
//! counts every frame the server sends (the SDK would hide a duplicate).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{DispatcherProcess, NodeProcess, NodeSetup, eventually, scratch, wire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_loses_and_duplicates_nothing() {
    let dir = scratch("node-kill");
    let clips = speech::clips(&dir.join("speech"), SENTENCES);
    let dispatcher = DispatcherProcess::start(&dir, "[core]\nadmission_wait_ms = 60000\n", &[]).await;
    // One decoder each: a node's four jobs wait for it in turn, so the victim
    // still holds most of its jobs when it dies.
    let setup = NodeSetup::new(Engines::Quick);
    let mut victim = NodeProcess::start(&dir, "victim", &dispatcher.ws_base(), &setup, false);
    let victim_id = victim.registered(1).await;
    let mut survivor = NodeProcess::start(&dir, "survivor", &dispatcher.ws_base(), &setup, false);
    let survivor_id = survivor.registered(1).await;

    let (mut phone, ack) = wire::open_session(dispatcher.addr, &wire::session_init()).await;
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    for (i, clip) in clips.iter().enumerate() {
        wire::send(&mut phone, &wire::utterance(&sid, i as u64, clip)).await;
    }

    // The moment the victim runs jobs, kill it.
    let running = eventually("the victim runs jobs", Duration::from_secs(30), || async {
        let running = dispatcher.admin_node(&victim_id).await.map_or(0, |n| n["running_jobs"].as_u64().unwrap_or(0));
        (running > 0).then_some(running)
    })
    .await;
    victim.kill();
    let done_by_victim: HashSet<String> = victim.jobs_done().into_iter().collect();
    println!("killed the victim while the dispatcher counted {running} running jobs on it; it had finished {}", done_by_victim.len());

    // Every outcome, in the order the server sent them.
    let mut outcomes = Vec::new();
    while outcomes.len() < clips.len() {
        let frame = wire::recv(&mut phone).await;
        assert!(wire::outcome_index(&frame).is_some(), "only outcomes are expected: {frame}");
        outcomes.push(frame);
    }
    // Nothing more may follow: once the survivor is idle, a heartbeat and the
    // close ack come back with no outcome in between.
    eventually("the survivor is idle", Duration::from_secs(60), || async {
        dispatcher.admin_node(&survivor_id).await.is_some_and(|n| n["running_jobs"] == 0).then_some(())
    })
    .await;
    wire::send(&mut phone, &json!({"type":"session_close","session_id":sid,"reason":"user_finished"})).await;
    let last = wire::recv(&mut phone).await;
    assert_eq!(last["type"], "session_close_ack", "no outcome after the last one: {last}");

    let indexes: Vec<u64> = outcomes.iter().filter_map(wire::outcome_index).collect();
    let mut per_index: BTreeMap<u64, usize> = BTreeMap::new();
    for i in &indexes {
        *per_index.entry(*i).or_default() += 1;
    }
    assert!(per_index.values().all(|&n| n == 1), "an utterance got two outcomes: {per_index:?}");
    assert_eq!(indexes, (0..clips.len() as u64).collect::<Vec<_>>(), "one outcome per utterance, in order");
    // The survivor could take every moved job, so each outcome is a result
    // (a clear error would also be an outcome, but is not expected here).
    let done_by_survivor: HashSet<String> = survivor.jobs_done().into_iter().collect();
    for o in &outcomes {
        assert_eq!(o["type"], "translation_result", "{o}");
        assert!(!o["text_asr"].as_str().unwrap().is_empty(), "{o}");
        let job = o["job_id"].as_str().unwrap();
        assert!(done_by_victim.contains(job) || done_by_survivor.contains(job), "job {job} was finished by a node");
    }
    // The kill did hit running jobs, and they were moved.
    let moved = dispatcher.metric("tolk_job_retries_total").await;
    assert!(moved >= 1.0, "no job was moved: {moved}");
    assert!(done_by_victim.len() < clips.len() / 2, "the victim had unfinished work when it died");
    let node = dispatcher.admin_node(&victim_id).await.expect("the dead node is still listed");
    assert_eq!(node["connected"], false, "{node}");
    println!("{moved} job(s) moved; the survivor finished {} jobs", done_by_survivor.len());
}
