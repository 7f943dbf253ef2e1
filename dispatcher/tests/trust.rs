//! Trust in volunteer nodes, driven through the sans-IO core: probation,
//! canaries scored, quarantine, random canaries for trusted nodes, paired
//! sessions exempt, and a canary never reaching or displacing a user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use std::sync::Arc;

use harness::*;
use tolk_dispatcher::CoreConfig;
use tolk_dispatcher::config::TrustConfig;
use tolk_dispatcher::core::trust::{Canary, CanarySet, TrustState};
use tolk_dispatcher::core::{AdminCommand, ConnId, Endpoint};
use tolk_protocol::common::ErrorCode;
use tolk_protocol::node::{JobAssign, PairingCodeRequest};
use tolk_protocol::{ClientToServer, NodeToServer, ServerToClient, ServerToNode};

const TEXT: &str = "the weather is nice today";
const TRANSLATION: &str = "el tiempo es bueno hoy";

fn canaries() -> CanarySet {
    // One second of a tone: what it "says" is given, as a recording's would be.
    let samples: Vec<i16> = (0..16_000).map(|i| ((i as f32 * 0.05).sin() * 8_000.0) as i16).collect();
    CanarySet {
        canaries: vec![Canary {
            name: "weather.wav".into(),
            src_lang: "en".into(),
            tgt_lang: "es".into(),
            text: TEXT.into(),
            translations: vec![TRANSLATION.into()],
            samples: Arc::from(samples),
            sample_rate: 16_000,
            opus: Vec::new(),
        }],
    }
}

fn sim_with(trust: TrustConfig, cfg: CoreConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    sim.core.set_trust(trust, Some(canaries()));
    sim
}

fn sim() -> Sim {
    sim_with(TrustConfig::default(), CoreConfig::default())
}

fn trust_of(sim: &Sim, node_id: &str) -> tolk_dispatcher::core::trust::TrustView {
    sim.core.list_nodes().into_iter().find(|n| n.node_id == node_id).expect("node listed").trust
}

/// Answers `job` as a node would: `asr`/`nmt` texts and some speech.
fn answer(sim: &mut Sim, conn: ConnId, node_id: &str, job: &JobAssign, asr: &str, nmt: &str) {
    let mut r = result_for(node_id, job);
    r.text_asr = Some(asr.into());
    r.text_translated = Some(nmt.into());
    r.tts_audio = Some("U".repeat(400).into());
    sim.node(conn, NodeToServer::JobResult(r));
}

/// The one canary the node was just sent.
fn canary(sim: &mut Sim, conn: ConnId) -> JobAssign {
    let jobs = sim.jobs(conn);
    assert_eq!(jobs.len(), 1, "one canary at a time: {jobs:?}");
    jobs.into_iter().next().unwrap()
}

/// Passes the probation of a fresh node (3 canaries, answered in plausible time).
fn pass_probation(sim: &mut Sim, conn: ConnId, node_id: &str) {
    for _ in 0..3 {
        let c = canary(sim, conn);
        sim.advance(400);
        answer(sim, conn, node_id, &c, TEXT, "El tiempo es bueno hoy");
    }
}

#[test]
fn an_honest_node_passes_its_canaries_then_serves_public_jobs() {
    // No random canaries after the user's job: the count below is exact.
    let mut sim = sim_with(TrustConfig { canary_rate: 0.0, ..TrustConfig::default() }, CoreConfig::default());
    let (client, sid, _) = sim.open_session("en", "es");
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Probation);
    let first = canary(&mut sim, node);
    // A canary looks like any job: ids of the same form, a full pipeline.
    assert!(first.job_id.starts_with("j-") && first.job_id.len() == 34, "{}", first.job_id);
    assert!(first.session_id.starts_with("s-") && first.session_id.len() == 34, "{}", first.session_id);
    assert!(first.pipeline.use_asr && first.pipeline.use_nmt && first.pipeline.use_tts);
    assert_eq!((first.src_lang.as_str(), first.tgt_lang.as_str()), ("en", "es"));
    // While on probation a public utterance does not reach it.
    sim.utterance(client, &sid, 0);
    assert!(sim.jobs(node).is_empty(), "no public job on probation");
    sim.advance(400);
    answer(&mut sim, node, &node_id, &first, TEXT, "El tiempo es bueno hoy");
    let second = canary(&mut sim, node);
    assert_ne!(second.audio.as_str(), first.audio.as_str(), "no two canaries are byte-equal");
    assert_ne!(second.session_id, first.session_id);
    sim.advance(400);
    answer(&mut sim, node, &node_id, &second, TEXT, "El tiempo es bueno hoy");
    let third = canary(&mut sim, node);
    sim.advance(400);
    answer(&mut sim, node, &node_id, &third, TEXT, "El tiempo es bueno hoy");
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.verified, t.canaries_passed, t.canaries_failed), (TrustState::Trusted, true, 3, 0));
    // Trusted: the queued user job runs there now, and its result reaches the user.
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].session_id.as_str(), jobs[0].utterance_index), (sid.as_str(), 0));
    sim.succeed(node, &node_id, &jobs[0]);
    assert_eq!(sim.take_client(client).iter().filter_map(outcome_index).collect::<Vec<_>>(), vec![0]);
    let s = sim.core.stats();
    assert_eq!((s.canaries_sent, s.canary_outcomes.get("pass").copied()), (3, Some(3)));
    assert_eq!(s.nodes_by_trust.get("trusted"), Some(&1));
}

#[test]
fn a_node_answering_garbage_is_quarantined_after_the_configured_failures() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    for _ in 0..2 {
        let c = canary(&mut sim, node);
        sim.advance(400);
        answer(&mut sim, node, &node_id, &c, "buy cheap watches", "compre relojes baratos");
    }
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.canaries_failed), (TrustState::Quarantined, 2));
    assert!(t.last_failure.as_deref().is_some_and(|f| f.starts_with("text:")), "{t:?}");
    assert!(sim.jobs(node).is_empty(), "no more canaries once quarantined");
    let s = sim.core.stats();
    assert_eq!((s.nodes_quarantined, s.canary_failures.get("text").copied()), (1, Some(2)));
    // A user's job is not sent there; the answer says why.
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert!(sim.jobs(node).is_empty());
    sim.advance(CoreConfig::default().admission_wait_ms + 1);
    let out = sim.take_client(client);
    let err = out.iter().find_map(error_of).expect("an outcome");
    assert_eq!(err.code, ErrorCode::NodeUnavailable);
    assert_eq!(err.details.as_ref().unwrap()["reasons"], serde_json::json!({"untrusted": 1}));
    // The operator can put it back on probation: canaries again.
    sim.admin(AdminCommand::Probation { node_id: node_id.clone() }).unwrap();
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Probation);
}

#[test]
fn quarantine_survives_a_reconnect_and_the_operator_can_reverify() {
    let mut sim = sim_with(TrustConfig { quarantine_after: 1, ..TrustConfig::default() }, CoreConfig::default());
    let (node, node_id, token) = sim.register_node(&[("en", "es")], true);
    let c = canary(&mut sim, node);
    sim.advance(400);
    answer(&mut sim, node, &node_id, &c, "nothing", "nada");
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Quarantined);
    sim.disconnect(node);
    let again = sim.open(Endpoint::Node);
    sim.node(again, register(Some(&node_id), Some(&token), &[("en", "es")], true));
    let frames = sim.take_node(again);
    assert!(matches!(frames.first(), Some(ServerToNode::NodeRegisterAck(_))), "{frames:?}");
    assert!(!frames.iter().any(|f| matches!(f, ServerToNode::JobAssign(_))), "still quarantined: no canary, no job");
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Quarantined);
    sim.admin(AdminCommand::Probation { node_id: node_id.clone() }).unwrap();
    let c = canary(&mut sim, again);
    sim.advance(400);
    answer(&mut sim, again, &node_id, &c, TEXT, TRANSLATION);
    assert_eq!(trust_of(&sim, &node_id).canaries_passed, 1);
    sim.admin(AdminCommand::Vouch { node_id: node_id.clone() }).unwrap();
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.verified), (TrustState::Trusted, false), "vouched for, not verified");
}

#[test]
fn an_answer_faster_than_any_engine_is_flagged() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    // The right text, at once: replayed or made up, not recognised.
    let c = canary(&mut sim, node);
    answer(&mut sim, node, &node_id, &c, TEXT, TRANSLATION);
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.canaries_failed), (TrustState::Probation, 1));
    assert!(t.last_failure.as_deref().is_some_and(|f| f.starts_with("too_fast:")), "{t:?}");
    assert_eq!(sim.core.stats().canary_failures.get("too_fast"), Some(&1));
}

#[test]
fn errors_and_silence_prove_nothing_and_the_next_canary_waits() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let c = canary(&mut sim, node);
    sim.fail(node, &node_id, &c, tolk_protocol::JobErrorCode::InferenceBackendError);
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.canaries_failed, t.canaries_inconclusive), (TrustState::Probation, 0, 1));
    assert!(sim.jobs(node).is_empty(), "the next canary waits retry_ms");
    sim.advance(TrustConfig::default().retry_ms + 1_000);
    let c = canary(&mut sim, node);
    // No answer by the deadline (the node alive all along): inconclusive
    // too, and the slot is freed.
    let end = sim.now + c.deadline_ms.unwrap() + 2_000;
    while sim.now < end {
        sim.heartbeat(node, &node_id, None);
        sim.advance(5_000);
    }
    assert_eq!(trust_of(&sim, &node_id).canaries_inconclusive, 2);
    assert_eq!(sim.core.sizes().canaries, 0);
}

#[test]
fn a_canary_answer_from_another_node_or_for_another_session_is_refused() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (other, other_id, _) = sim.register_node(&[("en", "es")], true);
    let c = canary(&mut sim, node);
    let _ = sim.jobs(other);
    sim.advance(400);
    answer(&mut sim, other, &other_id, &c, TEXT, TRANSLATION);
    assert!(matches!(sim.take_node(other).as_slice(), [ServerToNode::Error(_)]));
    let mut forged = c.clone();
    forged.session_id = "s-00000000000000000000000000000000".into();
    answer(&mut sim, node, &node_id, &forged, TEXT, TRANSLATION);
    assert!(matches!(sim.take_node(node).as_slice(), [ServerToNode::Error(_)]));
    assert_eq!(trust_of(&sim, &node_id).canaries_passed, 0);
    answer(&mut sim, node, &node_id, &c, TEXT, TRANSLATION);
    assert_eq!(trust_of(&sim, &node_id).canaries_passed, 1);
}

#[test]
fn trusted_nodes_get_random_canaries_only_when_idle_and_users_never_see_them() {
    let trust = TrustConfig { canary_rate: 1.0, ..TrustConfig::default() };
    let mut sim = sim_with(trust, CoreConfig { max_jobs_per_node: 1, ..CoreConfig::default() });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    pass_probation(&mut sim, node, &node_id);
    let (client, sid, _) = sim.open_session("en", "es");
    for i in 0..3 {
        sim.utterance(client, &sid, i);
    }
    // One slot: each finished job is followed by the next user job, never
    // by the canary it made due, while users wait.
    for i in 0..3 {
        let jobs = sim.jobs(node);
        assert_eq!(jobs.len(), 1, "turn {i}: {jobs:?}");
        assert_eq!((jobs[0].session_id.as_str(), jobs[0].utterance_index), (sid.as_str(), i), "users first");
        sim.advance(400);
        sim.succeed(node, &node_id, &jobs[0]);
    }
    // Now idle: the owed canary goes out.
    let c = canary(&mut sim, node);
    assert_ne!(c.session_id, sid);
    sim.advance(400);
    answer(&mut sim, node, &node_id, &c, TEXT, TRANSLATION);
    let outcomes: Vec<u64> = sim.take_client(client).iter().filter_map(outcome_index).collect();
    assert_eq!(outcomes, vec![0, 1, 2], "the user gets its own outcomes and nothing else");
    assert_eq!(trust_of(&sim, &node_id).canaries_passed, 4);
}

#[test]
fn a_trusted_node_failing_a_canary_is_back_on_probation() {
    let trust = TrustConfig { canary_rate: 1.0, ..TrustConfig::default() };
    let mut sim = sim_with(trust, CoreConfig::default());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    pass_probation(&mut sim, node, &node_id);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    let jobs = sim.jobs(node);
    sim.advance(400);
    sim.succeed(node, &node_id, &jobs[0]);
    let c = canary(&mut sim, node);
    sim.advance(400);
    answer(&mut sim, node, &node_id, &c, "garbage", "basura");
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Probation);
    sim.utterance(client, &sid, 1);
    assert!(sim.jobs(node).iter().all(|j| j.session_id != sid), "no public job back on probation");
}

#[test]
fn paired_sessions_reach_their_node_on_probation_and_private_nodes_are_exempt() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let _canary = canary(&mut sim, node);
    sim.node(node, NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id: node_id.clone() }));
    let Some(ServerToNode::PairingCode(code)) = sim.take_node(node).pop() else { panic!("no pairing code") };
    let c = sim.open(Endpoint::Session);
    sim.client(c, init("en", "es", Some(&code.code)));
    let Some(ServerToClient::SessionInitAck(ack)) = sim.take_client(c).pop() else { panic!() };
    sim.client(c, ClientToServer::Utterance(utterance(&ack.session_id, 0, "en", "es")));
    let jobs = sim.jobs(node);
    assert_eq!(jobs.len(), 1, "the user's own node serves its paired session whatever its trust");
    // A node taking only paired sessions is never sent canaries.
    let (private, private_id, _) = sim.register_node(&[("en", "es")], false);
    assert!(sim.jobs(private).is_empty());
    assert_eq!(trust_of(&sim, &private_id).state, TrustState::Exempt);
}

#[test]
fn a_node_whose_languages_have_no_canary_stays_on_probation_unless_configured() {
    let mut sim = sim();
    let (node, node_id, _) = sim.register_node(&[("fr", "de")], true);
    assert!(sim.jobs(node).is_empty());
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Probation);
    let mut sim = sim_with(TrustConfig { trust_unverifiable: true, ..TrustConfig::default() }, CoreConfig::default());
    let (_, node_id, _) = sim.register_node(&[("fr", "de")], true);
    let t = trust_of(&sim, &node_id);
    assert_eq!((t.state, t.verified), (TrustState::Trusted, false));
}

#[test]
fn without_a_canary_set_every_node_is_unchecked_and_serves() {
    let mut sim = Sim::new(CoreConfig::default());
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Unchecked);
    let (client, sid, _) = sim.open_session("en", "es");
    sim.utterance(client, &sid, 0);
    assert_eq!(sim.jobs(node).len(), 1);
}

#[test]
fn explain_lists_every_node_and_why_from_the_one_rule() {
    let mut sim = sim();
    let (trusted, trusted_id, _) = sim.register_node(&[("en", "es")], true);
    pass_probation(&mut sim, trusted, &trusted_id);
    let (_, probation_id, _) = sim.register_node(&[("en", "es")], true);
    let (_, french_id, _) = sim.register_node(&[("fr", "de")], true);
    let (_, private_id, _) = sim.register_node(&[("en", "es")], false);
    let q = tolk_dispatcher::core::eligibility::ExplainQuery { src_lang: "en".into(), tgt_lang: "es".into(), ..Default::default() };
    let e = sim.core.explain(sim.now, &q).unwrap();
    let row = |id: &str| e.nodes.iter().find(|n| n.node_id == id).unwrap().clone();
    assert_eq!((row(&trusted_id).eligible, row(&trusted_id).picked), (true, true));
    assert_eq!(row(&probation_id).reason, Some("untrusted"));
    assert_eq!(row(&french_id).reason, Some("no_model"));
    assert_eq!(row(&private_id).reason, Some("not_paired"));
    assert_eq!(e.picked.as_deref(), Some(trusted_id.as_str()));
    assert_eq!(e.reasons.get("untrusted"), Some(&1));
    // The same reasons a refusal would carry: drain the trusted one and ask again.
    sim.admin(AdminCommand::Drain { node_id: trusted_id.clone() }).unwrap();
    let e = sim.core.explain(sim.now, &q).unwrap();
    assert_eq!(e.picked, None);
    assert!(row(&trusted_id).eligible, "the earlier answer is a snapshot");
    assert_eq!(e.nodes.iter().find(|n| n.node_id == trusted_id).unwrap().reason, Some("draining"));
    let unknown = tolk_dispatcher::core::eligibility::ExplainQuery { session: Some("s-nope".into()), ..q };
    assert!(sim.core.explain(sim.now, &unknown).unwrap_err().contains("no session"));
}

#[test]
fn probation_checks_every_language_pair_the_node_claims_before_repeating() {
    // Three canaries, 1, 2 and 3 s long (told apart by their length), two pairs.
    let tone = |secs: usize| -> Arc<[i16]> { (0..16_000 * secs).map(|i| ((i as f32 * 0.05).sin() * 8_000.0) as i16).collect() };
    let canary = |secs: usize, src: &str, tgt: &str| Canary {
        name: format!("{secs}s.wav"),
        src_lang: src.into(),
        tgt_lang: tgt.into(),
        text: format!("sentence {secs}"),
        translations: vec![format!("sentencia {secs}")],
        samples: tone(secs),
        sample_rate: 16_000,
        opus: Vec::new(),
    };
    let set = CanarySet { canaries: vec![canary(1, "en", "es"), canary(2, "en", "es"), canary(3, "de", "fr")] };
    let mut sim = Sim::new(CoreConfig::default());
    sim.core.set_trust(TrustConfig { canary_rate: 0.0, ..TrustConfig::default() }, Some(set));
    let (node, node_id, _) = sim.register_node(&[("en", "es"), ("de", "fr")], true);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c = canary_of(&mut sim, node);
        // pcm16 base64: 4 chars per 3 bytes; padding adds at most 0.48 s.
        let secs = (c.audio.as_str().len() * 3 / 4 / 2) as f64 / 16_000.0;
        let which = secs.floor() as usize;
        seen.push((which, c.src_lang.clone()));
        sim.advance(4_000);
        answer(&mut sim, node, &node_id, &c, &format!("sentence {which}"), &format!("sentencia {which}"));
    }
    seen.sort();
    assert_eq!(seen, vec![(1, "en".into()), (2, "en".into()), (3, "de".into())], "each canary once");
    assert_eq!(trust_of(&sim, &node_id).state, TrustState::Trusted);
}

fn canary_of(sim: &mut Sim, conn: ConnId) -> JobAssign {
    canary(sim, conn)
}

#[test]
fn canaries_come_in_the_format_real_utterances_come_in() {
    let mut set = canaries();
    set.canaries[0].opus = vec![(Arc::from("T2dnUw=="), 1_200), (Arc::from("T2dnUwA="), 1_300)];
    let mut sim = Sim::new(CoreConfig::default());
    sim.core.set_trust(TrustConfig { canary_rate: 0.0, ..TrustConfig::default() }, Some(set));
    // Phones speak Opus (whatever becomes of these utterances, their format counts).
    let (client, sid, _) = sim.open_session("en", "es");
    for i in 0..200 {
        let mut u = utterance(&sid, i, "en", "es");
        u.audio_format = tolk_protocol::AudioFormat::Opus;
        sim.client(client, ClientToServer::Utterance(u));
    }
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let mut formats = Vec::new();
    for _ in 0..3 {
        let c = canary(&mut sim, node);
        formats.push((c.audio_format, c.tts_format));
        if c.audio_format == tolk_protocol::AudioFormat::Opus {
            assert!(c.audio.as_str() == "T2dnUw==" || c.audio.as_str() == "T2dnUwA=", "a pre-encoded variant");
        }
        sim.advance(400);
        answer(&mut sim, node, &node_id, &c, TEXT, TRANSLATION);
    }
    let opus =
        formats.iter().filter(|(a, t)| *a == tolk_protocol::AudioFormat::Opus && *t == Some(tolk_protocol::AudioFormat::Opus)).count();
    assert!(opus >= 2, "mostly Opus, as the phones send: {formats:?}");
}
