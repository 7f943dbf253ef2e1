//! Helpers for tests over real sockets: a dispatcher on 127.0.0.1:0,
//! WebSocket clients, minimal HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tolk_dispatcher::Config;
use tolk_dispatcher::shell::seeded;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tolk_dispatcher::Error>>,
}

pub async fn start(config: Config) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(seeded(config, 1).run(listener, async move {
        let _ = rx.await;
    }));
    Server { addr, stop: Some(tx), task }
}

impl Server {
    pub async fn connect(&self, path: &str) -> Socket {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr)).await.unwrap();
        ws
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("shuts down in time").unwrap().unwrap();
    }
}

pub fn fixture(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/../protocol/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub async fn send(ws: &mut Socket, v: &Value) {
    ws.send(Ws::text(v.to_string())).await.unwrap();
}

pub async fn recv(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time").expect("open").unwrap();
        match msg {
            Ws::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Ws::Ping(_) | Ws::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next JSON frame, or `None` once the connection is closed.
pub async fn recv_opt(ws: &mut Socket) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Ws::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Ws::Ping(_) | Ws::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// Registers the original document's example node (zh → en) plus the ASR and
/// TTS models it needs; returns (socket, node_id).
pub async fn example_node(server: &Server) -> (Socket, String) {
    let mut node = server.connect("/ws/node").await;
    let mut reg = fixture("node/node_register.json");
    reg["node_id"] = Value::Null;
    let models = reg["installed_models"].as_array_mut().unwrap();
    models.push(json!({"model_id":"asr-zh","kind":"asr","src_lang":"zh","tgt_lang":null,"dialect":null,"version":"1"}));
    models.push(json!({"model_id":"tts-en","kind":"tts","src_lang":"en","tgt_lang":null,"dialect":null,"version":"1"}));
    reg["features_supported"] = json!({"emotion_detection":false,"voice_style_detection":false,"speech_rate_detection":true});
    send(&mut node, &reg).await;
    let ack = recv(&mut node).await;
    assert_eq!(ack["type"], "node_register_ack");
    assert_eq!(ack["node_token"].as_str().unwrap().len(), 64);
    (node, ack["node_id"].as_str().unwrap().to_owned())
}

/// A minimal HTTP/1.1 request (keeps the test free of an HTTP client crate).
pub async fn http(addr: SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "200" { body.to_owned() } else { format!("ERROR {status} {body}") }
}

pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")).await
}

pub async fn http_post(addr: SocketAddr, path: &str, token: &str) -> String {
    http(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
}
