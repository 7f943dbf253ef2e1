//! Property: every valid message serializes to a frame that parses (with
//! validation) back to the same message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use proptest::prelude::*;
use tolk_protocol::common::{ErrorMessage, Extra, Features};
use tolk_protocol::node::*;
use tolk_protocol::session::*;
use tolk_protocol::{AudioFormat, ClientToServer, ErrorCode, JobErrorCode, Message, ModelKind, NodeToServer, ServerToClient, ServerToNode};

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,40}"
}
fn lang() -> impl Strategy<Value = String> {
    prop_oneof![Just("zh".to_owned()), Just("en".to_owned()), "[a-z]{2,3}(-[a-z0-9]{1,8}){0,2}"]
}
fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, escapes and control characters.
    any::<String>().prop_map(|s| s.chars().take(100).collect())
}
fn b64() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/]{0,64}={0,2}".prop_filter("non-empty", |s| !s.is_empty())
}
/// Finite floats with a few decimals: JSON's number type round-trips them exactly.
fn num(max: u32) -> impl Strategy<Value = f64> {
    (0..=max * 10).prop_map(|n| f64::from(n) / 10.0)
}
fn format() -> impl Strategy<Value = AudioFormat> {
    prop_oneof![Just(AudioFormat::Pcm16), Just(AudioFormat::Wav), Just(AudioFormat::Opus)]
}
fn rate() -> impl Strategy<Value = u32> {
    prop::sample::select(tolk_protocol::validate::SAMPLE_RATES.to_vec())
}
fn features() -> impl Strategy<Value = Features> {
    any::<(bool, bool, bool)>().prop_map(|(e, v, s)| Features { emotion_detection: e, voice_style_detection: v, speech_rate_detection: s })
}
fn extra() -> impl Strategy<Value = Extra> {
    (prop::option::of(text()), prop::option::of(num(10)), prop::option::of(text())).prop_map(|(emotion, speech_rate, voice_style)| Extra {
        emotion,
        speech_rate,
        voice_style,
    })
}
fn code() -> impl Strategy<Value = String> {
    "[0-9]{6}"
}
fn model() -> impl Strategy<Value = InstalledModel> {
    (
        id(),
        prop_oneof![Just(ModelKind::Asr), Just(ModelKind::Nmt), Just(ModelKind::Tts)],
        lang(),
        lang(),
        prop::option::of(lang()),
        id(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(model_id, kind, src, tgt, dialect, version, enabled)| InstalledModel {
            tgt_lang: (kind == ModelKind::Nmt).then_some(tgt),
            model_id,
            kind,
            src_lang: Some(src),
            dialect,
            version,
            enabled,
        })
}
fn error_message() -> impl Strategy<Value = ErrorMessage> {
    let code = prop_oneof![
        Just(ErrorCode::InvalidMessage),
        Just(ErrorCode::NodeUnavailable),
        Just(ErrorCode::RateLimited),
        "[A-Z_]{3,20}".prop_map(ErrorCode::from)
    ];
    (code, text(), prop::option::of(0u64..1000)).prop_map(|(code, message, index)| match index {
        Some(i) => ErrorMessage::for_utterance(code, message, i),
        None => ErrorMessage { code, message, details: None },
    })
}

fn client_to_server() -> impl Strategy<Value = ClientToServer> {
    prop_oneof![
        (
            text(),
            lang(),
            lang(),
            prop::option::of(lang()),
            prop::option::of(features()),
            prop::option::of(code()),
            prop::option::of((id(), id(), prop::option::of(any::<u64>()))),
            prop::option::of(format())
        )
            .prop_map(|(client_version, src_lang, tgt_lang, dialect, features, pairing_code, resume, tts_format)| {
                let (session_id, resume_token, last) = match resume {
                    Some((s, t, l)) => (Some(s), Some(t), l),
                    None => (None, None, None),
                };
                ClientToServer::SessionInit(SessionInit {
                    client_version,
                    platform: ClientPlatform::Web,
                    src_lang,
                    tgt_lang,
                    dialect,
                    features,
                    pairing_code,
                    session_id,
                    resume_token,
                    last_utterance_index: last,
                    tts_format,
                })
            }),
        (
            id(),
            any::<u64>(),
            any::<bool>(),
            lang(),
            lang(),
            prop::option::of(lang()),
            prop::option::of(features()),
            b64(),
            format(),
            rate()
        )
            .prop_map(
                |(session_id, utterance_index, manual_cut, src_lang, tgt_lang, dialect, features, audio, audio_format, sample_rate)| {
                    ClientToServer::Utterance(Utterance {
                        session_id,
                        utterance_index,
                        manual_cut,
                        src_lang,
                        tgt_lang,
                        dialect,
                        features,
                        audio: audio.into(),
                        audio_format,
                        sample_rate,
                    })
                }
            ),
        (id(), any::<u64>(), prop::option::of(any::<u64>())).prop_map(|(session_id, timestamp, last_utterance_index)| {
            ClientToServer::ClientHeartbeat(ClientHeartbeat { session_id, timestamp, last_utterance_index })
        }),
        (id(), prop::option::of(text())).prop_map(|(session_id, reason)| ClientToServer::SessionClose(SessionClose { session_id, reason })),
    ]
}

fn server_to_client() -> impl Strategy<Value = ServerToClient> {
    prop_oneof![
        (id(), prop::option::of(id()), text(), prop::option::of(id())).prop_map(|(session_id, assigned_node_id, message, resume_token)| {
            ServerToClient::SessionInitAck(SessionInitAck { session_id, assigned_node_id, message, resume_token })
        }),
        (id(), any::<u64>(), id(), text(), text(), prop::option::of(b64()), prop::option::of(format()), prop::option::of(extra()))
            .prop_map(|(session_id, utterance_index, job_id, text_asr, text_translated, tts_audio, tts_format, extra)| {
                ServerToClient::TranslationResult(TranslationResult {
                    session_id,
                    utterance_index,
                    job_id,
                    text_asr,
                    text_translated,
                    tts_audio: tts_audio.map(Into::into),
                    tts_format,
                    tts_sample_rate: None,
                    extra,
                })
            }),
        (id(), any::<u64>()).prop_map(|(session_id, timestamp)| ServerToClient::ServerHeartbeat(ServerHeartbeat { session_id, timestamp })),
        id().prop_map(|session_id| ServerToClient::SessionCloseAck(SessionCloseAck { session_id })),
        error_message().prop_map(ServerToClient::Error),
    ]
}

fn node_to_server() -> impl Strategy<Value = NodeToServer> {
    prop_oneof![
        (
            prop::option::of(id()),
            text(),
            0u32..512,
            num(1024),
            prop::collection::vec((text(), num(80)), 0..3),
            prop::collection::vec(model(), 0..4),
            features(),
            any::<bool>(),
            prop::option::of(id()),
            prop::option::of(text())
        )
            .prop_map(
                |(
                    node_id,
                    version,
                    cpu_cores,
                    memory_gb,
                    gpus,
                    installed_models,
                    features_supported,
                    accept_public_jobs,
                    node_token,
                    auth_token,
                )| {
                    let gpus = gpus.into_iter().map(|(name, memory_gb)| Gpu { name, memory_gb }).collect();
                    NodeToServer::NodeRegister(NodeRegister {
                        node_id,
                        version,
                        platform: NodePlatform::Linux,
                        hardware: Hardware { cpu_cores, memory_gb, gpus },
                        installed_models,
                        features_supported,
                        accept_public_jobs,
                        node_token,
                        auth_token,
                        max_jobs: None,
                    })
                }
            ),
        (
            id(),
            any::<u64>(),
            num(100),
            prop::option::of(num(100)),
            num(100),
            any::<u32>(),
            prop::option::of(prop::collection::vec(model(), 0..3))
        )
            .prop_map(|(node_id, timestamp, cpu_percent, gpu_percent, mem_percent, running_jobs, installed_models)| {
                NodeToServer::NodeHeartbeat(NodeHeartbeat {
                    node_id,
                    timestamp,
                    resource_usage: ResourceUsage { cpu_percent, gpu_percent, gpu_mem_percent: gpu_percent, mem_percent, running_jobs },
                    installed_models: installed_models.map(|v: Vec<_>| v.into_iter().map(Into::into).collect()),
                })
            }),
        (
            id(),
            id(),
            id(),
            any::<u64>(),
            any::<bool>(),
            prop::option::of(text()),
            prop::option::of(b64()),
            prop::option::of(extra()),
            prop::option::of(any::<u64>()),
            prop_oneof![Just(JobErrorCode::NodeBusy), Just(JobErrorCode::InvalidAudio), "[A-Z_]{3,12}".prop_map(JobErrorCode::from)],
            text()
        )
            .prop_map(
                |(job_id, node_id, session_id, utterance_index, success, t, tts_audio, extra, processing_time_ms, code, message)| {
                    NodeToServer::JobResult(JobResult {
                        job_id,
                        node_id,
                        session_id,
                        utterance_index,
                        success,
                        text_asr: t.clone(),
                        text_translated: t,
                        tts_audio: tts_audio.map(Into::into),
                        tts_format: Some(AudioFormat::Wav),
                        tts_sample_rate: Some(16000),
                        extra,
                        processing_time_ms,
                        error: (!success).then_some(JobError { code, message }),
                    })
                }
            ),
        (id(), text(), text()).prop_map(|(node_id, code, message)| NodeToServer::NodeError(NodeError {
            node_id,
            code,
            message,
            details: Some(serde_json::json!({"k": [1, "two"]}))
        })),
        id().prop_map(|node_id| NodeToServer::PairingCodeRequest(PairingCodeRequest { node_id })),
    ]
}

fn server_to_node() -> impl Strategy<Value = ServerToNode> {
    prop_oneof![
        (id(), text(), prop::option::of(id())).prop_map(|(node_id, message, node_token)| ServerToNode::NodeRegisterAck(NodeRegisterAck {
            node_id,
            message,
            node_token
        })),
        (
            id(),
            id(),
            any::<u64>(),
            lang(),
            lang(),
            features(),
            any::<(bool, bool, bool)>(),
            b64(),
            format(),
            rate(),
            (prop::option::of(any::<u64>()), prop::option::of(format()))
        )
            .prop_map(
                |(
                    job_id,
                    session_id,
                    utterance_index,
                    src_lang,
                    tgt_lang,
                    features,
                    (a, n, t),
                    audio,
                    audio_format,
                    sample_rate,
                    (deadline_ms, tts_format),
                )| {
                    ServerToNode::JobAssign(JobAssign {
                        job_id,
                        session_id,
                        utterance_index,
                        src_lang,
                        tgt_lang,
                        dialect: None,
                        features,
                        pipeline: Pipeline { use_asr: a, use_nmt: n, use_tts: t },
                        audio: audio.into(),
                        audio_format,
                        sample_rate,
                        deadline_ms,
                        tts_format,
                    })
                }
            ),
        (prop_oneof![Just(NodeCommand::Drain), Just(NodeCommand::Shutdown), Just(NodeCommand::ReloadConfig)], prop::option::of(text()))
            .prop_map(|(command, reason)| ServerToNode::NodeControl(NodeControl { command, reason })),
        (id(), code(), any::<u64>()).prop_map(|(node_id, code, expires_at)| ServerToNode::PairingCode(PairingCode {
            node_id,
            code,
            expires_at
        })),
        error_message().prop_map(ServerToNode::Error),
    ]
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: M) -> Result<(), TestCaseError> {
    let frame = msg.to_json();
    let back = M::parse(&frame).map_err(|e| TestCaseError::fail(format!("{frame}: {e} ({:?})", e.field)))?;
    prop_assert_eq!(back, msg);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn client_to_server_round_trips(msg in client_to_server()) { round_trip(msg)?; }
    #[test]
    fn server_to_client_round_trips(msg in server_to_client()) { round_trip(msg)?; }
    #[test]
    fn node_to_server_round_trips(msg in node_to_server()) { round_trip(msg)?; }
    #[test]
    fn server_to_node_round_trips(msg in server_to_node()) { round_trip(msg)?; }

    /// Whatever the bytes, parsing returns (never panics), and an error names a known code.
    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        if let Err(e) = ClientToServer::parse(&s) { prop_assert_eq!(e.code, ErrorCode::InvalidMessage); }
        let _ = NodeToServer::parse(&s);
    }
}
