//! The node's decision core, fed plain events: registration and identity,
//! capacity, deadlines, reconnect back-off, node_control, pairing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use tolk_node::core::{Action, CoreConfig, Event, NodeCore};
use tolk_node::identity::Identity;
use tolk_node::machine::Load;
use tolk_node::pipeline::{Failure, Outcome, Output, Speech, Timings};
use tolk_protocol::node::{
    Hardware, InstalledModel, JobAssign, JobResult, ModelUpdate, NodeCommand, NodeControl, NodePlatform, NodeRegisterAck, PairingCode,
    Pipeline,
};
use tolk_protocol::{AudioFormat, ErrorCode, ErrorMessage, Features, JobErrorCode, ModelKind, NodeToServer, ServerToNode};

fn model(kind: ModelKind, src: &str, tgt: Option<&str>) -> InstalledModel {
    InstalledModel {
        model_id: format!("{kind}-{src}"),
        kind,
        src_lang: Some(src.into()),
        tgt_lang: tgt.map(Into::into),
        dialect: None,
        version: "1".into(),
        enabled: None,
    }
}

fn models() -> Vec<InstalledModel> {
    vec![model(ModelKind::Asr, "en", None), model(ModelKind::Nmt, "en", Some("es")), model(ModelKind::Tts, "es", None)]
}

fn config() -> CoreConfig {
    CoreConfig {
        version: "0.1.0".into(),
        platform: NodePlatform::Linux,
        hardware: Hardware { cpu_cores: 2, memory_gb: 24.0, gpus: vec![] },
        features: Features::default(),
        accept_public_jobs: true,
        auth_token: None,
        max_jobs: 2,
        heartbeat_ms: 5_000,
        default_deadline_ms: 60_000,
        reconnect_min_ms: 500,
        reconnect_max_ms: 30_000,
        request_pairing_code: false,
        seed: 7,
    }
}

/// A core plus a clock.
struct H {
    core: NodeCore,
    now: u64,
}

impl H {
    fn new(cfg: CoreConfig, identity: Option<Identity>) -> Self {
        Self::with(cfg, identity, vec![])
    }

    fn with(cfg: CoreConfig, identity: Option<Identity>, failures: Vec<(String, String)>) -> Self {
        let mut h = Self { core: NodeCore::new(cfg, identity, models(), failures), now: 0 };
        assert_eq!(h.actions(), [Action::Connect { after_ms: 0 }]);
        h
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        self.core.handle(self.now, event);
        self.actions()
    }

    fn actions(&mut self) -> Vec<Action> {
        self.core.take_actions()
    }

    fn frame(&mut self, f: impl Into<ServerToNode>) -> Vec<Action> {
        self.on(Event::Frame(f.into()))
    }

    fn tick(&mut self, to: u64) -> Vec<Action> {
        self.now = to;
        self.on(Event::Tick { unix_ms: 1_700_000_000_000 + to, load: Load { cpu_percent: 12.5, mem_percent: 40.0, ..Load::default() } })
    }

    /// Connects and registers as `n-1` (token `tok`); returns what followed the ack.
    fn register(&mut self) -> Vec<Action> {
        let sent = self.on(Event::Connected);
        assert!(matches!(sent.as_slice(), [Action::Send(NodeToServer::NodeRegister(_))]), "{sent:?}");
        self.frame(NodeRegisterAck { node_id: "n-1".into(), message: "registered".into(), node_token: Some("tok".into()) })
    }
}

fn sent(actions: &[Action]) -> Vec<&NodeToServer> {
    actions.iter().filter_map(|a| if let Action::Send(m) = a { Some(m) } else { None }).collect()
}

fn results(actions: &[Action]) -> Vec<&JobResult> {
    sent(actions).into_iter().filter_map(|m| if let NodeToServer::JobResult(r) = m { Some(r) } else { None }).collect()
}

fn job(id: &str) -> JobAssign {
    JobAssign {
        job_id: id.into(),
        session_id: "s-1".into(),
        utterance_index: 3,
        src_lang: "en".into(),
        tgt_lang: "es".into(),
        dialect: None,
        features: Features::default(),
        pipeline: Pipeline::default(),
        audio: String::new().into(),
        audio_format: AudioFormat::Pcm16,
        sample_rate: 16_000,
        deadline_ms: Some(10_000),
        tts_format: None,
    }
}

fn ok_outcome() -> Outcome {
    let out = Output {
        text_asr: Some("hello".into()),
        text_translated: Some("hola".into()),
        tts: Some(Speech { bytes: vec![1, 2, 3], format: AudioFormat::Wav, sample_rate: None }),
    };
    Outcome { result: Ok(out), timings: Timings { total_ms: 42, ..Timings::default() } }
}

fn error_frame(code: ErrorCode) -> ServerToNode {
    ServerToNode::Error(ErrorMessage { code, message: "no".into(), details: None })
}

#[test]
fn first_contact_registers_without_an_identity_and_saves_the_one_given() {
    let mut h = H::new(config(), None);
    let reg = h.on(Event::Connected);
    let [Action::Send(NodeToServer::NodeRegister(r))] = reg.as_slice() else { panic!("{reg:?}") };
    assert_eq!((r.node_id.as_deref(), r.node_token.as_deref()), (None, None));
    assert_eq!((r.hardware.cpu_cores, r.installed_models.len(), r.accept_public_jobs), (2, 3, true));
    let after = h.frame(NodeRegisterAck { node_id: "n-1".into(), message: String::new(), node_token: Some("tok".into()) });
    assert_eq!(after, [Action::SaveIdentity(Identity { node_id: "n-1".into(), node_token: "tok".into() })]);
    assert_eq!(h.core.node_id(), Some("n-1"));
    // The first heartbeat goes out at once, then every heartbeat_ms.
    assert_eq!(h.core.next_wakeup(), Some(0));
    let hb = h.tick(0);
    let [NodeToServer::NodeHeartbeat(b)] = sent(&hb)[..] else { panic!("{hb:?}") };
    assert_eq!((b.node_id.as_str(), b.resource_usage.cpu_percent, b.resource_usage.running_jobs), ("n-1", 12.5, 0));
    assert_eq!(b.installed_models, None, "the list is unchanged since registering");
    assert!(h.tick(4_999).is_empty());
    assert_eq!(sent(&h.tick(5_000)).len(), 1);
}

#[test]
fn a_stored_identity_is_reused_and_dropped_when_the_dispatcher_forgot_it() {
    let stored = Identity { node_id: "n-old".into(), node_token: "secret".into() };
    let mut h = H::new(config(), Some(stored.clone()));
    let reg = h.on(Event::Connected);
    let [Action::Send(NodeToServer::NodeRegister(r))] = reg.as_slice() else { panic!("{reg:?}") };
    assert_eq!((r.node_id.as_deref(), r.node_token.as_deref()), (Some("n-old"), Some("secret")));
    // Accepted with the same identity: nothing to save.
    let mut ok = H::new(config(), Some(stored));
    ok.on(Event::Connected);
    assert!(ok.frame(NodeRegisterAck { node_id: "n-old".into(), message: String::new(), node_token: Some("secret".into()) }).is_empty());

    // A restarted dispatcher does not know it: UNAUTHORIZED, then it closes.
    assert_eq!(h.frame(error_frame(ErrorCode::Unauthorized)), [Action::ForgetIdentity]);
    let again = h.on(Event::Disconnected);
    let [Action::Connect { after_ms }] = again.as_slice() else { panic!("{again:?}") };
    assert!(*after_ms <= 500, "a fresh registration is not a network failure: {after_ms}");
    let reg = h.on(Event::Connected);
    let [Action::Send(NodeToServer::NodeRegister(r))] = reg.as_slice() else { panic!("{reg:?}") };
    assert_eq!((r.node_id.as_deref(), r.node_token.as_deref()), (None, None));
    let saved = h.frame(NodeRegisterAck { node_id: "n-new".into(), message: String::new(), node_token: Some("t2".into()) });
    assert_eq!(saved, [Action::SaveIdentity(Identity { node_id: "n-new".into(), node_token: "t2".into() })]);
}

#[test]
fn reconnects_back_off_exponentially_with_jitter_and_reset_after_registering() {
    let mut h = H::new(config(), None);
    let mut delays = Vec::new();
    for _ in 0..10 {
        let a = h.on(Event::Disconnected);
        let [Action::Connect { after_ms }] = a.as_slice() else { panic!("{a:?}") };
        delays.push(*after_ms);
    }
    for (i, d) in delays.iter().enumerate() {
        let step = (500u64 << i).min(30_000);
        assert!((step / 2..=step).contains(d), "attempt {i}: {d} outside [{}, {step}]", step / 2);
    }
    assert!(delays[9] >= 15_000, "capped at 30 s, never below half: {delays:?}");
    h.register();
    let a = h.on(Event::Disconnected);
    let [Action::Connect { after_ms }] = a.as_slice() else { panic!("{a:?}") };
    assert!(*after_ms <= 500, "back to the first step after a registration: {after_ms}");
}

#[test]
fn jobs_start_up_to_capacity_and_the_next_one_is_busy() {
    let mut h = H::new(config(), None);
    h.register();
    assert_eq!(h.frame(job("j1")), [Action::StartJob(job("j1"))]);
    assert_eq!(h.frame(job("j1")), [], "a duplicate assign is not started twice");
    assert_eq!(h.frame(job("j2")), [Action::StartJob(job("j2"))]);
    let busy = h.frame(job("j3"));
    let [r] = results(&busy)[..] else { panic!("{busy:?}") };
    assert_eq!((r.job_id.as_str(), r.success), ("j3", false));
    assert_eq!(r.error.as_ref().unwrap().code, JobErrorCode::NodeBusy);
    assert!(r.error.as_ref().unwrap().code.is_retryable());
    assert_eq!(h.core.running_jobs(), 2);
    // A result frees the slot and is reported with everything the pipeline produced.
    let done = h.on(Event::JobFinished { job_id: "j1".into(), outcome: ok_outcome() });
    let [r] = results(&done)[..] else { panic!("{done:?}") };
    assert!(r.success && r.error.is_none());
    assert_eq!((r.node_id.as_str(), r.session_id.as_str(), r.utterance_index), ("n-1", "s-1", 3));
    assert_eq!((r.text_asr.as_deref(), r.text_translated.as_deref()), (Some("hello"), Some("hola")));
    assert_eq!((r.tts_audio.as_deref(), r.tts_format, r.processing_time_ms), (Some("AQID"), Some(AudioFormat::Wav), Some(42)));
    assert_eq!(h.frame(job("j3")), [Action::StartJob(job("j3"))]);
    let failed = h.on(Event::JobFinished {
        job_id: "j2".into(),
        outcome: Outcome { result: Err(Failure::new(JobErrorCode::InvalidAudio, "odd bytes")), timings: Timings::default() },
    });
    let [r] = results(&failed)[..] else { panic!("{failed:?}") };
    assert_eq!((r.success, r.error.as_ref().unwrap().code.clone()), (false, JobErrorCode::InvalidAudio));
}

#[test]
fn a_job_needing_a_missing_model_fails_at_once() {
    let mut h = H::new(config(), None);
    h.register();
    let mut zh = job("j1");
    zh.tgt_lang = "zh".into();
    let a = h.frame(zh);
    let [r] = results(&a)[..] else { panic!("{a:?}") };
    assert_eq!(r.error.as_ref().unwrap().code, JobErrorCode::ModelNotAvailable);
    assert_eq!(r.error.as_ref().unwrap().message, "no nmt model for en → zh");
    // Without NMT and TTS only ASR is needed.
    let mut asr_only = job("j2");
    asr_only.tgt_lang = "zh".into();
    asr_only.pipeline = Pipeline { use_asr: true, use_nmt: false, use_tts: false };
    assert_eq!(h.frame(asr_only.clone()), [Action::StartJob(asr_only)]);
}

#[test]
fn a_job_past_its_deadline_is_reported_and_keeps_its_slot_until_its_engine_returns() {
    let mut h = H::new(config(), None);
    h.register();
    h.tick(0);
    h.frame(job("j1"));
    assert_eq!(h.core.next_wakeup(), Some(5_000), "the heartbeat comes before the deadline");
    h.tick(5_000);
    assert_eq!(h.core.next_wakeup(), Some(10_000));
    let a = h.tick(10_000);
    assert!(a.contains(&Action::AbandonJob("j1".into())), "{a:?}");
    let [r] = results(&a)[..] else { panic!("{a:?}") };
    assert_eq!(r.error.as_ref().unwrap().code, JobErrorCode::Timeout);
    assert_eq!(h.core.running_jobs(), 1, "the engine call still runs");
    h.frame(job("j2"));
    let busy = h.frame(job("j3"));
    assert_eq!(results(&busy)[0].error.as_ref().unwrap().code, JobErrorCode::NodeBusy);
    // The late result is dropped, the slot freed.
    assert!(h.on(Event::JobFinished { job_id: "j1".into(), outcome: ok_outcome() }).is_empty());
    assert_eq!(h.core.running_jobs(), 1);
    // A job without deadline_ms gets the configured default.
    let mut no_deadline = job("j4");
    no_deadline.deadline_ms = None;
    h.frame(no_deadline);
    assert_eq!(h.core.next_wakeup(), Some(15_000));
    h.tick(15_000);
    assert_eq!(h.core.next_wakeup(), Some(20_000));
}

#[test]
fn a_lost_connection_abandons_running_jobs() {
    let mut h = H::new(config(), None);
    h.register();
    h.frame(job("j1"));
    let a = h.on(Event::Disconnected);
    assert_eq!(a[0], Action::AbandonJob("j1".into()));
    assert!(matches!(a[1], Action::Connect { .. }), "{a:?}");
    assert_eq!(h.core.next_wakeup(), None, "no heartbeat while down, no deadline for abandoned jobs");
    h.register();
    assert!(h.on(Event::JobFinished { job_id: "j1".into(), outcome: ok_outcome() }).is_empty(), "the dispatcher moved it");
    assert_eq!(h.core.running_jobs(), 0);
}

#[test]
fn drain_refuses_new_jobs_but_finishes_running_ones_until_the_next_registration() {
    let mut h = H::new(config(), None);
    h.register();
    h.frame(job("j1"));
    assert!(h.frame(NodeControl { command: NodeCommand::Drain, reason: None }).is_empty());
    let a = h.frame(job("j2"));
    let [r] = results(&a)[..] else { panic!("{a:?}") };
    assert_eq!(
        (r.error.as_ref().unwrap().code.clone(), r.error.as_ref().unwrap().message.as_str()),
        (JobErrorCode::NodeBusy, "the node is draining")
    );
    assert_eq!(results(&h.on(Event::JobFinished { job_id: "j1".into(), outcome: ok_outcome() })).len(), 1);
    h.on(Event::Disconnected);
    h.register();
    assert_eq!(h.frame(job("j3")), [Action::StartJob(job("j3"))], "re-registered: the dispatcher sees an undrained node");
}

#[test]
fn shutdown_waits_for_running_jobs_then_exits() {
    let mut h = H::new(config(), None);
    h.register();
    h.frame(job("j1"));
    assert!(h.frame(NodeControl { command: NodeCommand::Shutdown, reason: Some("maintenance".into()) }).is_empty());
    assert_eq!(results(&h.frame(job("j2")))[0].error.as_ref().unwrap().code, JobErrorCode::NodeBusy);
    let a = h.on(Event::JobFinished { job_id: "j1".into(), outcome: ok_outcome() });
    assert_eq!(results(&a).len(), 1);
    assert_eq!(a[1..], [Action::Close, Action::Exit]);
    // A local signal with nothing running exits at once.
    let mut idle = H::new(config(), None);
    idle.register();
    assert_eq!(idle.on(Event::Shutdown), [Action::Close, Action::Exit]);
}

#[test]
fn reload_config_reports_the_new_models_in_the_next_heartbeat_and_failures_as_node_errors() {
    let mut h = H::new(config(), None);
    h.register();
    h.tick(0);
    assert_eq!(h.frame(NodeControl { command: NodeCommand::ReloadConfig, reason: None }), [Action::ReloadConfig]);
    let new = vec![model(ModelKind::Asr, "en", None)];
    let a = h.on(Event::ModelsChanged { models: new.clone(), failures: vec![("apertium".into(), "no mode eng-spa".into())] });
    let [NodeToServer::NodeError(e)] = sent(&a)[..] else { panic!("{a:?}") };
    assert_eq!((e.node_id.as_str(), e.code.as_str()), ("n-1", "INFERENCE_BACKEND_ERROR"));
    assert_eq!(e.message, "engine apertium could not start: no mode eng-spa");
    assert_eq!(h.core.next_wakeup(), Some(0), "the heartbeat goes at once");
    let hb = h.tick(1);
    let [NodeToServer::NodeHeartbeat(b)] = sent(&hb)[..] else { panic!("{hb:?}") };
    // Updates matched by model_id (extension 7): the new list in full, and the
    // models that are gone switched off (else the dispatcher would keep them).
    let expected =
        vec![ModelUpdate { enabled: Some(true), ..new[0].clone().into() }, ModelUpdate::disable("nmt-en"), ModelUpdate::disable("tts-es")];
    assert_eq!(b.installed_models.as_ref(), Some(&expected));
    let hb = h.tick(5_001);
    let [NodeToServer::NodeHeartbeat(b)] = sent(&hb)[..] else { panic!("{hb:?}") };
    assert_eq!(b.installed_models, None, "reported once");
    // Jobs now need the new list.
    assert_eq!(results(&h.frame(job("j1")))[0].error.as_ref().unwrap().code, JobErrorCode::ModelNotAvailable);
    let a = h.on(Event::ReloadFailed("bad toml".into()));
    let [NodeToServer::NodeError(e)] = sent(&a)[..] else { panic!("{a:?}") };
    assert_eq!(e.code, "CONFIG_ERROR");
}

#[test]
fn engines_that_failed_at_startup_are_reported_once_registered() {
    let mut h = H::with(config(), None, vec![("whisper".into(), "model file missing".into())]);
    let a = h.register();
    let errors: Vec<_> = sent(&a).into_iter().filter(|m| matches!(m, NodeToServer::NodeError(_))).collect();
    let [NodeToServer::NodeError(e)] = errors[..] else { panic!("{a:?}") };
    assert_eq!((e.node_id.as_str(), e.details.as_ref().unwrap()["model_id"].as_str()), ("n-1", Some("whisper")));
}

#[test]
fn pairing_codes_are_requested_once_registered_and_shown() {
    let mut h = H::new(CoreConfig { request_pairing_code: true, ..config() }, None);
    let a = h.register();
    assert!(matches!(sent(&a)[..], [NodeToServer::PairingCodeRequest(p)] if p.node_id == "n-1"), "{a:?}");
    let shown = h.frame(PairingCode { node_id: "n-1".into(), code: "483920".into(), expires_at: 99 });
    assert_eq!(shown, [Action::ShowPairingCode { code: "483920".into(), expires_at: 99 }]);
    let again = h.on(Event::PairingRequested);
    assert!(matches!(sent(&again)[..], [NodeToServer::PairingCodeRequest(_)]));
    // Requested while down: sent after the next registration.
    h.on(Event::Disconnected);
    assert!(h.on(Event::PairingRequested).is_empty());
    assert_eq!(sent(&h.register()).len(), 1);
}

#[test]
fn nothing_is_sent_or_started_before_registration() {
    let mut h = H::new(config(), None);
    h.on(Event::Connected);
    assert!(h.frame(job("j1")).is_empty());
    assert!(h.tick(10_000).is_empty());
    let mut bad_secret = H::new(config(), None);
    bad_secret.on(Event::Connected);
    assert!(bad_secret.frame(error_frame(ErrorCode::Unauthorized)).is_empty(), "no identity to forget");
    let a = bad_secret.on(Event::Disconnected);
    assert!(matches!(a[..], [Action::Connect { after_ms }] if after_ms >= 250), "{a:?}");
}

#[test]
fn an_engine_failure_switches_its_models_off_for_the_dispatcher_and_its_restart_on_again() {
    use tolk_node::engine::process::Notice;
    let mut h = H::new(config(), None);
    h.register();
    h.tick(0);
    let down = Notice::Down { reason: "killed by signal 11 (SIGSEGV)".into(), failures: 2, restart_in_ms: 1_000 };
    let a = h.on(Event::EngineHealth { model_ids: vec!["asr-en".into()], notice: down.clone() });
    // Reported broken at once: the dispatcher takes the model out of routing.
    let [NodeToServer::NodeError(e)] = sent(&a)[..] else { panic!("{a:?}") };
    assert_eq!(e.code, "INFERENCE_BACKEND_ERROR");
    assert_eq!(e.details.as_ref().unwrap()["model_id"], "asr-en");
    assert!(e.message.contains("SIGSEGV") && e.message.contains("2× in a row"), "{}", e.message);
    // Jobs needing it are refused meanwhile (the dispatcher moves them).
    assert_eq!(results(&h.frame(job("j1")))[0].error.as_ref().unwrap().code, JobErrorCode::ModelNotAvailable);
    let status = h.core.status();
    let asr = status.models.iter().find(|m| m.model_id == "asr-en").unwrap();
    assert!(!asr.enabled && asr.state.contains("restarting in 1000 ms (failed 2× in a row)"), "{asr:?}");
    assert!(status.recent_errors.back().unwrap().contains("engine asr-en failed"));
    // A registration meanwhile lists it disabled.
    h.on(Event::Disconnected);
    let reg = h.on(Event::Connected);
    let [NodeToServer::NodeRegister(r)] = sent(&reg)[..] else { panic!("{reg:?}") };
    assert_eq!(r.installed_models.iter().find(|m| m.model_id == "asr-en").unwrap().enabled, Some(false));
    h.frame(NodeRegisterAck { node_id: "n-1".into(), message: "registered".into(), node_token: Some("tok".into()) });
    h.tick(1);
    // Back: the next heartbeat, sent at once, switches it on again.
    h.now = 2_000;
    assert!(h.on(Event::EngineHealth { model_ids: vec!["asr-en".into()], notice: Notice::Up }).is_empty());
    assert_eq!(h.core.next_wakeup(), Some(2_000));
    let hb = h.tick(2_000);
    let [NodeToServer::NodeHeartbeat(b)] = sent(&hb)[..] else { panic!("{hb:?}") };
    let update = b.installed_models.as_ref().unwrap().iter().find(|u| u.model_id == "asr-en").unwrap();
    assert_eq!(update.enabled, Some(true));
    let asr = h.core.status().models.into_iter().find(|m| m.model_id == "asr-en").unwrap();
    assert!(asr.enabled && asr.state == "running (failed 1× since the node started; last: killed by signal 11 (SIGSEGV))", "{asr:?}");
    assert_eq!(h.core.status().models.iter().find(|m| m.model_id == "nmt-en").unwrap().state, "running");
    assert!(h.frame(job("j2")).contains(&Action::StartJob(job("j2"))));
    // A failure and recovery while not registered leave nothing stale to send.
    h.on(Event::Disconnected);
    h.on(Event::EngineHealth { model_ids: vec!["asr-en".into()], notice: down });
    h.on(Event::EngineHealth { model_ids: vec!["asr-en".into()], notice: Notice::Up });
    h.on(Event::Connected);
    let a = h.frame(NodeRegisterAck { node_id: "n-1".into(), message: "registered".into(), node_token: Some("tok".into()) });
    assert!(!sent(&a).iter().any(|m| matches!(m, NodeToServer::NodeError(_))), "{a:?}");
}
