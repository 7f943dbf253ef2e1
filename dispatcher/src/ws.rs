//! The dispatcher's WebSocket connections: the HTTP upgrade, a reader
//! ([`read`]) and a writer of our own, both on the one socket.
//!
//! Why our own writer: every frame the dispatcher sends carries tens of kB
//! of audio that it received and keeps as JSON text. Through a WebSocket
//! library that audio would be copied twice more: into one buffer with the
//! rest of the JSON, then into the library's output buffer. The writer here
//! sends a frame's header, its serialized head and tail, and the audio
//! literal where it lies, in one vectored write, and gathers the frames
//! queued for a connection into the same write. Server frames are never
//! masked, so the bytes on the wire are exactly these pieces. Why our own
//! reader: see [`read`] (tungstenite's took six `recv`s and a zero-fill per
//! utterance).
//!
//! One task per connection drives both directions of the one socket
//! ([`drive`]): each poll advances the write in flight, then reads.
//! Splitting the socket into halves instead put a lock between them, which
//! spun for 8 % of the CPU on two cores; driving one direction at a time
//! instead would stop reading a peer while a write to it waits, and two
//! such peers can wait on each other for ever. A pong goes out between
//! our frames, never inside one.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::core::Frame;

pub(crate) mod read;

/// An upgraded connection.
pub(crate) type Io = TokioIo<Upgraded>;

/// A connection: the socket, what has been read of it, and the pong owed.
#[derive(Debug)]
pub(crate) struct Socket<T = Io> {
    io: T,
    reader: read::Reader,
    /// The payload of the last ping not yet answered (RFC 6455 §5.5.3: only
    /// the most recent needs its pong, so a ping flood holds one).
    pong: Option<Bytes>,
    /// One of our frames is partly written: nothing else may go out now.
    mid_frame: bool,
}

impl<T> Socket<T> {
    /// A server's side of an upgraded connection: messages up to `max_size`
    /// bytes, `read_ahead` bytes read at once while waiting for a header.
    pub(crate) fn new(io: T, max_size: usize, read_ahead: usize) -> Self {
        Self { io, reader: read::Reader::new(max_size, read_ahead), pong: None, mid_frame: false }
    }
}

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

/// A text frame's header (FIN, opcode 1, no mask) for a payload of `len`
/// bytes: the header's bytes and how many of them are used.
fn text_header(len: usize) -> ([u8; 10], usize) {
    frame_header(0x81, len)
}

/// A frame's header with FIN and `opcode` set in `first`, unmasked.
fn frame_header(first: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = first;
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

/// One text frame as pieces of its payload (empty pieces are skipped).
pub(crate) trait Pieces {
    fn pieces(&self) -> [&str; 3];

    /// The payload's length.
    fn payload_len(&self) -> usize {
        self.pieces().iter().map(|p| p.len()).sum()
    }
}

impl Pieces for Frame {
    fn pieces(&self) -> [&str; 3] {
        Frame::pieces(self)
    }
}

/// What a connection is told to send.
#[derive(Debug)]
pub(crate) enum Out<P = Frame> {
    /// A frame, and when the frame that caused it was read (for the
    /// time-inside-the-dispatcher histogram).
    Frame(P, Option<Instant>),
    /// A close frame after what is queued before it.
    Close,
}

/// Frames gathered for one vectored write, and how far it has got.
#[derive(Debug)]
struct Batch<P> {
    /// A pong (header and payload) that goes out before the frames.
    control: Vec<u8>,
    frames: Vec<P>,
    headers: Vec<([u8; 10], usize)>,
    read_at: Vec<Instant>,
    bytes: usize,
    written: usize,
}

impl<P: Pieces> Batch<P> {
    fn new() -> Self {
        Self { control: Vec::new(), frames: Vec::new(), headers: Vec::new(), read_at: Vec::new(), bytes: 0, written: 0 }
    }

    fn has_room(&self) -> bool {
        batch_has_room(self.frames.len(), self.bytes)
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The pong answering a ping of `payload` (at most 125 bytes).
    fn pong(&mut self, payload: &[u8]) {
        let (header, used) = frame_header(0x8a, payload.len());
        self.control.extend_from_slice(&header[..used]);
        self.control.extend_from_slice(payload);
        self.bytes += used + payload.len();
    }

    fn push(&mut self, frame: P, read_at: Option<Instant>) {
        // Serialized here, outside the core's lock (once per frame).
        let len = frame.payload_len();
        let header = text_header(len);
        self.bytes += header.1 + len;
        self.headers.push(header);
        self.frames.push(frame);
        self.read_at.extend(read_at);
    }

    /// The slices still to write.
    fn remaining(&self) -> Vec<IoSlice<'_>> {
        let mut skip = self.written;
        let mut out = Vec::with_capacity(self.frames.len() * 4 + 1);
        let frames = self
            .frames
            .iter()
            .zip(&self.headers)
            .flat_map(|(frame, (header, used))| std::iter::once(&header[..*used]).chain(frame.pieces().into_iter().map(str::as_bytes)));
        for piece in std::iter::once(&self.control[..]).chain(frames) {
            if skip >= piece.len() {
                skip -= piece.len();
            } else {
                out.push(IoSlice::new(&piece[skip..]));
                skip = 0;
            }
        }
        out
    }

    /// Writes on; while it is partly written the socket is marked so that
    /// nothing else goes out in the middle of a frame.
    fn poll_write<T: AsyncWrite + Unpin>(&mut self, socket: &mut Socket<T>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.bytes {
            let slices = self.remaining();
            match Pin::new(&mut socket.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    socket.mid_frame = self.written < self.bytes;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether a batch of `count` frames and `bytes` bytes takes another frame.
fn batch_has_room(count: usize, bytes: usize) -> bool {
    count < BATCH_FRAMES && bytes < BATCH_BYTES
}

/// Why [`drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer's stream ended or failed.
    Gone,
    /// The peer sent a close frame (with this status code, if any).
    PeerClosed(Option<u16>),
    /// The peer broke the protocol or a limit: closed with this code.
    Refused(u16),
    /// Told to close ([`Out::Close`]), or the queue closed: what was queued is written.
    Closed,
    /// A write failed.
    WriteFailed,
    /// Cut off (`killed` fired).
    Killed,
}

/// Drives one connection until it ends: writes what arrives on `rx`
/// (gathered into vectored writes; `sent` hears when each frame that caused
/// one was read, once it is written) and hands every message read to
/// `on_message`, both directions at once in one task. Pings are answered.
pub(crate) async fn drive<T, P>(
    socket: &mut Socket<T>,
    rx: &mut mpsc::Receiver<Out<P>>,
    killed: &mut oneshot::Receiver<()>,
    mut on_message: impl FnMut(Message),
    mut sent: impl FnMut(Instant),
) -> End
where
    T: AsyncRead + AsyncWrite + Unpin,
    P: Pieces,
{
    let mut writing: Option<Batch<P>> = None;
    let mut closing = false;
    std::future::poll_fn(|cx| {
        loop {
            let mut progressed = false;
            // Write on, and gather the next batch when one is out.
            loop {
                if writing.is_none() {
                    let mut batch = Batch::new();
                    if let Some(payload) = socket.pong.take() {
                        batch.pong(&payload);
                    }
                    while !closing && batch.has_room() {
                        match rx.poll_recv(cx) {
                            Poll::Ready(Some(Out::Frame(frame, at))) => batch.push(frame, at),
                            Poll::Ready(Some(Out::Close) | None) => {
                                closing = true;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if !batch.is_empty() {
                        writing = Some(batch);
                    }
                }
                let Some(batch) = writing.as_mut() else { break };
                match batch.poll_write(socket, cx) {
                    Poll::Ready(Ok(())) => {
                        batch.read_at.iter().for_each(|&at| sent(at));
                        writing = None;
                        progressed = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::WriteFailed),
                    Poll::Pending => break,
                }
            }
            if closing && writing.is_none() {
                return Poll::Ready(End::Closed);
            }
            match socket.reader.poll_message(cx, &mut socket.io) {
                Poll::Ready(Ok(Some(Message::Close(frame)))) => {
                    return Poll::Ready(End::PeerClosed(frame.map(|f| u16::from(f.code))));
                }
                Poll::Ready(Ok(Some(msg))) => {
                    if let Message::Ping(payload) = &msg {
                        socket.pong = Some(payload.clone());
                    }
                    on_message(msg);
                    progressed = true;
                }
                Poll::Ready(Ok(None)) => return Poll::Ready(End::Gone),
                Poll::Ready(Err(e)) => {
                    tracing::debug!("WebSocket read: {e}");
                    return Poll::Ready(e.close_code().map_or(End::Gone, End::Refused));
                }
                Poll::Pending => {}
            }
            if Pin::new(&mut *killed).poll(cx).is_ready() {
                return Poll::Ready(End::Killed);
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Ends a connection that [`drive`] left as `end` says: a close frame
/// (1000 after our own close, the peer's code echoed to its close, the
/// reason's code after a refusal), written briefly (a peer that does not
/// read is not waited for), then the socket shut. Nothing when the peer is
/// gone or cut off, or when one of our frames is partly written (a close
/// frame now would land inside it).
pub(crate) async fn close<T: AsyncWrite + Unpin>(socket: &mut Socket<T>, end: End) {
    let code = match end {
        End::Closed => Some(1000),
        End::PeerClosed(code) => code,
        End::Refused(code) => Some(code),
        End::Gone | End::WriteFailed | End::Killed => return,
    };
    if socket.mid_frame {
        return;
    }
    let frame: &[u8] = match code {
        Some(code) => &[0x88, 2, (code >> 8) as u8, code as u8],
        None => &[0x88, 0],
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        socket.io.write_all(frame).await?;
        socket.io.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[derive(Debug)]
    struct Text(String, String, String);

    impl Pieces for Text {
        fn pieces(&self) -> [&str; 3] {
            [&self.0, &self.1, &self.2]
        }
    }

    fn text(i: usize, n: usize) -> Text {
        Text(format!("{{\"i\":{i},\"a\":"), format!("\"{}\"", "x".repeat(n)), "}".into())
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(text_header(0), ([0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(text_header(125).0[..2], [0x81, 125]);
        assert_eq!(text_header(126).0[..4], [0x81, 126, 0, 126]);
        assert_eq!(text_header(65_535).0[..4], [0x81, 126, 0xff, 0xff]);
        assert_eq!(text_header(65_536), ([0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10));
    }

    #[test]
    fn batches_are_bounded() {
        assert!(batch_has_room(0, 0) && batch_has_room(1, BATCH_BYTES - 1));
        assert!(!batch_has_room(1, BATCH_BYTES), "a MiB is enough for one write");
        assert!(!batch_has_room(BATCH_FRAMES, 0));
    }

    /// Frames of every length class, written while the client pings and
    /// sends (through a pipe small enough that each write is partial): the
    /// client reads each whole and in order and gets its pongs, and every
    /// frame it sent is read meanwhile.
    #[tokio::test]
    async fn both_directions_at_once_and_control_frames_never_land_inside_ours() {
        let (ours, theirs) = tokio::io::duplex(1 << 12);
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 200_000, 3, 70_000, 200_000, 200_000, 200_000, 200_000];
        let want: Vec<String> = sizes.iter().enumerate().map(|(i, &n)| text(i, n).pieces().concat()).collect();
        let client = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
            let (mut to_server, mut from_server) = ws.split();
            // Pings and frames keep coming while the client reads: they reach
            // the server in the middle of its writes.
            let sender = tokio::spawn(async move {
                for i in 0..40u8 {
                    let _ = to_server.send(Message::Ping(vec![i].into())).await;
                    let _ = to_server.send(Message::text(format!("from client {i}"))).await;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                to_server
            });
            let (mut texts, mut pongs) = (Vec::new(), 0);
            while let Some(msg) = from_server.next().await {
                match msg {
                    Ok(Message::Text(t)) => texts.push(t.as_str().to_owned()),
                    Ok(Message::Pong(_)) => pongs += 1,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
                // A slow reader: each write of ours is partial.
                tokio::task::yield_now().await;
            }
            let _ = sender.await;
            (texts, pongs)
        });
        let mut socket = Socket::new(ours, 1 << 20, 64 * 1024);
        let (tx, mut rx) = mpsc::channel(64);
        let (_kill, mut killed) = oneshot::channel();
        for (i, &n) in sizes.iter().enumerate() {
            tx.try_send(Out::Frame(text(i, n), Some(Instant::now()))).unwrap_or_else(|e| panic!("{e}"));
        }
        tx.try_send(Out::Close).unwrap_or_else(|e| panic!("{e}"));
        let mut read = Vec::new();
        let mut written = 0;
        let end = drive(&mut socket, &mut rx, &mut killed, |m| read.push(m), |_| written += 1).await;
        assert_eq!(end, End::Closed);
        assert_eq!(written, sizes.len(), "each frame's read time is reported once it is written");
        close(&mut socket, end).await;
        let (texts, pongs) = client.await.unwrap_or_default();
        assert!(texts == want, "frames arrive whole and in order");
        let from_client = read.iter().filter(|m| matches!(m, Message::Text(_))).count();
        assert!(from_client > 0, "frames are read while writes wait");
        assert!(pongs > 0, "pings are answered while our frames go out");
    }

    /// A ping is answered with its payload, between our frames; the peer's
    /// close is echoed; a frame the protocol forbids is refused with 1002.
    #[tokio::test]
    async fn pings_are_answered_closes_echoed_and_bad_frames_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = [3, 1, 4, 1];
        for (wire, want_end, want_bytes) in [
            (
                [read::client_frame(0x89, b"hi", key), read::client_frame(0x88, &[0x03, 0xe9], key)].concat(),
                End::PeerClosed(Some(1001)),
                vec![0x8a, 2, b'h', b'i', 0x88, 2, 0x03, 0xe9],
            ),
            (vec![0x81, 0x02, b'h', b'i'], End::Refused(1002), vec![0x88, 2, 0x03, 0xea]),
        ] {
            let (ours, mut theirs) = tokio::io::duplex(1 << 12);
            let mut socket = Socket::new(ours, 1 << 20, 64 * 1024);
            let (_tx, mut rx) = mpsc::channel::<Out<Text>>(4);
            let (_kill, mut killed) = oneshot::channel();
            theirs.write_all(&wire).await.unwrap_or_else(|e| panic!("{e}"));
            let end = drive(&mut socket, &mut rx, &mut killed, |_| {}, |_| {}).await;
            assert_eq!(end, want_end);
            close(&mut socket, end).await;
            drop(socket);
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, want_bytes);
        }
    }

    /// A peer that stops reading: the write waits, frames are still read,
    /// and `killed` ends it.
    #[tokio::test]
    async fn a_write_that_waits_does_not_stop_reading_and_is_cut_off() {
        let (ours, theirs) = tokio::io::duplex(1 << 12);
        let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        let mut socket = Socket::new(ours, 1 << 20, 64 * 1024);
        let (tx, mut rx) = mpsc::channel(4);
        let (kill, mut killed) = oneshot::channel::<()>();
        tx.try_send(Out::Frame(text(0, 100_000), None)).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3 {
            client.send(Message::text(format!("{i}"))).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let mut read = 0;
        let driver = drive(&mut socket, &mut rx, &mut killed, |_| read += 1, |_| {});
        let cut = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            drop(kill);
        };
        let (end, ()) = tokio::join!(driver, cut);
        assert_eq!(end, End::Killed);
        assert_eq!(read, 3, "the peer's frames were read while our write waited");
        drop(client);
    }
}
