//! The bare WebSocket relay: the baseline the dispatcher is measured against.
//!
//! It forwards text frames unchanged and parses nothing: a session connects
//! to `/s/{session}/{node}` and its frames go to node `{node}`; a node
//! connects to `/n/{node}` and each of its frames goes to the session whose
//! number is in the frame's fixed prefix (`{"relay_to":"00000042",…`, see
//! [`crate::frames::relay_target`]). Otherwise it is built like the
//! dispatcher's shell: one receive loop and one send task per connection,
//! a bounded queue (256 frames) between them, tungstenite's default buffers.
//! `TCP_NODELAY` and the read buffer are settable ([`Options`]) to measure
//! what they change.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::frames::relay_target;

/// Frames queued to one peer (the dispatcher's default `outbound_queue`).
const QUEUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Session { me: u32, node: u32 },
    Node { me: u32 },
}

impl Role {
    fn from_path(path: &str) -> Option<Self> {
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("s"), Some(me), Some(node), None) => Some(Role::Session { me: me.parse().ok()?, node: node.parse().ok()? }),
            (Some("n"), Some(me), None, None) => Some(Role::Node { me: me.parse().ok()? }),
            _ => None,
        }
    }
}

type Routes = RwLock<HashMap<u32, mpsc::Sender<Ws>>>;

#[derive(Default)]
struct Table {
    sessions: Routes,
    nodes: Routes,
}

/// How the relay's sockets are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Set `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
    /// tungstenite's `read_buffer_size` (default 128 KiB):
    /// it is zero-filled on the first read, so every connection keeps that much resident.
    pub read_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { nodelay: true, read_buffer: WebSocketConfig::default().read_buffer_size }
    }
}

/// Serves the relay on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, options: Options, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let table = Arc::new(Table::default());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: keep serving the others.
                    Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(10)).await; continue }
                };
                let _ = stream.set_nodelay(options.nodelay);
                connections.spawn(handle(stream, table.clone(), options.read_buffer));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    connections.shutdown().await;
    Ok(())
}

async fn handle(stream: TcpStream, table: Arc<Table>, read_buffer: usize) {
    let mut path = String::new();
    // The error type is tungstenite's `Callback` contract, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else { return };
    let Some(role) = Role::from_path(&path) else { return };
    let (tx, mut rx) = mpsc::channel::<Ws>(QUEUE);
    let (routes, me) = match role {
        Role::Session { me, .. } => (&table.sessions, me),
        Role::Node { me } => (&table.nodes, me),
    };
    routes.write().unwrap_or_else(|e| e.into_inner()).insert(me, tx);
    let (mut sink, mut stream) = ws.split();
    let mut send_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let receive = async {
        while let Some(Ok(msg)) = stream.next().await {
            let Ws::Text(text) = msg else {
                if matches!(msg, Ws::Close(_)) {
                    break;
                }
                continue;
            };
            let (to_routes, to) = match role {
                Role::Session { node, .. } => (&table.nodes, Some(node)),
                Role::Node { .. } => (&table.sessions, relay_target(text.as_str())),
            };
            let Some(to) = to else { continue };
            // A peer whose queue is full (it does not read) loses the frame.
            if let Some(tx) = to_routes.read().unwrap_or_else(|e| e.into_inner()).get(&to) {
                let _ = tx.try_send(Ws::Text(text));
            }
        }
    };
    tokio::select! {
        () = receive => {}
        _ = &mut send_task => {}
    }
    send_task.abort();
    routes.write().unwrap_or_else(|e| e.into_inner()).remove(&me);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Role::from_path("/s/12/3"), Some(Role::Session { me: 12, node: 3 }));
        assert_eq!(Role::from_path("/n/3"), Some(Role::Node { me: 3 }));
        for bad in ["/", "/s/1", "/n/x", "/s/1/2/3", "/ws/session"] {
            assert_eq!(Role::from_path(bad), None, "{bad}");
        }
    }
}
