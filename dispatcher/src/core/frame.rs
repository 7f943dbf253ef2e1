//! [`Frame`]: an outgoing message that is serialized when first sent, by
//! the shell's send task, not by the core under its lock. Only the decision
//! needs the lock; turning a result into JSON does not. A frame is built once
//! and shared: a retried job's `job_assign` and a resumed session's
//! retained outcomes are the same frame, serialized at most once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tolk_protocol::{Message, ServerToClient, ServerToNode, Spliced};

/// The message a frame was built from.
#[derive(Debug)]
enum Source {
    Client(ServerToClient),
    Node(ServerToNode),
    /// Text from another dispatcher or the cluster's store, passed on verbatim.
    Text(Box<str>),
}

#[derive(Debug)]
struct Inner {
    source: Source,
    /// The message serialized with its bulk literal left out (the literal
    /// stays in `source` and is written from there).
    spliced: OnceLock<Spliced>,
    /// The whole text joined, only for those that need one buffer (the
    /// cluster's link); a socket is written the pieces.
    joined: OnceLock<Box<str>>,
    /// Fixed at construction (budgets add and subtract the same number).
    weight: usize,
}

/// A shared outgoing text frame (cheap to clone).
#[derive(Debug, Clone)]
pub struct Frame(Arc<Inner>);

/// What a message will weigh as text, for memory budgets, without
/// serializing it: its audio (the bulk) plus a margin for the rest.
fn estimate(s: &Source) -> usize {
    const REST: usize = 512;
    match s {
        Source::Client(ServerToClient::TranslationResult(r)) => {
            REST + r.tts_audio.as_ref().map_or(0, |a| a.raw_json().len()) + r.text_asr.len() + r.text_translated.len()
        }
        Source::Node(ServerToNode::JobAssign(j)) => REST + j.audio.raw_json().len(),
        Source::Client(_) | Source::Node(_) => REST,
        Source::Text(t) => t.len(),
    }
}

impl Frame {
    fn new(source: Source) -> Self {
        let weight = estimate(&source);
        Self(Arc::new(Inner { source, spliced: OnceLock::new(), joined: OnceLock::new(), weight }))
    }

    /// A frame for a session connection.
    pub fn client(msg: ServerToClient) -> Self {
        Self::new(Source::Client(msg))
    }

    /// A frame for a node connection.
    pub fn node(msg: ServerToNode) -> Self {
        Self::new(Source::Node(msg))
    }

    /// A frame whose text is known already: it came from another
    /// dispatcher or from the cluster's store, and is passed on verbatim.
    pub fn from_text(text: String) -> Self {
        Self::new(Source::Text(text.into_boxed_str()))
    }

    fn spliced(&self) -> &Spliced {
        self.0.spliced.get_or_init(|| match &self.0.source {
            Source::Client(m) => m.to_json_spliced(),
            Source::Node(m) => m.to_json_spliced(),
            Source::Text(_) => Spliced { text: String::new(), at: None },
        })
    }

    /// The frame's text in up to three pieces, in order: serialized now if
    /// no one has yet (once per frame, by whoever sends it first; never under
    /// the core's lock), the audio literal written from the message itself.
    /// A socket writes them as they are, without joining them.
    pub fn pieces(&self) -> [&str; 3] {
        if let Source::Text(t) = &self.0.source {
            return [t, "", ""];
        }
        let Spliced { text, at } = self.spliced();
        let literal = match &self.0.source {
            Source::Client(m) => m.bulk_literal(),
            Source::Node(m) => m.bulk_literal(),
            Source::Text(_) => None,
        };
        match (at, literal) {
            (Some(at), Some(literal)) => [text.get(..*at).unwrap_or_default(), literal, text.get(at + 2..).unwrap_or_default()],
            _ => [text, "", ""],
        }
    }

    /// The JSON text as one string (joined once, on first use).
    pub fn text(&self) -> &str {
        if let Source::Text(t) = &self.0.source {
            return t;
        }
        self.0.joined.get_or_init(|| self.pieces().concat().into_boxed_str())
    }

    /// The budget weight (stable: an estimate fixed when built).
    pub fn weight(&self) -> usize {
        self.0.weight
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.pieces().concat() == other.pieces().concat()
    }
}

/// The frame's text as bytes, so the cluster's link can hand the frame
/// itself to NATS as the owner of its buffer.
impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.text().as_bytes()
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pieces().iter().try_for_each(|p| f.write_str(p))
    }
}

impl super::order::Weight for Frame {
    fn weight(&self) -> usize {
        Frame::weight(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tolk_protocol::session::ServerHeartbeat;

    #[test]
    fn serialized_once_when_first_read_and_shared_by_clones() {
        let f = Frame::client(ServerToClient::ServerHeartbeat(ServerHeartbeat { session_id: "s-1".into(), timestamp: 5 }));
        let g = f.clone();
        assert!(f.0.spliced.get().is_none(), "not serialized by building it");
        assert_eq!(g.text(), r#"{"type":"server_heartbeat","session_id":"s-1","timestamp":5}"#);
        assert!(f.0.spliced.get().is_some(), "serialized once, for both");
        assert_eq!(f.to_string(), g.text());
        assert_eq!(f.weight(), 512);
    }

    #[test]
    fn the_audio_is_a_piece_of_its_own_written_from_the_message() {
        let audio = "QUJD".repeat(1_000);
        let text = format!(
            r#"{{"type":"job_assign","job_id":"j-1","session_id":"s-1","utterance_index":3,"src_lang":"en","tgt_lang":"es","audio":"{audio}","audio_format":"pcm16","sample_rate":16000}}"#
        );
        let msg = ServerToNode::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let ServerToNode::JobAssign(j) = &msg else { panic!() };
        let literal = j.audio.raw_json().as_ptr();
        let text = msg.to_json();
        let f = Frame::node(msg);
        let [head, bulk, tail] = f.pieces();
        assert_eq!(bulk.as_ptr(), literal, "the literal is not copied");
        assert!(head.ends_with(r#""audio":"#) && tail.starts_with(r#","audio_format""#), "{head} … {tail}");
        assert!(bulk.len() > 4_000 && head.len() + tail.len() < 400);
        assert_eq!(f.to_string(), text);
        assert_eq!(f.pieces().concat().len(), text.len());
        assert_eq!(f.text(), text);
        let t = Frame::from_text(text.clone());
        assert_eq!(t.pieces(), [text.as_str(), "", ""]);
        assert_eq!(t, f);
    }
}
