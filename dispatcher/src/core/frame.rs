//! [`Frame`]: an outgoing message that is serialized when first sent, by
//! the shell's send task, not by the core under its lock. Only the decision
//! needs the lock; turning a result into JSON does not. A frame is built once
//! and shared: a retried job's `job_assign` and a resumed session's
//! retained outcomes are the same frame, serialized at most once.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tolk_protocol::{Message, ServerToClient, ServerToNode};

/// A message still to be serialized.
#[derive(Debug)]
enum Pending {
    Client(ServerToClient),
    Node(ServerToNode),
}

#[derive(Debug)]
struct Inner {
    text: OnceLock<Box<str>>,
    /// Taken by the first serialization.
    pending: Mutex<Option<Pending>>,
    /// Fixed at construction (budgets add and subtract the same number).
    weight: usize,
}

/// A shared outgoing text frame (cheap to clone).
#[derive(Debug, Clone)]
pub struct Frame(Arc<Inner>);

/// What a message will weigh as text, for memory budgets, without
/// serializing it: its audio (the bulk) plus a margin for the rest.
fn estimate(p: &Pending) -> usize {
    const REST: usize = 512;
    match p {
        Pending::Client(ServerToClient::TranslationResult(r)) => {
            REST + r.tts_audio.as_ref().map_or(0, |a| a.len()) + r.text_asr.len() + r.text_translated.len()
        }
        Pending::Node(ServerToNode::JobAssign(j)) => REST + j.audio.len(),
        Pending::Client(_) | Pending::Node(_) => REST,
    }
}

impl Frame {
    fn lazy(p: Pending) -> Self {
        let weight = estimate(&p);
        Self(Arc::new(Inner { text: OnceLock::new(), pending: Mutex::new(Some(p)), weight }))
    }

    /// A frame for a session connection.
    pub fn client(msg: ServerToClient) -> Self {
        Self::lazy(Pending::Client(msg))
    }

    /// A frame for a node connection.
    pub fn node(msg: ServerToNode) -> Self {
        Self::lazy(Pending::Node(msg))
    }

    /// A frame whose text is known already: it came from another
    /// dispatcher or from the cluster's store, and is passed on verbatim.
    pub fn from_text(text: String) -> Self {
        let weight = text.len();
        let cell = OnceLock::new();
        let _ = cell.set(text.into_boxed_str());
        Self(Arc::new(Inner { text: cell, pending: Mutex::new(None), weight }))
    }

    /// The JSON text, serialized now if no one has yet.
    pub fn text(&self) -> &str {
        self.0.text.get_or_init(|| {
            let pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
            match pending {
                Some(Pending::Client(m)) => m.to_json().into_boxed_str(),
                Some(Pending::Node(m)) => m.to_json().into_boxed_str(),
                // Unreachable: `get_or_init` runs one initializer.
                None => Box::from(""),
            }
        })
    }

    /// The budget weight (stable: an estimate fixed when built).
    pub fn weight(&self) -> usize {
        self.0.weight
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.text() == other.text()
    }
}

/// The frame's text as bytes, so a shell can hand the frame itself to a
/// socket as the owner of its buffer (no copy of tens of kB per send).
impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.text().as_bytes()
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
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
        assert!(f.0.text.get().is_none(), "not serialized by building it");
        assert_eq!(g.text(), r#"{"type":"server_heartbeat","session_id":"s-1","timestamp":5}"#);
        assert!(
            f.0.text.get().is_some() && f.0.pending.lock().map(|p| p.is_none()).unwrap_or(false),
            "the message is dropped once it is text"
        );
        assert_eq!(f.to_string(), g.text());
        assert_eq!(f.weight(), 512);
    }
}
