//! The dispatcher's WebSocket connections: the HTTP upgrade, a reader
//! (tungstenite: framing, masking, size limits, UTF-8, ping and close
//! replies) and a writer of our own.
//!
//! Why our own writer: every frame the dispatcher sends carries tens of kB
//! of audio that it received and keeps as JSON text. Through a WebSocket
//! library that audio would be copied twice more: into one buffer with the
//! rest of the JSON, then into the library's output buffer. The writer here
//! sends a frame's header, its serialized head and tail, and the audio
//! literal where it lies, in one vectored write, and gathers the frames
//! queued for a connection into the same write. Server frames are never
//! masked, so the bytes on the wire are exactly these pieces.
//!
//! tungstenite still reads, and the control frames it answers with (pong,
//! the reply to a close) reach the writer through a small channel: the
//! reader's stream "writes" them there.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// An upgraded connection.
pub(crate) type Io = TokioIo<Upgraded>;

/// The reading half as tungstenite sees it.
pub(crate) type Reader = WebSocketStream<ReadSide>;

/// Control frames tungstenite may have waiting for the writer before the
/// peer counts as not reading them (a flood of pings).
const CONTROL_QUEUE: usize = 16;

/// Frames gathered into one vectored write, at most (each is up to four
/// slices; `IOV_MAX` is 1024).
const BATCH_FRAMES: usize = 64;

/// Bytes gathered into one vectored write, at most.
const BATCH_BYTES: usize = 1 << 20;

/// A WebSocket upgrade request, checked as RFC 6455 §4.2.1 asks.
#[derive(Debug)]
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

fn has_token(parts: &Parts, name: header::HeaderName, token: &str) -> bool {
    parts.headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET"));
        }
        if !has_token(parts, header::CONNECTION, "upgrade") {
            return Err((StatusCode::BAD_REQUEST, "`Connection` header did not include `upgrade`"));
        }
        if !has_token(parts, header::UPGRADE, "websocket") {
            return Err((StatusCode::BAD_REQUEST, "`Upgrade` header did not include `websocket`"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` header did not include 13"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing"));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).map_err(|_| (StatusCode::BAD_REQUEST, "bad `Sec-WebSocket-Key`"))?;
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err((StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(Self { on_upgrade, accept })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `serve` on the upgraded
    /// connection once the client has it.
    pub(crate) fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response()
    }
}

/// Splits an upgraded connection into tungstenite's reader and our
/// writer's half, joined by the control channel.
pub(crate) async fn split(io: Io, config: WebSocketConfig) -> (Reader, WriteHalf<Io>, mpsc::Receiver<Vec<u8>>) {
    let (rd, wr) = tokio::io::split(io);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let reader = WebSocketStream::from_raw_socket(ReadSide { rd, control }, Role::Server, Some(config)).await;
    (reader, wr, control_rx)
}

/// The stream tungstenite reads: the connection's reading half, and, for
/// what tungstenite writes (control frames only: it never sends our data),
/// the channel to the writer. What it writes at once are whole frames.
#[derive(Debug)]
pub(crate) struct ReadSide {
    rd: ReadHalf<Io>,
    control: mpsc::Sender<Vec<u8>>,
}

impl AsyncRead for ReadSide {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.control.try_send(buf.to_vec()) {
            Ok(()) => Ok(buf.len()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(io::Error::other("peer does not read its control frames")),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A text frame's header (FIN, opcode 1, no mask) for a payload of `len`
/// bytes: the header's bytes and how many of them are used.
fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x81;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A close frame with status 1000 (normal closure).
pub(crate) const CLOSE_NORMAL: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// Whether `bytes` (what tungstenite wrote, whole frames) start with a
/// close frame: after it nothing more may be sent.
pub(crate) fn is_close(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0x0f == 0x8)
}

/// One text frame as pieces of its payload (empty pieces are skipped).
pub(crate) trait Pieces {
    fn pieces(&self) -> [&str; 3];
}

impl Pieces for crate::core::Frame {
    fn pieces(&self) -> [&str; 3] {
        crate::core::Frame::pieces(self)
    }
}

/// Writes `frames` as text frames in as few vectored writes as the socket
/// takes.
pub(crate) async fn write_text_frames<W, P>(w: &mut W, frames: &[P]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    P: Pieces,
{
    let headers: Vec<([u8; 10], usize)> = frames.iter().map(|f| text_header(f.pieces().iter().map(|p| p.len()).sum())).collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 4);
    for (frame, (header, used)) in frames.iter().zip(&headers) {
        slices.push(IoSlice::new(&header[..*used]));
        slices.extend(frame.pieces().iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p.as_bytes())));
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Whether a batch of `count` frames and `bytes` bytes takes another frame.
pub(crate) fn batch_has_room(count: usize, bytes: usize) -> bool {
    count < BATCH_FRAMES && bytes < BATCH_BYTES
}

/// Writes control bytes (whole frames from tungstenite) as they are.
pub(crate) async fn write_control<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    struct Text(String, String, String);

    impl Pieces for Text {
        fn pieces(&self) -> [&str; 3] {
            [&self.0, &self.1, &self.2]
        }
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(text_header(0), ([0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(text_header(125).0[..2], [0x81, 125]);
        assert_eq!(text_header(126).0[..4], [0x81, 126, 0, 126]);
        assert_eq!(text_header(65_535).0[..4], [0x81, 126, 0xff, 0xff]);
        assert_eq!(text_header(65_536), ([0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10));
        assert!(is_close(&CLOSE_NORMAL) && !is_close(&[0x89, 0]) && !is_close(&[]));
    }

    /// What we write, a WebSocket client reads as the frames we meant,
    /// whatever their sizes, gathered or not.
    #[tokio::test]
    async fn a_client_reads_the_pieces_as_whole_text_frames() {
        let (ours, theirs) = tokio::io::duplex(1 << 12);
        let reader = tokio::spawn(async move {
            let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
            let mut got = Vec::new();
            while let Some(Ok(msg)) = client.next().await {
                match msg {
                    Message::Text(t) => got.push(t.as_str().to_owned()),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            got
        });
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 200_000];
        let frames: Vec<Text> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Text(format!("{{\"i\":{i},\"a\":"), format!("\"{}\"", "x".repeat(n)), "}".into()))
            .collect();
        let mut w = ours;
        write_text_frames(&mut w, &frames[..3]).await.unwrap_or_else(|e| panic!("{e}"));
        write_text_frames(&mut w, &frames[3..]).await.unwrap_or_else(|e| panic!("{e}"));
        write_text_frames(&mut w, &[Text(String::new(), String::new(), String::new())]).await.unwrap_or_else(|e| panic!("{e}"));
        write_control(&mut w, &CLOSE_NORMAL).await.unwrap_or_else(|e| panic!("{e}"));
        let got = reader.await.unwrap_or_default();
        let want: Vec<String> = frames.iter().map(|f| f.pieces().concat()).chain([String::new()]).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "frames arrive whole and in order");
    }

    #[test]
    fn batches_are_bounded() {
        assert!(batch_has_room(0, 0) && batch_has_room(1, BATCH_BYTES - 1));
        assert!(!batch_has_room(1, BATCH_BYTES), "a MiB is enough for one write");
        assert!(!batch_has_room(BATCH_FRAMES, 0));
    }
}
