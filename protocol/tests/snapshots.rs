//! Snapshots of the serialized form of every message type, so any change to
//! the wire format shows up in review. Update with `INSTA_UPDATE=always`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use tolk_protocol::common::{ErrorMessage, Extra, Features};
use tolk_protocol::node::*;
use tolk_protocol::session::*;
use tolk_protocol::{AudioFormat, ErrorCode, JobErrorCode, Message, ModelKind, ProtocolError};

fn snap(name: &str, msg: &impl Message) {
    insta::assert_snapshot!(name, msg.to_json());
}

fn features() -> Features {
    Features { emotion_detection: true, voice_style_detection: false, speech_rate_detection: true }
}

#[test]
fn session_messages() {
    use tolk_protocol::{ClientToServer as C, ServerToClient as S};
    let init = SessionInit {
        client_version: "1.0.0".into(),
        platform: ClientPlatform::Ios,
        src_lang: "en".into(),
        tgt_lang: "es".into(),
        dialect: None,
        features: Some(features()),
        pairing_code: Some("483920".into()),
        session_id: None,
        resume_token: None,
        last_utterance_index: None,
        tts_format: None,
    };
    snap("session_init", &C::SessionInit(init.clone()));
    snap(
        "session_init_resume",
        &C::SessionInit(SessionInit {
            session_id: Some("s-1".into()),
            resume_token: Some("r-1".into()),
            last_utterance_index: Some(7),
            tts_format: Some(AudioFormat::Opus),
            ..init
        }),
    );
    snap(
        "session_init_ack",
        &S::SessionInitAck(SessionInitAck {
            session_id: "s-1".into(),
            assigned_node_id: Some("n-1".into()),
            message: "session created".into(),
            resume_token: Some("r-1".into()),
        }),
    );
    snap(
        "utterance",
        &C::Utterance(Utterance {
            session_id: "s-1".into(),
            utterance_index: 8,
            manual_cut: false,
            src_lang: "en".into(),
            tgt_lang: "es".into(),
            dialect: None,
            features: None,
            audio: "AAEC".into(),
            audio_format: AudioFormat::Pcm16,
            sample_rate: 16000,
        }),
    );
    snap(
        "translation_result",
        &S::TranslationResult(TranslationResult {
            session_id: "s-1".into(),
            utterance_index: 8,
            job_id: "j-1".into(),
            text_asr: "hello".into(),
            text_translated: "hola".into(),
            tts_audio: Some("UklGRg==".into()),
            tts_format: Some(AudioFormat::Wav),
            tts_sample_rate: None,
            extra: Some(Extra { emotion: Some("calm".into()), speech_rate: Some(3.5), voice_style: None }),
        }),
    );
    snap(
        "client_heartbeat",
        &C::ClientHeartbeat(ClientHeartbeat { session_id: "s-1".into(), timestamp: 1733800000000, last_utterance_index: Some(7) }),
    );
    snap("server_heartbeat", &S::ServerHeartbeat(ServerHeartbeat { session_id: "s-1".into(), timestamp: 1733800000500 }));
    snap("session_close", &C::SessionClose(SessionClose { session_id: "s-1".into(), reason: Some("user_finished".into()) }));
    snap("session_close_ack", &S::SessionCloseAck(SessionCloseAck { session_id: "s-1".into() }));
    snap("error_for_utterance", &S::Error(ErrorMessage::for_utterance(ErrorCode::NodeUnavailable, "no node can serve en→es", 4)));
    snap("error_for_field", &S::Error(ProtocolError::invalid_field("audio", "missing field `audio`").to_message()));
}

#[test]
fn node_messages() {
    use tolk_protocol::{NodeToServer as N, ServerToNode as S};
    let asr = InstalledModel {
        model_id: "pocketsphinx-en".into(),
        kind: ModelKind::Asr,
        src_lang: Some("en".into()),
        tgt_lang: None,
        dialect: None,
        version: "5.0".into(),
        enabled: None,
    };
    snap(
        "node_register",
        &N::NodeRegister(NodeRegister {
            node_id: None,
            version: "0.1.0".into(),
            platform: NodePlatform::Linux,
            hardware: Hardware { cpu_cores: 2, memory_gb: 23.4, gpus: vec![] },
            installed_models: vec![asr.clone()],
            features_supported: features(),
            accept_public_jobs: false,
            node_token: None,
            auth_token: Some("operator-secret".into()),
            max_jobs: Some(2),
        }),
    );
    snap(
        "node_register_ack",
        &S::NodeRegisterAck(NodeRegisterAck { node_id: "n-1".into(), message: "registered".into(), node_token: Some("t-1".into()) }),
    );
    snap(
        "node_heartbeat",
        &N::NodeHeartbeat(NodeHeartbeat {
            node_id: "n-1".into(),
            timestamp: 1733800000000,
            resource_usage: ResourceUsage {
                cpu_percent: 12.5,
                gpu_percent: None,
                gpu_mem_percent: None,
                mem_percent: 40.0,
                running_jobs: 1,
            },
            installed_models: Some(vec![tolk_protocol::node::ModelUpdate::disable(asr.model_id.clone())]),
        }),
    );
    snap(
        "job_assign",
        &S::JobAssign(JobAssign {
            job_id: "j-1".into(),
            session_id: "s-1".into(),
            utterance_index: 8,
            src_lang: "en".into(),
            tgt_lang: "es".into(),
            dialect: None,
            features: features(),
            pipeline: Pipeline::default(),
            audio: "AAEC".into(),
            audio_format: AudioFormat::Pcm16,
            sample_rate: 16000,
            deadline_ms: Some(30000),
            tts_format: Some(AudioFormat::Opus),
        }),
    );
    snap(
        "job_result_failure",
        &N::JobResult(JobResult {
            job_id: "j-1".into(),
            node_id: "n-1".into(),
            session_id: "s-1".into(),
            utterance_index: 8,
            success: false,
            text_asr: None,
            text_translated: None,
            tts_audio: None,
            tts_format: None,
            tts_sample_rate: None,
            extra: None,
            processing_time_ms: Some(3),
            error: Some(JobError { code: JobErrorCode::NodeBusy, message: "at capacity".into() }),
        }),
    );
    snap(
        "node_error",
        &N::NodeError(NodeError {
            node_id: "n-1".into(),
            code: "INFERENCE_BACKEND_ERROR".into(),
            message: "engine failed to start".into(),
            details: None,
        }),
    );
    snap("node_control_drain", &S::NodeControl(NodeControl { command: NodeCommand::Drain, reason: Some("maintenance".into()) }));
    snap("pairing_code_request", &N::PairingCodeRequest(PairingCodeRequest { node_id: "n-1".into() }));
    snap("pairing_code", &S::PairingCode(PairingCode { node_id: "n-1".into(), code: "483920".into(), expires_at: 1733800600000 }));
    snap(
        "error_unauthorized",
        &S::Error(ErrorMessage { code: ErrorCode::Unauthorized, message: "node_token does not match node_id".into(), details: None }),
    );
}
