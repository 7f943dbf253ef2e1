//! The decision core, driven by plain events (no sockets): one test per
//! behaviour of the protocol and its extensions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use harness::*;
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::core::{AdminCommand, Endpoint};
use tolk_protocol::common::{ErrorCode, Features};
use tolk_protocol::node::{ModelUpdate, NodeCommand, PairingCodeRequest};
use tolk_protocol::session::{ClientHeartbeat, SessionClose};
use tolk_protocol::{ClientToServer, JobErrorCode, NodeToServer, ServerToClient, ServerToNode};

fn cfg() -> CoreConfig {
    CoreConfig::default()
}

fn indexes(msgs: &[ServerToClient]) -> Vec<u64> {
    msgs.iter().filter_map(outcome_index).collect()
}

#[test]
fn session_init_gives_unguessable_ids_and_a_resume_token() {
    let mut sim = Sim::new(cfg());
    let (_, id, token) = sim.open_session("en", "es");
    assert!(id.starts_with("s-") && id.len() == 34 && id[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(token.len(), 64, "256-bit resume token");
    let (_, id2, token2) = sim.open_session("en", "es");
    assert_ne!(id, id2);
    assert_ne!(token, token2);
}

#[test]
fn utterance_runs_on_a_node_and_the_result_comes_back_with_audio_untouched() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    let mut u = utterance(&sid, 0, "en", "es");
    u.audio = "AAECAwQFBgcICQoLDA0ODxAREhM=".into();
    sim.client(client, ClientToServer::Utterance(u.clone()));
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].audio, u.audio, "audio reaches the node byte for byte");
    assert_eq!((jobs[0].session_id.as_str(), jobs[0].utterance_index), (sid.as_str(), 0));
    assert!(jobs[0].pipeline.use_asr && jobs[0].pipeline.use_nmt && jobs[0].pipeline.use_tts);
    assert!(jobs[0].deadline_ms.is_some());
    sim.succeed(node, &node_id, &jobs[0]);
    let out = sim.take_client(client);
    let [ServerToClient::TranslationResult(r)] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!((r.utterance_index, r.text_translated.as_str(), r.job_id.as_str()), (0, "nmt 0", jobs[0].job_id.as_str()));
}

#[test]
fn results_leave_in_index_order_and_skipped_indexes_do_not_block() {
    let mut sim = Sim::new(CoreConfig { max_jobs_per_node: 8, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    for i in [0, 1, 2, 5] {
        sim.utterance(client, &sid, i);
    }
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 4);
    for i in [3, 2, 1] {
        sim.succeed(node, &node_id, &jobs[i]);
    }
    assert!(sim.take_client(client).is_empty(), "held behind index 0");
    sim.fail(node, &node_id, &jobs[0], JobErrorCode::InvalidAudio);
    let out = sim.take_client(client);
    assert_eq!(indexes(&out), vec![0, 1, 2, 5]);
    let err = error_of(&out[0]).unwrap();
    assert_eq!(err.code, ErrorCode::InvalidAudio, "bad audio is not retried");
    assert_eq!(err.details.as_ref().unwrap()["field"], "audio");
}

#[test]
fn duplicates_are_processed_once_and_late_indexes_refused() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 3);
    sim.utterance(client, &sid, 3);
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1, "a re-sent utterance is not processed twice");
    sim.succeed(node, &node_id, &jobs[0]);
    sim.utterance(client, &sid, 3);
    assert!(sim.jobs(node).is_empty());
    let out = sim.take_client(client);
    assert_eq!(indexes(&out), vec![3], "exactly one outcome");
    sim.utterance(client, &sid, 2);
    let out = sim.take_client(client);
    let err = error_of(&out[0]).unwrap();
    assert_eq!((err.code.clone(), err.details.as_ref().unwrap()["field"].as_str()), (ErrorCode::InvalidMessage, Some("utterance_index")));
    assert_eq!(err.utterance_index(), None, "a refusal is not an outcome");
    assert_eq!(err.details.as_ref().unwrap()["refused_index"], 2, "the client can tell which one was refused");
}

#[test]
fn heartbeat_and_close() {
    let mut sim = Sim::new(cfg());
    let (client, sid, _) = sim.open_session("en", "es");
    sim.client(
        client,
        ClientToServer::ClientHeartbeat(ClientHeartbeat { session_id: sid.clone(), timestamp: 5, last_utterance_index: None }),
    );
    assert!(matches!(sim.take_client(client).as_slice(), [ServerToClient::ServerHeartbeat(h)] if h.timestamp == sim.now));
    sim.client(client, ClientToServer::SessionClose(SessionClose { session_id: sid.clone(), reason: Some("user_finished".into()) }));
    assert!(matches!(sim.take_client(client).as_slice(), [ServerToClient::SessionCloseAck(a)] if a.session_id == sid));
    sim.utterance(client, &sid, 0);
    let out = sim.take_client(client);
    assert_eq!(error_of(&out[0]).unwrap().code, ErrorCode::InvalidSession);
    assert_eq!(sim.core.sizes().sessions, 0);
}

#[test]
fn a_session_is_usable_only_from_its_own_connection() {
    let mut sim = Sim::new(cfg());
    let (_, sid, _) = sim.open_session("en", "es");
    let (other, _, _) = sim.open_session("en", "es");
    sim.utterance(other, &sid, 0);
    let out = sim.take_client(other);
    assert_eq!(error_of(&out[0]).unwrap().code, ErrorCode::InvalidSession);
    let stranger = sim.open(Endpoint::Session);
    sim.utterance(stranger, &sid, 0);
    assert_eq!(error_of(&sim.take_client(stranger)[0]).unwrap().code, ErrorCode::InvalidSession);
}

#[test]
fn bad_frames_get_an_error_naming_the_field_and_the_connection_stays() {
    let mut sim = Sim::new(cfg());
    let (client, sid, _) = sim.open_session("en", "es");
    sim.send_text(client, r#"{"type":"utterance","session_id":"x"}"#);
    sim.send_text(client, "not json");
    sim.send_text(client, r#"{"type":"nope"}"#);
    let out = sim.take_client(client);
    let fields: Vec<Option<String>> =
        out.iter().map(|m| error_of(m).unwrap().details.as_ref().and_then(|d| d["field"].as_str().map(Into::into))).collect();
    assert_eq!(fields, vec![Some("utterance_index".into()), None, Some("type".into())]);
    assert!(!sim.closed.contains(&client));
    sim.client(client, ClientToServer::ClientHeartbeat(ClientHeartbeat { session_id: sid, timestamp: 1, last_utterance_index: None }));
    assert!(matches!(sim.take_client(client).as_slice(), [ServerToClient::ServerHeartbeat(_)]));
}

#[test]
fn unaccepted_sample_rate_is_an_ordered_outcome() {
    let mut sim = Sim::new(CoreConfig { sample_rates: vec![16000], ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let mut u = utterance(&sid, 1, "en", "es");
    u.sample_rate = 8000;
    sim.client(client, ClientToServer::Utterance(u));
    assert!(sim.take_client(client).is_empty(), "the error waits behind index 0");
    let job = sim.jobs(node).remove(0);
    sim.succeed(node, &node_id, &job);
    let out = sim.take_client(client);
    assert_eq!(indexes(&out), vec![0, 1]);
    assert_eq!(error_of(&out[1]).unwrap().details.as_ref().unwrap()["field"], "sample_rate");
}

#[test]
fn resume_delivers_what_was_missed_in_order() {
    let mut sim = Sim::new(CoreConfig { max_jobs_per_node: 8, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, token) = sim.open_session("en", "es");
    for i in 0..4 {
        sim.utterance(client, &sid, i);
    }
    let jobs = sim.jobs(node);
    sim.succeed(node, &node_id, &jobs[0]);
    sim.succeed(node, &node_id, &jobs[1]);
    // Two outcomes were written; say only the first arrived before the socket died.
    assert_eq!(indexes(&sim.take_client(client)), vec![0, 1]);
    sim.disconnect(client);
    sim.succeed(node, &node_id, &jobs[3]);
    sim.succeed(node, &node_id, &jobs[2]);
    sim.advance(10_000);
    let again = sim.open(Endpoint::Session);
    sim.client(again, resume(&sid, &token, Some(0)));
    let out = sim.take_client(again);
    assert!(matches!(&out[0], ServerToClient::SessionInitAck(a) if a.session_id == sid));
    assert_eq!(indexes(&out), vec![1, 2, 3], "everything after last_utterance_index, in order");
    // The resumed connection owns the session.
    sim.utterance(again, &sid, 4);
    assert_eq!(sim.jobs(node).len(), 1);
}

#[test]
fn resume_with_a_wrong_token_or_after_the_grace_period_is_refused() {
    let mut sim = Sim::new(cfg());
    let (client, sid, token) = sim.open_session("en", "es");
    let c2 = sim.open(Endpoint::Session);
    sim.client(c2, resume(&sid, &"0".repeat(64), None));
    assert_eq!(error_of(&sim.take_client(c2)[0]).unwrap().code, ErrorCode::InvalidSession);
    sim.disconnect(client);
    sim.advance(cfg().resume_grace_ms + 1_000);
    let c3 = sim.open(Endpoint::Session);
    sim.client(c3, resume(&sid, &token, None));
    assert_eq!(error_of(&sim.take_client(c3)[0]).unwrap().code, ErrorCode::InvalidSession);
    assert_eq!(sim.core.sizes().sessions, 0);
}

#[test]
fn resume_takes_over_from_a_still_open_connection() {
    let mut sim = Sim::new(cfg());
    let (old, sid, token) = sim.open_session("en", "es");
    let new = sim.open(Endpoint::Session);
    sim.client(new, resume(&sid, &token, None));
    assert!(sim.closed.contains(&old));
    assert!(matches!(sim.take_client(new)[0], ServerToClient::SessionInitAck(_)));
}

#[test]
fn heartbeat_confirmation_drops_retained_outcomes() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, token) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let job = sim.jobs(node).remove(0);
    sim.succeed(node, &node_id, &job);
    sim.take_client(client);
    assert_eq!(sim.core.sizes().max_session_buffer, 1);
    sim.client(
        client,
        ClientToServer::ClientHeartbeat(ClientHeartbeat { session_id: sid.clone(), timestamp: 1, last_utterance_index: Some(0) }),
    );
    assert_eq!(sim.core.sizes().max_session_buffer, 0);
    sim.disconnect(client);
    let again = sim.open(Endpoint::Session);
    sim.client(again, resume(&sid, &token, None));
    assert_eq!(indexes(&sim.take_client(again)), Vec::<u64>::new(), "confirmed outcomes are not re-sent");
}

#[test]
fn idle_sessions_expire_but_busy_ones_do_not() {
    let config = CoreConfig { session_idle_ms: 10_000, admission_wait_ms: 60_000, ..cfg() };
    let mut sim = Sim::new(config);
    let (idle, _, _) = sim.open_session("en", "es");
    let (busy, sid, _) = sim.open_session("en", "es");
    sim.utterance(busy, &sid, 0); // no node: waits
    sim.advance(20_000);
    assert!(sim.closed.contains(&idle));
    assert_eq!(error_of(&sim.take_client(idle)[0]).unwrap().code, ErrorCode::InvalidSession);
    assert!(!sim.closed.contains(&busy));
}

#[test]
fn connections_that_never_handshake_are_closed() {
    let mut sim = Sim::new(cfg());
    let c = sim.open(Endpoint::Session);
    let n = sim.open(Endpoint::Node);
    sim.advance(cfg().handshake_timeout_ms + 1);
    assert!(sim.closed.contains(&c) && sim.closed.contains(&n));
    assert_eq!(sim.core.sizes().conns, 0);
}

#[test]
fn node_identity_needs_its_token() {
    let mut sim = Sim::new(cfg());
    let (conn, id, token) = sim.register_node(&[("en", "es")], true);
    assert!(id.starts_with("n-") && token.len() == 64);
    // Someone else claims the id without (or with a wrong) token.
    for bad in [None, Some("f".repeat(64))] {
        let thief = sim.open(Endpoint::Node);
        sim.node(thief, register(Some(&id), bad.as_deref(), &[("en", "es")], true));
        let out = sim.take_node(thief);
        assert!(matches!(&out[0], ServerToNode::Error(e) if e.code == ErrorCode::Unauthorized), "{out:?}");
        assert!(sim.closed.contains(&thief));
    }
    assert!(!sim.closed.contains(&conn), "the real node keeps its connection");
    // The real node reconnects with its token: same id, old connection replaced.
    let again = sim.open(Endpoint::Node);
    sim.node(again, register(Some(&id), Some(&token), &[("en", "es")], true));
    assert!(matches!(&sim.take_node(again)[0], ServerToNode::NodeRegisterAck(a) if a.node_id == id));
    assert!(sim.closed.contains(&conn));
}

#[test]
fn operator_registration_secret() {
    let mut sim = Sim::new(CoreConfig { node_auth_token: Some("s3cret".into()), ..cfg() });
    let n = sim.open(Endpoint::Node);
    sim.node(n, register(None, None, &[("en", "es")], true));
    assert!(matches!(&sim.take_node(n)[0], ServerToNode::Error(e) if e.code == ErrorCode::Unauthorized));
    let n = sim.open(Endpoint::Node);
    let NodeToServer::NodeRegister(mut reg) = register(None, None, &[("en", "es")], true) else { unreachable!() };
    reg.auth_token = Some("s3cret".into());
    sim.node(n, NodeToServer::NodeRegister(reg));
    assert!(matches!(&sim.take_node(n)[0], ServerToNode::NodeRegisterAck(_)));
}

#[test]
fn node_messages_before_registration_or_for_another_node_are_refused() {
    let mut sim = Sim::new(cfg());
    let n = sim.open(Endpoint::Node);
    sim.heartbeat(n, "n-1", None);
    assert!(matches!(&sim.take_node(n)[0], ServerToNode::Error(e) if e.code == ErrorCode::Unauthorized));
    let (conn, _, _) = sim.register_node(&[("en", "es")], true);
    sim.heartbeat(conn, "n-someone-else", None);
    assert!(matches!(&sim.take_node(conn)[0], ServerToNode::Error(e) if e.details.as_ref().unwrap()["field"] == "node_id"));
}

#[test]
fn heartbeat_models_are_updates_matched_by_model_id() {
    let mut sim = Sim::new(CoreConfig { admission_wait_ms: 1_000, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let nmt = models(&[("en", "es")])[1].model_id.clone();
    // Extension 7: `{"model_id":…,"enabled":false}` alone disables that model.
    sim.heartbeat_updates(node, &node_id, Some(vec![ModelUpdate::disable(nmt.clone())]));
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert!(sim.jobs(node).is_empty(), "the nmt stage is off: nothing to run it on");
    // A heartbeat without models leaves the list unchanged.
    sim.heartbeat(node, &node_id, None);
    assert!(sim.jobs(node).is_empty());
    let enable = ModelUpdate { enabled: Some(true), ..ModelUpdate::disable(nmt) };
    sim.heartbeat_updates(node, &node_id, Some(vec![enable]));
    assert_eq!(sim.jobs(node).len(), 1, "re-enabled: the queued job runs");
    // A new complete entry adds a model: now en → fr is served too.
    let fr = models(&[("en", "fr")]).into_iter().map(ModelUpdate::from).collect();
    sim.heartbeat_updates(node, &node_id, Some(fr));
    sim.client(client, ClientToServer::Utterance(utterance(&sid, 1, "en", "fr")));
    assert_eq!(sim.jobs(node).len(), 1, "the added models serve en → fr; the others stayed");
}

#[test]
fn jobs_go_only_to_nodes_with_every_stage() {
    let mut sim = Sim::new(CoreConfig { admission_wait_ms: 1_000, ..cfg() });
    let (fr, _, _) = sim.register_node(&[("en", "fr")], true);
    let (es, es_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert!(sim.jobs(fr).is_empty());
    let job = sim.jobs(es).remove(0);
    sim.succeed(es, &es_id, &job);
    sim.client(client, ClientToServer::Utterance(utterance(&sid, 1, "en", "de")));
    sim.advance(2_000);
    let out = sim.take_client(client);
    let err = out.iter().find_map(error_of).unwrap();
    assert_eq!((err.code.clone(), err.utterance_index()), (ErrorCode::NodeUnavailable, Some(1)));
    assert!(err.message.contains("en → de"), "{}", err.message);
}

#[test]
fn dead_nodes_lose_their_jobs_to_others() {
    let mut sim = Sim::new(cfg());
    let (a, a_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let job = sim.jobs(a).remove(0);
    let (b, b_id, _) = sim.register_node(&[("en", "es")], true);
    // b heartbeats, a falls silent.
    for _ in 0..4 {
        sim.advance(5_000);
        sim.heartbeat(b, &b_id, None);
    }
    assert!(sim.closed.contains(&a), "a missed its heartbeats");
    let moved = sim.jobs(b);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].job_id, job.job_id);
    // a's late answer is refused.
    let _ = a_id;
    sim.succeed(b, &b_id, &moved[0]);
    assert_eq!(indexes(&sim.take_client(client)), vec![0]);
}

#[test]
fn retries_never_reuse_a_failed_node_and_give_up_after_max_attempts() {
    let mut sim = Sim::new(CoreConfig { max_attempts: 2, admission_wait_ms: 1_000, ..cfg() });
    let nodes: Vec<_> = (0..3).map(|_| sim.register_node(&[("en", "es")], true)).collect();
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (conn, id, job) = nodes.iter().find_map(|(c, id, _)| sim.jobs(*c).pop().map(|j| (*c, id.clone(), j))).unwrap();
        assert!(!seen.contains(&id), "job went back to {id}");
        seen.push(id.clone());
        sim.fail(conn, &id, &job, JobErrorCode::InferenceBackendError);
    }
    let out = sim.take_client(client);
    let err = error_of(&out[0]).unwrap();
    assert_eq!((err.code.clone(), err.utterance_index()), (ErrorCode::NodeUnavailable, Some(0)));
    assert!(nodes.iter().all(|(c, _, _)| sim.jobs(*c).is_empty()), "no third attempt");
}

#[test]
fn a_job_past_its_deadline_moves() {
    let mut sim = Sim::new(cfg());
    let (a, a_id, _) = sim.register_node(&[("en", "es")], true);
    let (b, b_id, _) = sim.register_node(&[("en", "es")], true);
    let nodes = [(a, a_id.clone()), (b, b_id.clone())];
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let (slow, slow_id, job) = sim.holder(&nodes).unwrap();
    let deadline = job.deadline_ms.unwrap();
    for _ in 0..(deadline / 4_000 + 1) {
        sim.advance(4_000);
        sim.heartbeat(a, &a_id, None);
        sim.heartbeat(b, &b_id, None);
    }
    let (other, other_id, moved) = sim.holder(&nodes).expect("moved after the deadline");
    assert_ne!(other, slow, "never back to the node that failed it");
    assert_eq!(moved.job_id, job.job_id);
    sim.succeed(slow, &slow_id, &job);
    assert!(
        matches!(&sim.take_node(slow)[0], ServerToNode::Error(e) if e.details.as_ref().unwrap()["field"] == "job_id"),
        "late answer refused"
    );
    sim.succeed(other, &other_id, &moved);
    assert_eq!(indexes(&sim.take_client(client)), vec![0]);
    assert_eq!(sim.core.stats().job_timeouts, 1);
    assert_eq!(sim.core.stats().rejected_results, 1);
}

#[test]
fn results_from_a_node_that_does_not_hold_the_job_are_refused_and_counted() {
    let mut sim = Sim::new(cfg());
    let (a, a_id, _) = sim.register_node(&[("en", "es")], true);
    let (b, b_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let (holder, holder_id, job) = sim.holder(&[(a, a_id.clone()), (b, b_id.clone())]).unwrap();
    let (thief, thief_id) = if holder == a { (b, b_id) } else { (a, a_id) };
    sim.succeed(thief, &thief_id, &job);
    assert!(matches!(&sim.take_node(thief)[0], ServerToNode::Error(_)));
    assert!(sim.take_client(client).is_empty());
    assert_eq!(sim.core.stats().rejected_results, 1);
    sim.succeed(holder, &holder_id, &job);
    assert_eq!(indexes(&sim.take_client(client)), vec![0]);
}

#[test]
fn capacity_is_capped_the_excess_refused_at_once_and_the_wait_bounded() {
    let mut sim = Sim::new(CoreConfig { max_jobs_per_node: 1, admission_wait_ms: 3_000, queue_min: 1, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    for i in 0..3 {
        sim.utterance(client, &sid, i);
    }
    let first = sim.jobs(node);
    assert_eq!(first.len(), 1, "one at a time");
    // 1 slot + a queue of 1: the session's share is 2; the third is refused
    // at once (extension 10), not held until it times out.
    let out = sim.take_client(client);
    let refusal = out.iter().find_map(error_of).unwrap();
    assert_eq!(refusal.code, ErrorCode::RateLimited);
    let d = refusal.details.as_ref().unwrap();
    assert_eq!((d["refused_index"].as_u64(), d["field"].as_str()), (Some(2), Some("utterance_index")));
    assert!(d["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{d}");
    assert_eq!(refusal.utterance_index(), None, "a refusal, not an outcome: the index may be sent again");
    sim.advance(1_000);
    sim.succeed(node, &node_id, &first[0]);
    let second = sim.jobs(node);
    assert_eq!(second.len(), 1, "a freed slot takes the queued job");
    assert_eq!(second[0].utterance_index, 1);
    // Re-sent after the refusal, index 2 is accepted now; it waits 3.5 s > 3 s.
    sim.utterance(client, &sid, 2);
    sim.advance(3_500);
    let out = sim.take_client(client);
    assert_eq!(indexes(&out), vec![0]);
    sim.succeed(node, &node_id, &second[0]);
    let out = sim.take_client(client);
    assert_eq!(indexes(&out), vec![1, 2]);
    let err = error_of(&out[1]).unwrap();
    assert_eq!(err.code, ErrorCode::NodeUnavailable);
    assert_eq!(err.details.as_ref().unwrap()["reasons"], serde_json::json!({ "busy": 1 }), "why: the one node was busy");
}

#[test]
fn sessions_stay_on_the_node_they_used_last() {
    let mut sim = Sim::new(cfg());
    let a = sim.register_node(&[("en", "es")], true);
    let b = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    let mut used = Vec::new();
    for i in 0..4 {
        sim.utterance(client, &sid, i);
        for (conn, id, _) in [&a, &b] {
            for job in sim.jobs(*conn) {
                used.push(id.clone());
                sim.succeed(*conn, id, &job);
            }
        }
    }
    assert_eq!(used.len(), 4);
    assert!(used.iter().all(|u| *u == used[0]), "{used:?}");
}

fn pairing_code(sim: &mut Sim, conn: u64, node_id: &str) -> String {
    sim.node(conn, NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id: node_id.into() }));
    match sim.take_node(conn).pop() {
        Some(ServerToNode::PairingCode(p)) => {
            assert_eq!(p.expires_at, sim.now + cfg().pairing_code_ttl_ms);
            p.code
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pairing_binds_a_session_to_one_node() {
    let mut sim = Sim::new(cfg());
    let (public, _, _) = sim.register_node(&[("en", "es")], true);
    let (private, private_id, _) = sim.register_node(&[("en", "es")], false);
    let code = pairing_code(&mut sim, private, &private_id);
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let c = sim.open(Endpoint::Session);
    sim.client(c, init("en", "es", Some(&code)));
    let ServerToClient::SessionInitAck(ack) = sim.take_client(c).remove(0) else { panic!() };
    assert_eq!(ack.assigned_node_id.as_deref(), Some(private_id.as_str()));
    for i in 0..3 {
        sim.utterance(c, &ack.session_id, i);
    }
    assert_eq!(sim.jobs(private).len(), 3, "paired jobs go only to the paired node");
    assert!(sim.jobs(public).is_empty());
    // A public session never lands on the private node.
    let (pc, psid, _) = sim.open_session("en", "es");
    sim.utterance(pc, &psid, 0);
    assert!(sim.jobs(private).is_empty());
    assert_eq!(sim.jobs(public).len(), 1);
}

#[test]
fn a_new_code_replaces_the_old_and_codes_expire() {
    let mut sim = Sim::new(cfg());
    let (n, id, _) = sim.register_node(&[("en", "es")], false);
    let old = pairing_code(&mut sim, n, &id);
    let new = pairing_code(&mut sim, n, &id);
    let c = sim.open(Endpoint::Session);
    if old != new {
        sim.client(c, init("en", "es", Some(&old)));
        assert_eq!(error_of(&sim.take_client(c)[0]).unwrap().code, ErrorCode::InvalidPairingCode);
    }
    sim.advance(cfg().pairing_code_ttl_ms + 1);
    let c = sim.open(Endpoint::Session);
    sim.client(c, init("en", "es", Some(&new)));
    assert_eq!(error_of(&sim.take_client(c)[0]).unwrap().code, ErrorCode::InvalidPairingCode);
}

#[test]
fn pairing_guesses_are_rate_limited_per_address() {
    let mut sim = Sim::new(cfg());
    let (n, id, _) = sim.register_node(&[("en", "es")], false);
    let real = pairing_code(&mut sim, n, &id);
    let wrong = if real == "000000" { "000001" } else { "000000" };
    let attacker: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let c = sim.open_from(Endpoint::Session, attacker);
    for _ in 0..cfg().pairing_max_failures {
        sim.client(c, init("en", "es", Some(wrong)));
        assert_eq!(error_of(&sim.take_client(c)[0]).unwrap().code, ErrorCode::InvalidPairingCode);
    }
    // Even the right code is refused while limited...
    sim.client(c, init("en", "es", Some(&real)));
    assert_eq!(error_of(&sim.take_client(c)[0]).unwrap().code, ErrorCode::RateLimited);
    // ...but another address is not affected.
    let other = sim.open(Endpoint::Session);
    sim.client(other, init("en", "es", Some(&real)));
    assert!(matches!(sim.take_client(other)[0], ServerToClient::SessionInitAck(_)));
    // After the window the attacker may try again.
    sim.advance(cfg().pairing_window_ms + 1);
    let c = sim.open_from(Endpoint::Session, attacker);
    sim.client(c, init("en", "es", Some(&real)));
    assert!(matches!(sim.take_client(c)[0], ServerToClient::SessionInitAck(_)));
}

#[test]
fn an_offline_paired_node_gives_node_unavailable_per_utterance() {
    let mut sim = Sim::new(CoreConfig { admission_wait_ms: 2_000, ..cfg() });
    let (n, id, _) = sim.register_node(&[("en", "es")], true);
    sim.register_node(&[("en", "es")], true);
    let code = pairing_code(&mut sim, n, &id);
    let c = sim.open(Endpoint::Session);
    sim.client(c, init("en", "es", Some(&code)));
    let ServerToClient::SessionInitAck(ack) = sim.take_client(c).remove(0) else { panic!() };
    sim.disconnect(n);
    sim.utterance(c, &ack.session_id, 0);
    sim.utterance(c, &ack.session_id, 1);
    sim.advance(3_000);
    let out = sim.take_client(c);
    assert_eq!(indexes(&out), vec![0, 1]);
    for m in &out {
        let e = error_of(m).unwrap();
        assert_eq!(e.code, ErrorCode::NodeUnavailable);
        assert!(e.message.contains("paired"), "{}", e.message);
    }
}

#[test]
fn drain_stops_new_jobs_and_tells_the_node() {
    let mut sim = Sim::new(CoreConfig { admission_wait_ms: 1_000, ..cfg() });
    let (n, id, _) = sim.register_node(&[("en", "es")], true);
    sim.admin(AdminCommand::Drain { node_id: id.clone() }).unwrap();
    let out = sim.take_node(n);
    assert!(matches!(&out[0], ServerToNode::NodeControl(c) if c.command == NodeCommand::Drain));
    let (c, sid, _) = sim.open_session("en", "es");
    sim.utterance(c, &sid, 0);
    assert!(sim.jobs(n).is_empty());
    assert!(sim.core.list_nodes()[0].draining);
    assert!(sim.admin(AdminCommand::Shutdown { node_id: "n-nope".into() }).is_err());
    sim.admin(AdminCommand::ReloadConfig { node_id: id }).unwrap();
    assert!(matches!(&sim.take_node(n)[0], ServerToNode::NodeControl(c) if c.command == NodeCommand::ReloadConfig));
}

#[test]
fn features_nothing_provides_are_unsupported() {
    let mut sim = Sim::new(cfg());
    sim.register_node(&[("en", "es")], true);
    let c = sim.open(Endpoint::Session);
    let ClientToServer::SessionInit(mut i) = init("en", "es", None) else { unreachable!() };
    i.features = Some(Features { emotion_detection: true, ..Features::default() });
    sim.client(c, ClientToServer::SessionInit(i.clone()));
    let out = sim.take_client(c);
    assert_eq!(error_of(&out[0]).unwrap().code, ErrorCode::UnsupportedFeature);
    // Once the dispatcher supplies it (a detector plugin), the session opens.
    sim.core.set_supplied_features(Features { emotion_detection: true, ..Features::default() });
    sim.client(c, ClientToServer::SessionInit(i));
    assert!(matches!(sim.take_client(c)[0], ServerToClient::SessionInitAck(_)));
}

#[test]
fn unanswered_utterances_per_session_are_bounded() {
    let mut sim = Sim::new(CoreConfig { max_pending_per_session: 2, admission_wait_ms: 60_000, ..cfg() });
    let (c, sid, _) = sim.open_session("en", "es");
    for i in 0..3 {
        sim.utterance(c, &sid, i);
    }
    assert_eq!(sim.core.sizes().jobs, 2);
    let out = sim.take_client(c);
    let err = error_of(&out[0]).unwrap();
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert_eq!(err.utterance_index(), None, "refused, not accepted: no outcome will follow");
    assert_eq!(err.details.as_ref().unwrap()["refused_index"], 2);
    // A duplicate of a pending one is still just a duplicate.
    sim.utterance(c, &sid, 1);
    assert!(sim.take_client(c).is_empty());
    sim.advance(61_000);
    assert_eq!(indexes(&sim.take_client(c)), vec![0, 1]);
    // Room again: accepted.
    sim.utterance(c, &sid, 2);
    assert_eq!(sim.core.sizes().jobs, 1);
}

fn speech_rate_session(sim: &mut Sim) -> (u64, String) {
    sim.core.set_supplied_features(Features { speech_rate_detection: true, ..Features::default() });
    let c = sim.open(Endpoint::Session);
    let ClientToServer::SessionInit(mut i) = init("en", "es", None) else { unreachable!() };
    i.features = Some(Features { speech_rate_detection: true, ..Features::default() });
    sim.client(c, ClientToServer::SessionInit(i));
    let ServerToClient::SessionInitAck(ack) = sim.take_client(c).remove(0) else { panic!() };
    (c, ack.session_id)
}

fn rate_of(msg: &ServerToClient) -> Option<f64> {
    match msg {
        ServerToClient::TranslationResult(r) => r.extra.as_ref().and_then(|e| e.speech_rate),
        _ => panic!("{msg:?}"),
    }
}

#[test]
fn dispatcher_detection_fills_what_the_node_lacks_in_either_order() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (c, sid) = speech_rate_session(&mut sim);
    // The node answers first: the result waits for the detector.
    sim.utterance(c, &sid, 0);
    let job = sim.jobs(node).remove(0);
    assert_eq!(sim.detects.len(), 1, "the detector is asked at once, in parallel with the node");
    sim.succeed(node, &node_id, &job);
    assert!(sim.take_client(c).is_empty());
    let (job_id, wanted) = sim.detects.remove(0);
    assert!(wanted.speech_rate_detection && !wanted.emotion_detection);
    sim.detected(&job_id, tolk_protocol::common::Extra { speech_rate: Some(4.5), ..Default::default() });
    assert_eq!(rate_of(&sim.take_client(c)[0]), Some(4.5));
    // The detector answers first.
    sim.utterance(c, &sid, 1);
    let job = sim.jobs(node).remove(0);
    let (job_id, _) = sim.detects.remove(0);
    sim.detected(&job_id, tolk_protocol::common::Extra { speech_rate: Some(3.0), ..Default::default() });
    assert!(sim.take_client(c).is_empty());
    sim.succeed(node, &node_id, &job);
    assert_eq!(rate_of(&sim.take_client(c)[0]), Some(3.0));
}

#[test]
fn a_detector_that_never_answers_costs_no_result() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (c, sid) = speech_rate_session(&mut sim);
    sim.utterance(c, &sid, 0);
    let job = sim.jobs(node).remove(0);
    sim.succeed(node, &node_id, &job);
    sim.advance(cfg().detect_wait_ms + 1);
    let out = sim.take_client(c);
    assert_eq!(rate_of(&out[0]), None, "sent, with the field null");
    assert_eq!(sim.core.stats().detection_timeouts, 1);
    // A late answer changes nothing.
    let (job_id, _) = sim.detects.remove(0);
    sim.detected(&job_id, tolk_protocol::common::Extra { speech_rate: Some(9.9), ..Default::default() });
    assert!(sim.take_client(c).is_empty());
}

#[test]
fn the_nodes_own_feature_values_win() {
    let mut sim = Sim::new(cfg());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (c, sid) = speech_rate_session(&mut sim);
    sim.utterance(c, &sid, 0);
    let job = sim.jobs(node).remove(0);
    let mut r = result_for(&node_id, &job);
    r.extra = Some(tolk_protocol::common::Extra { speech_rate: Some(1.2), ..Default::default() });
    sim.node(node, NodeToServer::JobResult(r));
    let (job_id, _) = sim.detects.remove(0);
    sim.detected(&job_id, tolk_protocol::common::Extra { speech_rate: Some(7.0), ..Default::default() });
    assert_eq!(rate_of(&sim.take_client(c)[0]), Some(1.2));
}

#[test]
fn a_node_that_declares_max_jobs_gets_no_more() {
    let mut sim = Sim::new(CoreConfig { max_jobs_per_node: 4, admission_wait_ms: 60_000, ..cfg() });
    let n = sim.open(Endpoint::Node);
    let NodeToServer::NodeRegister(mut reg) = register(None, None, &[("en", "es")], true) else { unreachable!() };
    reg.max_jobs = Some(1);
    sim.node(n, NodeToServer::NodeRegister(reg));
    let ServerToNode::NodeRegisterAck(ack) = sim.take_node(n).remove(0) else { panic!() };
    let (c, sid, _) = sim.open_session("en", "es");
    for i in 0..3 {
        sim.utterance(c, &sid, i);
    }
    let jobs = sim.jobs(n);
    assert_eq!(jobs.len(), 1, "the node's own limit, within the dispatcher's");
    sim.succeed(n, &ack.node_id, &jobs[0]);
    assert_eq!(sim.jobs(n).len(), 1);
    let out = sim.take_client(c);
    let Some(ServerToClient::TranslationResult(r)) = out.iter().find(|m| matches!(m, ServerToClient::TranslationResult(_))) else {
        panic!("{out:?}")
    };
    assert_eq!(r.tts_sample_rate, Some(16000), "the speech's sample rate passes through");
}

#[test]
fn node_busy_is_not_a_failure_the_job_comes_back_later() {
    // One node, busy with jobs a restarted dispatcher never knew about.
    let mut sim = Sim::new(CoreConfig { max_attempts: 1, admission_wait_ms: 10_000, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (c, sid, _) = sim.open_session("en", "es");
    sim.utterance(c, &sid, 0);
    let job = sim.jobs(node).remove(0);
    sim.fail(node, &node_id, &job, JobErrorCode::NodeBusy);
    assert!(sim.jobs(node).is_empty(), "the busy node rests a moment");
    assert!(sim.take_client(c).is_empty(), "and the utterance has not failed");
    sim.advance(1_500);
    sim.heartbeat(node, &node_id, None);
    let again = sim.jobs(node);
    assert_eq!(again.len(), 1, "the same node gets it again: busy is not failed");
    assert_eq!(again[0].job_id, job.job_id);
    sim.succeed(node, &node_id, &again[0]);
    assert_eq!(indexes(&sim.take_client(c)), vec![0]);
}

#[test]
fn a_node_reporting_itself_full_gets_no_job_until_it_has_room() {
    let mut sim = Sim::new(CoreConfig { max_jobs_per_node: 2, admission_wait_ms: 30_000, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    sim.heartbeat_running(node, &node_id, None, 2);
    let (c, sid, _) = sim.open_session("en", "es");
    sim.utterance(c, &sid, 0);
    assert!(sim.jobs(node).is_empty(), "its heartbeat says it is full");
    sim.heartbeat_running(node, &node_id, None, 1);
    let job = sim.jobs(node).remove(0);
    sim.succeed(node, &node_id, &job);
    // A result means one job fewer than the heartbeat said: room without waiting for the next heartbeat.
    sim.utterance(c, &sid, 1);
    sim.utterance(c, &sid, 2);
    assert_eq!(sim.jobs(node).len(), 2);
}

#[test]
fn served_pairs_are_those_one_node_serves_whole() {
    let mut sim = Sim::new(cfg());
    let (_, _, _) = sim.register_node(&[("en", "es")], true);
    // A node with an nmt model whose target no one speaks is not listed.
    let n = sim.open(Endpoint::Node);
    let NodeToServer::NodeRegister(mut reg) = register(None, None, &[("de", "fr")], true) else { unreachable!() };
    reg.installed_models.retain(|m| m.kind != tolk_protocol::ModelKind::Tts);
    sim.node(n, NodeToServer::NodeRegister(reg));
    assert_eq!(sim.core.served_pairs(), vec![("en".to_owned(), "es".to_owned())]);
    sim.disconnect(n);
    let (b, _, _) = sim.register_node(&[("zh", "en")], true);
    assert_eq!(sim.core.served_pairs().len(), 2);
    sim.disconnect(b);
    assert_eq!(sim.core.served_pairs(), vec![("en".to_owned(), "es".to_owned())], "only connected nodes count");
}

#[test]
fn an_engine_reported_broken_takes_no_jobs_until_the_node_reports_it_again() {
    let mut sim = Sim::new(CoreConfig { admission_wait_ms: 1_000, ..cfg() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let nmt = models(&[("en", "es")])[1].clone();
    let error = tolk_protocol::node::NodeError {
        node_id: node_id.clone(),
        code: "INFERENCE_BACKEND_ERROR".into(),
        message: "engine apertium could not start".into(),
        details: Some(serde_json::json!({ "model_id": nmt.model_id })),
    };
    sim.node(node, NodeToServer::NodeError(error));
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert!(sim.jobs(node).is_empty(), "no job for a broken stage");
    sim.advance(1_500);
    let out = sim.take_client(client);
    let err = out.iter().find_map(error_of).unwrap();
    assert_eq!(err.details.as_ref().unwrap()["reasons"], serde_json::json!({ "no_model": 1 }), "{err:?}");
    assert_eq!(sim.core.stats().models_disabled_by_errors, 1);
    // A node_error without a model, or of another code, changes no routing.
    let other =
        tolk_protocol::node::NodeError { node_id: node_id.clone(), code: "CONFIG_ERROR".into(), message: "x".into(), details: None };
    sim.node(node, NodeToServer::NodeError(other));
    assert_eq!(sim.core.stats().models_disabled_by_errors, 1);
    // The node reports the model again (after a reload): it serves again.
    sim.heartbeat_updates(node, &node_id, Some(vec![ModelUpdate::from(nmt)]));
    sim.utterance(client, &sid, 1);
    assert_eq!(sim.jobs(node).len(), 1, "recovered");
}
