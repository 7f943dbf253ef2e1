//! Cluster mode (extension 13) through the sans-IO cores: several cores
//! joined by a simulated bus (peer messages delivered in order) and an
//! in-memory store standing in for JetStream KV (the real NATS path is
//! `tests/tests/cluster.rs`). One fleet across dispatchers, a peer's death,
//! busy and forged answers, sessions restored elsewhere, tokens and pairing
//! codes valid on every dispatcher, the guess limit cluster-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use std::collections::BTreeMap;

use harness::*;
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::core::cluster::{ClusterSettings, PeerMsg, SessionRecord, StoreOp};
use tolk_dispatcher::core::{ConnId, Endpoint, Frame, Input, Millis};
use tolk_protocol::common::ErrorCode;
use tolk_protocol::node::PairingCodeRequest;
use tolk_protocol::{ClientToServer, JobErrorCode, NodeToServer, ServerToClient, ServerToNode};

const SECRET: &[u8] = b"a secret the cluster shares";

/// Dispatchers `names[i]` on one bus and one store.
struct Cluster {
    names: Vec<String>,
    sims: Vec<Sim>,
    sessions: BTreeMap<String, SessionRecord>,
    outcomes: BTreeMap<(String, u64), Frame>,
    /// Peers cut off the bus (their messages are lost both ways).
    cut: Vec<usize>,
}

impl Cluster {
    fn new(names: &[&str]) -> Self {
        let sims = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut sim = Sim::seeded(CoreConfig::default(), 11 + i as u64);
                sim.core.set_secret(SECRET);
                sim.core.set_cluster(ClusterSettings { id: (*name).to_owned(), peer_timeout_ms: 3_000 });
                sim
            })
            .collect();
        Self {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            sims,
            sessions: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            cut: Vec::new(),
        }
    }

    fn at(&mut self, i: usize) -> &mut Sim {
        &mut self.sims[i]
    }

    /// Delivers every message and store operation until none is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.sims.len() {
                let out = std::mem::take(&mut self.sims[i].peer_out);
                let ops = std::mem::take(&mut self.sims[i].store_ops);
                let lookups = std::mem::take(&mut self.sims[i].lookups);
                moved |= !out.is_empty() || !ops.is_empty() || !lookups.is_empty();
                for op in ops {
                    self.apply(op);
                }
                for (conn, session_id, last) in lookups {
                    let found = self.sessions.get(&session_id).cloned().map(|record| {
                        let outcomes: Vec<(u64, Frame)> =
                            self.outcomes.iter().filter(|((s, _), _)| *s == session_id).map(|((_, i), f)| (*i, f.clone())).collect();
                        (record, outcomes)
                    });
                    self.sims[i].input(Input::SessionFound { conn, session_id, last, found });
                }
                if self.cut.contains(&i) {
                    continue;
                }
                for (to, msg) in out {
                    let from = self.names[i].clone();
                    for j in 0..self.sims.len() {
                        let addressed = to.as_ref().is_none_or(|t| *t == self.names[j]);
                        if j != i && addressed && !self.cut.contains(&j) {
                            self.sims[j].input(Input::Peer { from: from.clone(), msg: msg.clone() });
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::PutSession { session_id, record } => {
                self.sessions.insert(session_id, record);
            }
            StoreOp::DeleteSession { session_id, outcomes } => {
                self.sessions.remove(&session_id);
                for i in outcomes {
                    self.outcomes.remove(&(session_id.clone(), i));
                }
            }
            StoreOp::PutOutcome { session_id, index, frame } => {
                self.outcomes.insert((session_id, index), frame);
            }
            StoreOp::DeleteOutcomes { session_id, indexes } => {
                for i in indexes {
                    self.outcomes.remove(&(session_id.clone(), i));
                }
            }
        }
    }

    /// Every dispatcher announces its nodes (as the shell does every `announce_ms`).
    fn announce(&mut self) {
        for i in 0..self.sims.len() {
            let now = self.sims[i].now;
            let ad = self.sims[i].core.fleet_ad(now);
            self.sims[i].peer_out.push((None, PeerMsg::Fleet(ad)));
        }
        self.pump();
    }

    /// Time passes everywhere, with announcements every 250 ms.
    fn advance(&mut self, ms: Millis) {
        let mut left = ms;
        while left > 0 {
            let step = left.min(250);
            for sim in &mut self.sims {
                sim.advance(step);
            }
            left -= step;
            self.announce();
        }
    }
}

fn results(sim: &mut Sim, conn: ConnId) -> Vec<u64> {
    sim.take_client(conn).iter().filter(|m| matches!(m, ServerToClient::TranslationResult(_))).filter_map(outcome_index).collect()
}

#[test]
fn a_session_on_one_dispatcher_is_served_by_a_node_on_another_in_order() {
    let mut cl = Cluster::new(&["a", "b"]);
    let (nconn, node, _) = cl.at(1).register_node(&[("en", "es")], true);
    cl.announce();
    let (conn, session, _) = cl.at(0).open_session("en", "es");
    for i in 0..3 {
        cl.at(0).utterance(conn, &session, i);
    }
    cl.pump();
    let jobs = cl.at(1).jobs(nconn);
    assert_eq!(jobs.len(), 3, "B ran A's jobs on its node");
    assert!(jobs.iter().all(|j| j.session_id == session), "verbatim job_assign frames");
    // Answers out of order; A delivers in order.
    for j in jobs.iter().rev() {
        cl.at(1).succeed(nconn, &node, j);
    }
    cl.pump();
    assert_eq!(results(cl.at(0), conn), vec![0, 1, 2]);
    let (a, b) = (cl.at(0).core.stats(), cl.at(1).core.stats());
    assert_eq!((a.jobs_forwarded, a.forwarded_results, b.jobs_proxied, b.proxied_results), (3, 3, 3, 3));
    assert_eq!(b.jobs_proxied_running, 0);
    let view = cl.at(0).core.list_nodes();
    assert_eq!(view[0].dispatcher.as_deref(), Some("b"));
}

#[test]
fn a_silent_peer_loses_its_nodes_and_their_jobs_are_retried_here() {
    let mut cl = Cluster::new(&["a", "b"]);
    let (_remote_conn, _remote, _) = cl.at(1).register_node(&[("en", "es")], true);
    cl.announce();
    let (conn, session, _) = cl.at(0).open_session("en", "es");
    cl.at(0).utterance(conn, &session, 0);
    cl.pump();
    assert_eq!(cl.at(0).core.stats().jobs_forwarded, 1);
    // B falls off the bus; A's own node registers meanwhile.
    cl.cut.push(1);
    let (lconn, local, _) = cl.at(0).register_node(&[("en", "es")], true);
    cl.advance(3_500);
    let jobs = cl.at(0).jobs(lconn);
    assert_eq!(jobs.len(), 1, "the job on B's node was retried on A's");
    cl.at(0).succeed(lconn, &local, &jobs[0]);
    assert_eq!(results(cl.at(0), conn), vec![0]);
    assert_eq!(cl.at(0).core.stats().peers, 0);
    assert!(cl.at(0).core.list_nodes().iter().any(|n| n.dispatcher.as_deref() == Some("b") && !n.connected));
}

#[test]
fn a_busy_or_gone_node_elsewhere_is_answered_at_once_and_forged_results_are_refused() {
    let mut cl = Cluster::new(&["a", "b", "c"]);
    let (nconn, node, _) = cl.at(1).register_node(&[("en", "es")], true);
    cl.announce();
    // B's node is full of B's own work, which A does not know yet.
    let (bconn, bsession, _) = cl.at(1).open_session("en", "es");
    for i in 0..4 {
        cl.at(1).utterance(bconn, &bsession, i);
    }
    let (conn, session, _) = cl.at(0).open_session("en", "es");
    cl.at(0).utterance(conn, &session, 0);
    cl.pump();
    assert_eq!(cl.at(1).core.stats().peer_jobs_refused, 1, "B refused the job: its node is at capacity");
    let b_jobs = cl.at(1).jobs(nconn);
    assert_eq!(b_jobs.len(), 4);
    // A result for A's job from C, which does not hold the node: refused.
    let job_id = "j-00000000000000000000000000000000".to_owned();
    let forged = tolk_protocol::node::JobResult::failure(
        job_id.clone(),
        node.clone(),
        session.clone(),
        0,
        tolk_protocol::node::JobError { code: JobErrorCode::InvalidAudio, message: "forged".into() },
    );
    cl.at(2).peer_out.push((Some("a".into()), PeerMsg::Result { job_id, node_id: node.clone(), result: Box::new(forged) }));
    cl.pump();
    assert_eq!(cl.at(0).core.stats().peer_messages_refused, 1);
    // B's node frees up: A's job runs there after the busy back-off.
    cl.at(1).succeed(nconn, &node, &b_jobs[0]);
    cl.pump();
    cl.advance(1_500);
    let jobs = cl.at(1).jobs(nconn);
    assert_eq!(jobs.len(), 1, "A's job, retried on the same node once it had room");
    assert_eq!(jobs[0].session_id, session);
    cl.at(1).succeed(nconn, &node, &jobs[0]);
    cl.pump();
    assert_eq!(results(cl.at(0), conn), vec![0]);
}

#[test]
fn a_session_resumes_on_another_dispatcher_with_its_unconfirmed_outcomes() {
    let mut cl = Cluster::new(&["a", "b", "c"]);
    let (nconn, node, _) = cl.at(0).register_node(&[("en", "es")], true);
    cl.announce();
    let (conn, session, token) = cl.at(0).open_session("en", "es");
    cl.pump();
    assert!(cl.sessions.contains_key(&session), "the record is stored at once");
    for i in 0..3 {
        cl.at(0).utterance(conn, &session, i);
    }
    for j in cl.at(0).jobs(nconn) {
        cl.at(0).succeed(nconn, &node, &j);
    }
    cl.pump();
    assert_eq!(results(cl.at(0), conn), vec![0, 1, 2]);
    // The client confirms 0: only 1 and 2 stay stored.
    cl.at(0).client(
        conn,
        ClientToServer::ClientHeartbeat(tolk_protocol::session::ClientHeartbeat {
            session_id: session.clone(),
            timestamp: 1,
            last_utterance_index: Some(0),
        }),
    );
    cl.pump();
    let stored: Vec<u64> = cl.outcomes.keys().map(|(_, i)| *i).collect();
    assert_eq!(stored, vec![1, 2]);

    // The phone comes back on C having seen up to 1.
    let c_conn = cl.at(2).open(Endpoint::Session);
    cl.at(2).client(c_conn, resume(&session, &token, Some(1)));
    cl.pump();
    let frames = cl.at(2).take_client(c_conn);
    assert!(matches!(&frames[0], ServerToClient::SessionInitAck(a) if a.session_id == session), "{frames:?}");
    let resent: Vec<u64> = frames[1..].iter().filter_map(outcome_index).collect();
    assert_eq!(resent, vec![2], "what the phone lacks, once");
    assert_eq!(cl.at(2).core.stats().sessions_restored, 1);
    // A was told: it dropped the session (and its connection) but not the stored state.
    assert!(cl.at(0).closed.contains(&conn));
    assert_eq!(cl.at(0).core.stats().sessions_moved_away, 1);
    assert!(cl.sessions.contains_key(&session));
    // Re-sent 2 is a duplicate; 3 is new and served by A's node through the cluster.
    cl.at(2).utterance(c_conn, &session, 2);
    cl.at(2).utterance(c_conn, &session, 3);
    cl.pump();
    let jobs = cl.at(0).jobs(nconn);
    assert_eq!(jobs.len(), 1, "only the new utterance runs");
    cl.at(0).succeed(nconn, &node, &jobs[0]);
    cl.pump();
    assert_eq!(results(cl.at(2), c_conn), vec![3]);
    // Closing forgets the stored state.
    cl.at(2)
        .client(c_conn, ClientToServer::SessionClose(tolk_protocol::session::SessionClose { session_id: session.clone(), reason: None }));
    cl.pump();
    assert!(!cl.sessions.contains_key(&session) && cl.outcomes.is_empty(), "{:?}", cl.outcomes.keys());
}

#[test]
fn resumes_with_a_wrong_token_or_an_unknown_session_are_refused_without_leaking() {
    let mut cl = Cluster::new(&["a", "b"]);
    let (_conn, session, token) = cl.at(0).open_session("en", "es");
    cl.pump();
    let conn = cl.at(1).open(Endpoint::Session);
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
    cl.at(1).client(conn, resume(&session, &wrong, None));
    cl.pump();
    assert!(cl.at(1).lookups.is_empty(), "a wrong token is refused before any look-up");
    assert!(matches!(cl.at(1).take_client(conn).pop(), Some(ServerToClient::Error(e)) if e.code == ErrorCode::InvalidSession));
    // A valid token for a session the store no longer has (it ended).
    let (_c2, gone, gone_token) = cl.at(0).open_session("en", "es");
    cl.pump();
    cl.sessions.remove(&gone);
    let conn2 = cl.at(1).open(Endpoint::Session);
    cl.at(1).client(conn2, resume(&gone, &gone_token, None));
    cl.pump();
    assert!(matches!(cl.at(1).take_client(conn2).pop(), Some(ServerToClient::Error(e)) if e.code == ErrorCode::InvalidSession));
    assert_eq!(cl.at(1).core.stats().session_lookups_missed, 1);
}

#[test]
fn node_identities_and_pairing_codes_are_valid_on_every_dispatcher_and_guesses_count_everywhere() {
    let mut cl = Cluster::new(&["a", "b"]);
    let (conn, node, token) = cl.at(0).register_node(&[("en", "es")], false);
    // A code issued on A...
    cl.at(0).node(conn, NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id: node.clone() }));
    let code = match cl.at(0).take_node(conn).pop() {
        Some(ServerToNode::PairingCode(p)) => p.code,
        other => panic!("{other:?}"),
    };
    cl.announce();
    // ...is redeemed on B, whose session is then served by A's node.
    let s = cl.at(1).open(Endpoint::Session);
    cl.at(1).client(s, init("en", "es", Some(&code)));
    let ack = cl.at(1).take_client(s).pop();
    let session = match ack {
        Some(ServerToClient::SessionInitAck(a)) => {
            assert_eq!(a.assigned_node_id.as_deref(), Some(node.as_str()));
            a.session_id
        }
        other => panic!("{other:?}"),
    };
    cl.at(1).utterance(s, &session, 0);
    cl.pump();
    assert_eq!(cl.at(0).jobs(conn).len(), 1, "the paired node on A runs B's paired session");

    // The node moves to B under the same identity (tokens derive from the shared secret).
    cl.at(0).disconnect(conn);
    let nconn = cl.at(1).open(Endpoint::Node);
    cl.at(1).node(nconn, register(Some(&node), Some(&token), &[("en", "es")], false));
    assert!(matches!(cl.at(1).take_node(nconn).first(), Some(ServerToNode::NodeRegisterAck(a)) if a.node_id == node));
    let forged = cl.at(1).open(Endpoint::Node);
    cl.at(1).node(forged, register(Some(&node), Some(&"0".repeat(64)), &[("en", "es")], false));
    assert!(matches!(cl.at(1).take_node(forged).first(), Some(ServerToNode::Error(e)) if e.code == ErrorCode::Unauthorized));

    // Wrong guesses on A and on B add up to one limit.
    let max = CoreConfig::default().pairing_max_failures;
    for k in 0..max {
        let i = (k % 2) as usize;
        let c = cl.at(i).open(Endpoint::Session);
        cl.at(i).client(c, init("en", "es", Some("000000")));
        cl.pump();
    }
    let c = cl.at(1).open(Endpoint::Session);
    cl.at(1).client(c, init("en", "es", Some("111111")));
    assert!(
        matches!(cl.at(1).take_client(c).pop(), Some(ServerToClient::Error(e)) if e.code == ErrorCode::RateLimited),
        "the guess limit holds across the cluster"
    );
}

#[test]
fn a_quarantined_node_stays_quarantined_when_it_reconnects_to_another_dispatcher() {
    use std::sync::Arc;
    use tolk_dispatcher::config::TrustConfig;
    use tolk_dispatcher::core::trust::{Canary, CanarySet, TrustState};
    let samples: Vec<i16> = (0..16_000).map(|i| ((i as f32 * 0.05).sin() * 8_000.0) as i16).collect();
    let set = CanarySet {
        canaries: vec![Canary {
            name: "weather.wav".into(),
            src_lang: "en".into(),
            tgt_lang: "es".into(),
            text: "the weather is nice today".into(),
            translations: vec!["el tiempo es bueno hoy".into()],
            samples: Arc::from(samples),
            sample_rate: 16_000,
            opus: Vec::new(),
        }],
    };
    let mut cl = Cluster::new(&["a", "b"]);
    for sim in &mut cl.sims {
        sim.core.set_trust(TrustConfig::default(), Some(set.clone()));
    }
    let (conn, node, token) = cl.at(0).register_node(&[("en", "es")], true);
    // A farmer: garbage, fast enough to look plausible.
    for _ in 0..2 {
        let jobs = cl.at(0).jobs(conn);
        assert_eq!(jobs.len(), 1, "a canary");
        cl.at(0).advance(400);
        let mut r = result_for(&node, &jobs[0]);
        r.text_asr = Some("lorem ipsum dolor".into());
        r.text_translated = Some("sit amet".into());
        cl.at(0).node(conn, NodeToServer::JobResult(r));
    }
    let state = |sim: &Sim| sim.core.list_nodes().into_iter().find(|n| n.node_id == node).map(|n| n.trust.state);
    assert_eq!(state(cl.at(0)), Some(TrustState::Quarantined));
    cl.announce();
    assert_eq!(state(cl.at(1)), Some(TrustState::Quarantined), "B learns it from A's announcement");
    // It leaves A and registers on B under the same identity: still quarantined.
    cl.at(0).disconnect(conn);
    cl.announce();
    let nconn = cl.at(1).open(Endpoint::Node);
    cl.at(1).node(nconn, register(Some(&node), Some(&token), &[("en", "es")], true));
    assert!(matches!(cl.at(1).take_node(nconn).first(), Some(ServerToNode::NodeRegisterAck(a)) if a.node_id == node));
    assert_eq!(state(cl.at(1)), Some(TrustState::Quarantined), "moving does not lift a quarantine");
    let (s, session, _) = cl.at(1).open_session("en", "es");
    cl.at(1).utterance(s, &session, 0);
    cl.pump();
    assert!(cl.at(1).jobs(nconn).is_empty(), "no public job for it on B either");
}

#[test]
fn among_equally_loaded_nodes_a_local_one_is_chosen_and_a_freer_remote_one_still_is() {
    let mut cl = Cluster::new(&["a", "b"]);
    let (rconn, remote, _) = cl.at(1).register_node(&[("en", "es")], true);
    let (lconn, local, _) = cl.at(0).register_node(&[("en", "es")], true);
    cl.announce();
    let (conn, session, _) = cl.at(0).open_session("en", "es");
    cl.at(0).utterance(conn, &session, 0);
    cl.pump();
    let local_jobs = cl.at(0).jobs(lconn);
    assert_eq!((local_jobs.len(), cl.at(1).jobs(rconn).len()), (1, 0), "both idle: the local node, no forwarding");
    // The local node now runs one; the remote one is freer: another
    // session's job goes there (the same session's would stay on its node).
    let (conn2, session2, _) = cl.at(0).open_session("en", "es");
    cl.at(0).utterance(conn2, &session2, 0);
    cl.pump();
    let remote_jobs = cl.at(1).jobs(rconn);
    assert_eq!(remote_jobs.len(), 1, "one fleet: the freer node, on the other dispatcher");
    cl.at(0).succeed(lconn, &local, &local_jobs[0]);
    cl.at(1).succeed(rconn, &remote, &remote_jobs[0]);
    cl.pump();
    assert_eq!((results(cl.at(0), conn), results(cl.at(0), conn2)), (vec![0], vec![0]));
}
