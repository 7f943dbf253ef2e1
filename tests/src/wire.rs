//! Raw clients: a WebSocket that sends and reads single frames (for tests
//! that count every frame or send bad ones), a minimal HTTP/1.1 client, and
//! builders for the frames the tests send.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tolk_protocol::audio;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`recv`] waits for a frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens `ws://ADDR{path}` (`/ws/session` or `/ws/node`). The client's own
/// frame limit is lifted: tests send frames far beyond the server's.
pub async fn connect(addr: SocketAddr, path: &str) -> Socket {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}{path}"), Some(config), false),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

pub async fn send(ws: &mut Socket, frame: &Value) {
    ws.send(Ws::text(frame.to_string())).await.unwrap();
}

pub async fn send_text(ws: &mut Socket, text: impl Into<String>) {
    ws.send(Ws::text(text.into())).await.unwrap();
}

pub async fn send_binary(ws: &mut Socket, bytes: Vec<u8>) {
    ws.send(Ws::binary(bytes)).await.unwrap();
}

/// The next JSON frame, heartbeats skipped, or `None` when nothing came
/// within `limit`. Panics on a closed connection.
pub async fn recv_within(ws: &mut Socket, limit: Duration) -> Option<Value> {
    read(ws, limit, true).await
}

/// The next JSON frame, heartbeats included, within [`RECV_TIMEOUT`].
pub async fn recv_any(ws: &mut Socket) -> Value {
    read(ws, RECV_TIMEOUT, false).await.expect("a frame in time")
}

async fn read(ws: &mut Socket, limit: Duration, skip_heartbeats: bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the connection closed"),
            Ok(Some(Err(e))) => panic!("the connection failed: {e}"),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Ws::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("the server sent bad JSON ({e}): {t}"));
                if !skip_heartbeats || v["type"] != "server_heartbeat" {
                    return Some(v);
                }
            }
            Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_) => {}
            Ws::Binary(_) => panic!("the server sent a binary frame"),
            Ws::Close(c) => panic!("the server closed the connection: {c:?}"),
        }
    }
}

/// The next JSON frame (heartbeats skipped), within [`RECV_TIMEOUT`].
pub async fn recv(ws: &mut Socket) -> Value {
    recv_within(ws, RECV_TIMEOUT).await.expect("a frame in time")
}

/// The next frame, which must be an `error` with `code`; returns it.
pub async fn expect_error(ws: &mut Socket, code: &str) -> Value {
    let e = recv(ws).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{e}");
    assert!(!e["message"].as_str().unwrap_or_default().is_empty(), "an error says what is wrong: {e}");
    e
}

/// True when the server ends the connection within 10 s (a close frame,
/// end of stream or a reset), skipping frames before that.
pub async fn closed_by_server(ws: &mut Socket) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Ws::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A `session_init` for a session `en` → `es`.
pub fn session_init() -> Value {
    json!({"type": "session_init", "client_version": "tolk-e2e", "platform": "web", "src_lang": "en", "tgt_lang": "es"})
}

/// Opens a session; returns the socket and the `session_init_ack`.
pub async fn open_session(addr: SocketAddr, init: &Value) -> (Socket, Value) {
    let mut ws = connect(addr, "/ws/session").await;
    send(&mut ws, init).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "session_init_ack", "{ack}");
    (ws, ack)
}

/// An `utterance` `en` → `es` of 16 kHz speech, as wav.
pub fn utterance(session_id: &str, index: u64, samples: &[i16]) -> Value {
    json!({
        "type": "utterance", "session_id": session_id, "utterance_index": index, "manual_cut": false,
        "src_lang": "en", "tgt_lang": "es", "dialect": null,
        "audio": audio::to_base64(&audio::encode_wav(samples, crate::speech::RATE)), "audio_format": "wav", "sample_rate": crate::speech::RATE,
    })
}

/// The utterance index an outcome frame (`translation_result`, or `error`
/// with `details.utterance_index`) is for; `None` for any other frame.
pub fn outcome_index(frame: &Value) -> Option<u64> {
    match frame["type"].as_str() {
        Some("translation_result") => frame["utterance_index"].as_u64(),
        Some("error") => frame["details"]["utterance_index"].as_u64(),
        _ => None,
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`); returns the status and
/// the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an HTTP answer in time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}
