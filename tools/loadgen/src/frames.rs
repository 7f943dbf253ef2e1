//! Frames: built once through `tolk-protocol` as templates and rendered per
//! utterance (a copy of the audio, no serialization on the hot path), and
//! read by field lookup (no tree built, the audio never scanned twice).
//!
//! The lookups rely on what `tolk-protocol` emits: compact JSON, ids without
//! escapes, and the small fields before the audio.

use std::fmt::Write as _;

use crate::wsclient::TextFrame;

use tolk_protocol::node::{Hardware, InstalledModel, JobResult, NodeHeartbeat, NodePlatform, NodeRegister, ResourceUsage};
use tolk_protocol::session::{ClientHeartbeat, ClientPlatform, SessionInit, Utterance};
use tolk_protocol::{AudioFormat, ClientToServer, Features, Message, ModelKind, NodeToServer};

/// Stands for a string value in a template.
const SESSION: &str = "@@SESSION@@";
const JOB: &str = "@@JOB@@";
/// Stands for `utterance_index` (a number in the struct, so a number here).
const INDEX: u64 = 987_654_321_987_654_321;

/// The routing prefix the bare relay reads: `{"relay_to":"00000042",`, a
/// field of the JSON object (so the frame stays valid JSON), at a fixed place.
pub const RELAY_PREFIX: &str = "{\"relay_to\":\"";
/// Digits of the session number in the relay prefix.
pub const RELAY_DIGITS: usize = 8;

/// The source and target languages of every simulated session.
const SRC: &str = "zh";
const TGT: &str = "en";

/// A JSON text split around its placeholders.
#[derive(Debug, Clone)]
struct Template {
    /// `parts.len() == slots.len() + 1`.
    parts: Vec<String>,
    /// Which value goes between `parts[i]` and `parts[i + 1]`.
    slots: Vec<usize>,
}

impl Template {
    /// Splits `json` at the first occurrence of each placeholder.
    fn new(json: &str, placeholders: &[&str]) -> Self {
        let mut found: Vec<(usize, usize, usize)> =
            placeholders.iter().enumerate().filter_map(|(slot, p)| json.find(p).map(|at| (at, p.len(), slot))).collect();
        assert_eq!(found.len(), placeholders.len(), "every placeholder appears in the template");
        found.sort_unstable();
        let (mut parts, mut slots, mut from) = (Vec::new(), Vec::new(), 0);
        for (at, len, slot) in found {
            parts.push(json[from..at].to_owned());
            slots.push(slot);
            from = at + len;
        }
        parts.push(json[from..].to_owned());
        Self { parts, slots }
    }

    /// The frame with `values` in their places, after `prefix`, the first
    /// `skip` bytes of the template left out.
    fn render(&self, prefix: &str, skip: usize, values: &[&str]) -> TextFrame {
        let len = prefix.len() + self.parts.iter().map(String::len).sum::<usize>() + values.iter().map(|v| v.len()).sum::<usize>();
        let mut out = TextFrame::with_capacity(len);
        out.push_str(prefix);
        for (i, part) in self.parts.iter().enumerate() {
            out.push_str(if i == 0 { part.get(skip..).unwrap_or_default() } else { part });
            if let Some(&slot) = self.slots.get(i) {
                out.push_str(values[slot]);
            }
        }
        out
    }
}

/// `ms` of a 440 Hz tone as pcm16, base64 (what a phone sends).
pub fn tone_base64(ms: u32, sample_rate: u32) -> String {
    let n = (u64::from(ms) * u64::from(sample_rate) / 1000) as usize;
    let samples: Vec<i16> =
        (0..n).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / f64::from(sample_rate)).sin() * 8000.0) as i16).collect();
    tolk_protocol::audio::to_base64(&tolk_protocol::audio::encode_pcm16(&samples))
}

/// The `utterance` frame of any session and index.
#[derive(Debug, Clone)]
pub struct UtteranceFrames(Template);

impl UtteranceFrames {
    pub fn new(audio_ms: u32, sample_rate: u32) -> Self {
        let utt = Utterance {
            session_id: SESSION.into(),
            utterance_index: INDEX,
            manual_cut: false,
            src_lang: SRC.into(),
            tgt_lang: TGT.into(),
            dialect: None,
            features: None,
            audio: tone_base64(audio_ms, sample_rate).into(),
            audio_format: AudioFormat::Pcm16,
            sample_rate,
        };
        let json = ClientToServer::Utterance(utt).to_json();
        Self(Template::new(&json, &[SESSION, &INDEX.to_string()]))
    }

    pub fn render(&self, session_id: &str, index: u64) -> TextFrame {
        self.0.render("", 0, &[session_id, &index.to_string()])
    }
}

/// The `job_result` frame (with `tts_audio`) of one node for any job.
#[derive(Debug, Clone)]
pub struct ResultFrames(Template);

impl ResultFrames {
    pub fn new(node_id: &str, tts_ms: u32, sample_rate: u32, processing_ms: u64) -> Self {
        let result = JobResult {
            job_id: JOB.into(),
            node_id: node_id.into(),
            session_id: SESSION.into(),
            utterance_index: INDEX,
            success: true,
            text_asr: Some("今天天气不错。".into()),
            text_translated: Some("The weather is nice today.".into()),
            tts_audio: (tts_ms > 0).then(|| tone_base64(tts_ms, sample_rate).into()),
            tts_format: (tts_ms > 0).then_some(AudioFormat::Pcm16),
            tts_sample_rate: (tts_ms > 0).then_some(sample_rate),
            extra: None,
            processing_time_ms: Some(processing_ms),
            error: None,
        };
        let json = NodeToServer::JobResult(result).to_json();
        Self(Template::new(&json, &[JOB, SESSION, &INDEX.to_string()]))
    }

    /// The frame for the dispatcher.
    pub fn render(&self, job_id: &str, session_id: &str, index: u64) -> TextFrame {
        self.0.render("", 0, &[job_id, session_id, &index.to_string()])
    }

    /// The frame for the bare relay: the same object with the routing field first.
    pub fn render_for_relay(&self, session_number: u32, session_id: &str, index: u64) -> TextFrame {
        let mut prefix = String::with_capacity(RELAY_PREFIX.len() + RELAY_DIGITS + 2);
        let _ = write!(prefix, "{RELAY_PREFIX}{session_number:0width$}\",", width = RELAY_DIGITS);
        // The prefix opens the object: the template's own `{` is left out.
        self.0.render(&prefix, 1, &["relay", session_id, &index.to_string()])
    }
}

/// The session number a relay frame is addressed to.
pub fn relay_target(text: &str) -> Option<u32> {
    let digits = text.strip_prefix(RELAY_PREFIX)?.get(..RELAY_DIGITS)?;
    digits.parse().ok()
}

pub fn session_init() -> String {
    ClientToServer::SessionInit(SessionInit {
        client_version: concat!("tolk-loadgen/", env!("CARGO_PKG_VERSION")).into(),
        platform: ClientPlatform::Android,
        src_lang: SRC.into(),
        tgt_lang: TGT.into(),
        dialect: None,
        features: Some(Features::default()),
        pairing_code: None,
        session_id: None,
        resume_token: None,
        last_utterance_index: None,
        tts_format: None,
    })
    .to_json()
}

pub fn client_heartbeat(session_id: &str, timestamp: u64, last_utterance_index: Option<u64>) -> String {
    ClientToServer::ClientHeartbeat(ClientHeartbeat { session_id: session_id.into(), timestamp, last_utterance_index }).to_json()
}

/// A node with the zh → en pipeline (ASR zh, NMT zh→en, TTS en) that takes up to `max_jobs` at once.
pub fn node_register(max_jobs: u32) -> String {
    let model = |id: &str, kind: ModelKind, src: &str, tgt: Option<&str>| InstalledModel {
        model_id: id.into(),
        kind,
        src_lang: Some(src.into()),
        tgt_lang: tgt.map(Into::into),
        dialect: None,
        version: "1".into(),
        enabled: None,
    };
    NodeToServer::NodeRegister(NodeRegister {
        node_id: None,
        version: concat!("tolk-loadgen/", env!("CARGO_PKG_VERSION")).into(),
        platform: NodePlatform::Linux,
        hardware: Hardware { cpu_cores: 2, memory_gb: 8.0, gpus: Vec::new() },
        installed_models: vec![
            model("asr-zh", ModelKind::Asr, SRC, None),
            model("nmt-zh-en", ModelKind::Nmt, SRC, Some(TGT)),
            model("tts-en", ModelKind::Tts, TGT, None),
        ],
        features_supported: Features::default(),
        accept_public_jobs: true,
        node_token: None,
        auth_token: None,
        max_jobs: Some(max_jobs),
    })
    .to_json()
}

pub fn node_heartbeat(node_id: &str, timestamp: u64, running_jobs: u32) -> String {
    NodeToServer::NodeHeartbeat(NodeHeartbeat {
        node_id: node_id.into(),
        timestamp,
        resource_usage: ResourceUsage { cpu_percent: 10.0, gpu_percent: None, gpu_mem_percent: None, mem_percent: 10.0, running_jobs },
        installed_models: None,
    })
    .to_json()
}

/// Field patterns for [`str_field`] and [`u64_field`].
pub mod key {
    pub const TYPE: &str = "\"type\":\"";
    pub const JOB_ID: &str = "\"job_id\":\"";
    pub const SESSION_ID: &str = "\"session_id\":\"";
    pub const NODE_ID: &str = "\"node_id\":\"";
    pub const CODE: &str = "\"code\":\"";
    pub const UTTERANCE_INDEX: &str = "\"utterance_index\":";
    pub const REFUSED_INDEX: &str = "\"refused_index\":";
    pub const RETRY_AFTER_MS: &str = "\"retry_after_ms\":";
}

/// The string value after the first `pattern` (a `"name":"` key), up to the next quote.
pub fn str_field<'a>(text: &'a str, pattern: &str) -> Option<&'a str> {
    let from = text.find(pattern)? + pattern.len();
    let len = text[from..].find('"')?;
    Some(&text[from..from + len])
}

/// The unsigned number after the first `pattern` (a `"name":` key).
pub fn u64_field(text: &str, pattern: &str) -> Option<u64> {
    let from = text.find(pattern)? + pattern.len();
    let digits = text[from..].bytes().take_while(u8::is_ascii_digit).count();
    text[from..from + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tolk_protocol::{ServerToNode, node::JobAssign};

    #[test]
    fn rendered_frames_parse_as_the_protocol_types() {
        let utt = UtteranceFrames::new(20, 16_000).render("s-abc", 7);
        let utt = utt.as_str();
        let ClientToServer::Utterance(u) = ClientToServer::parse(utt).unwrap() else { panic!("{utt}") };
        assert_eq!((u.session_id.as_str(), u.utterance_index), ("s-abc", 7));
        assert_eq!(tolk_protocol::audio::decode_base64(&u.audio, u.audio_format, 16_000).unwrap().duration_ms(), 20);
        assert_eq!(u64_field(utt, key::UTTERANCE_INDEX), Some(7));

        let frames = ResultFrames::new("n-1", 30, 16_000, 5);
        let r = frames.render("j-1", "s-abc", 7);
        let r = r.as_str();
        let NodeToServer::JobResult(j) = NodeToServer::parse(r).unwrap() else { panic!("{r}") };
        assert_eq!((j.job_id.as_str(), j.session_id.as_str(), j.utterance_index, j.success), ("j-1", "s-abc", 7, true));

        let relayed = frames.render_for_relay(42, "r-42", 8);
        let relayed = relayed.as_str();
        assert_eq!(relay_target(relayed), Some(42));
        assert!(relayed.starts_with("{\"relay_to\":\"00000042\",\"type\":\"job_result\""), "{relayed}");
        assert!(NodeToServer::parse(relayed).is_ok(), "unknown fields are ignored");
        assert_eq!(u64_field(relayed, key::UTTERANCE_INDEX), Some(8));
    }

    #[test]
    fn field_lookups_read_a_job_assign() {
        let assign = ServerToNode::JobAssign(JobAssign {
            job_id: "j-9".into(),
            session_id: "s-1".into(),
            utterance_index: 12,
            src_lang: "zh".into(),
            tgt_lang: "en".into(),
            dialect: None,
            features: Features::default(),
            pipeline: Default::default(),
            audio: tone_base64(10, 16_000).into(),
            audio_format: AudioFormat::Pcm16,
            sample_rate: 16_000,
            deadline_ms: Some(1),
            tts_format: None,
        })
        .to_json();
        assert_eq!(str_field(&assign, key::TYPE), Some("job_assign"));
        assert_eq!(str_field(&assign, key::JOB_ID), Some("j-9"));
        assert_eq!(str_field(&assign, key::SESSION_ID), Some("s-1"));
        assert_eq!(u64_field(&assign, key::UTTERANCE_INDEX), Some(12));
        assert_eq!(str_field(&assign, key::NODE_ID), None);
    }
}
