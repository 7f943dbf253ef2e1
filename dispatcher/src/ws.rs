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
//! tungstenite still reads, and writes the control frames it answers with
//! (pong, the reply to a close). One task per connection drives both
//! directions of the one socket ([`drive`]): each poll advances the write in
//! flight, then reads. Splitting the socket into halves instead put a lock
//! between them, which spun for 8 % of the CPU on two cores; driving one
//! direction at a time instead would stop reading a peer while a write to
//! it waits, and two such peers can wait on each other for ever. While one
//! of our frames is partly written, tungstenite's writes are held
//! ([`Gated`]) so the two never interleave.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::core::Frame;

/// An upgraded connection.
pub(crate) type Io = TokioIo<Upgraded>;

/// A connection: tungstenite reads it and answers control frames; [`drive`]
/// writes our frames.
pub(crate) type Socket<T = Io> = WebSocketStream<Gated<T>>;

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

/// A connection whose writes by tungstenite can be held: while one of our
/// frames is partly written they wait (tungstenite keeps them and retries,
/// and a read goes on meanwhile), so its frames never land inside ours.
///
/// It also reads ahead: tungstenite asks for at most its read buffer
/// (`ws_read_buffer_bytes`, 8 KiB so idle connections stay small) per
/// read, which took six `recv` calls for each 43 kB utterance. Here one
/// read of up to [`READ_AHEAD`] goes into memory that is not zero-filled,
/// and tungstenite's reads are served from it; the memory is given back
/// whenever it is drained and the socket has nothing more.
#[derive(Debug)]
pub(crate) struct Gated<T> {
    io: T,
    hold: bool,
    waker: Option<Waker>,
    ahead: bytes::BytesMut,
}

/// Bytes read from the socket at once, at most.
pub(crate) const READ_AHEAD: usize = 64 * 1024;

impl<T> Gated<T> {
    pub(crate) fn new(io: T) -> Self {
        Self { io, hold: false, waker: None, ahead: bytes::BytesMut::new() }
    }

    fn held(&mut self, cx: &Context<'_>) -> bool {
        if self.hold {
            self.waker = Some(cx.waker().clone());
        }
        self.hold
    }

    fn release(&mut self) {
        self.hold = false;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Moves what fits of the bytes read ahead into `buf`.
    fn serve(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.ahead.len());
        buf.put_slice(&self.ahead[..n]);
        bytes::Buf::advance(&mut self.ahead, n);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ahead.is_empty() {
            if buf.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            this.ahead.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.ahead) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: an idle connection keeps no buffer.
                    this.ahead = bytes::BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        // Empty still: the peer closed (a read of nothing is the end).
        this.serve(buf);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.held(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
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
    frames: Vec<P>,
    headers: Vec<([u8; 10], usize)>,
    read_at: Vec<Instant>,
    bytes: usize,
    written: usize,
    started: bool,
}

impl<P: Pieces> Batch<P> {
    fn new() -> Self {
        Self { frames: Vec::new(), headers: Vec::new(), read_at: Vec::new(), bytes: 0, written: 0, started: false }
    }

    fn has_room(&self) -> bool {
        batch_has_room(self.frames.len(), self.bytes)
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
        let mut out = Vec::with_capacity(self.frames.len() * 4);
        for (frame, (header, used)) in self.frames.iter().zip(&self.headers) {
            let pieces = frame.pieces();
            for piece in std::iter::once(&header[..*used]).chain(pieces.iter().map(|p| p.as_bytes())) {
                if skip >= piece.len() {
                    skip -= piece.len();
                } else {
                    out.push(IoSlice::new(&piece[skip..]));
                    skip = 0;
                }
            }
        }
        out
    }

    /// Writes on: first whatever tungstenite has pending (whole, so
    /// nothing interleaves), then holds its writes until the batch is out.
    fn poll_write<T: AsyncRead + AsyncWrite + Unpin>(&mut self, socket: &mut Socket<T>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.started {
            match <Socket<T> as Sink<Message>>::poll_flush(Pin::new(&mut *socket), cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
            socket.get_mut().hold = true;
            self.started = true;
        }
        while self.written < self.bytes {
            let slices = self.remaining();
            match Pin::new(&mut socket.get_mut().io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        socket.get_mut().release();
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
    /// The peer closed, or its stream failed.
    Gone,
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
/// `on_message`, both directions at once in one task.
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
                if writing.is_none() && !closing {
                    let mut batch = Batch::new();
                    while batch.has_room() {
                        match rx.poll_recv(cx) {
                            Poll::Ready(Some(Out::Frame(frame, at))) => batch.push(frame, at),
                            Poll::Ready(Some(Out::Close) | None) => {
                                closing = true;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if !batch.frames.is_empty() {
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
            match socket.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    on_message(msg);
                    progressed = true;
                }
                Poll::Ready(_) => return Poll::Ready(End::Gone),
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

/// Ends a connection that [`drive`] left (not one cut off mid-write): a
/// close frame with status 1000, briefly (a peer that does not read is not
/// waited for).
pub(crate) async fn close<T: AsyncRead + AsyncWrite + Unpin>(socket: &mut Socket<T>) {
    // One of our frames is partly written (the peer left mid-write): a
    // close frame now would land inside it, and would wait for the gate.
    if socket.get_ref().hold {
        return;
    }
    let normal = tungstenite::protocol::CloseFrame { code: tungstenite::protocol::frame::coding::CloseCode::Normal, reason: "".into() };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.close(Some(normal))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
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
        let mut socket = Socket::from_raw_socket(Gated::new(ours), Role::Server, None).await;
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
        close(&mut socket).await;
        let (texts, pongs) = client.await.unwrap_or_default();
        assert!(texts == want, "frames arrive whole and in order");
        let from_client = read.iter().filter(|m| matches!(m, Message::Text(_))).count();
        assert!(from_client > 0, "frames are read while writes wait");
        assert!(pongs > 0, "pings are answered while our frames go out");
    }

    /// While one of our frames is partly written, tungstenite's pong waits
    /// and nothing of it reaches the socket; released, it goes out whole.
    #[tokio::test]
    async fn tungstenite_writes_wait_while_ours_is_in_flight() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1 << 12);
        let mut socket = Socket::from_raw_socket(Gated::new(ours), Role::Server, None).await;
        socket.get_mut().hold = true;
        // A masked ping with no payload, as a client sends it.
        theirs.write_all(&[0x89, 0x80, 1, 2, 3, 4]).await.unwrap_or_else(|e| panic!("{e}"));
        let quiet = std::time::Duration::from_millis(50);
        let ping = tokio::time::timeout(quiet, socket.next()).await;
        assert!(matches!(ping, Ok(Some(Ok(Message::Ping(_))))), "{ping:?}");
        assert!(tokio::time::timeout(quiet, socket.next()).await.is_err(), "the answer is held");
        let mut buf = [0u8; 16];
        assert!(tokio::time::timeout(quiet, theirs.read(&mut buf)).await.is_err(), "nothing written while held");
        socket.get_mut().io.write_all(b"ours").await.unwrap_or_else(|e| panic!("{e}"));
        socket.get_mut().release();
        assert!(tokio::time::timeout(quiet, socket.next()).await.is_err());
        let mut got = vec![0u8; 6];
        theirs.read_exact(&mut got).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, [b'o', b'u', b'r', b's', 0x8a, 0x00], "our bytes, then the whole pong");
    }

    /// Reads ahead: small reads get every byte in order from one large
    /// read of the socket; a drained connection with nothing more to read
    /// keeps no buffer; the peer's end reads as the end.
    #[tokio::test]
    async fn reads_ahead_in_order_and_an_idle_connection_keeps_no_buffer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut gated = Gated::new(ours);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        theirs.write_all(&sent).await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        let mut chunk = [0u8; 8 * 1024];
        while got.len() < sent.len() {
            let n = gated.read(&mut chunk).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0 && n <= chunk.len());
            got.extend_from_slice(&chunk[..n]);
            assert!(gated.ahead.len() < READ_AHEAD, "one read of the socket at a time, at most READ_AHEAD");
        }
        assert!(got == sent, "every byte, in order");
        // Drained, and the socket has nothing: the buffer is given back.
        let quiet = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(quiet, gated.read(&mut chunk)).await.is_err());
        assert_eq!(gated.ahead.capacity(), 0, "an idle connection keeps no read-ahead buffer");
        // A read as large as the read-ahead goes straight to the socket.
        theirs.write_all(b"tail").await.unwrap_or_else(|e| panic!("{e}"));
        let mut big = vec![0u8; READ_AHEAD];
        assert_eq!(gated.read(&mut big).await.unwrap_or_else(|e| panic!("{e}")), 4);
        assert_eq!(gated.ahead.capacity(), 0);
        drop(theirs);
        assert_eq!(gated.read(&mut chunk).await.unwrap_or_else(|e| panic!("{e}")), 0, "the peer's end");
    }

    /// A peer that stops reading: the write waits, frames are still read,
    /// and `killed` ends it.
    #[tokio::test]
    async fn a_write_that_waits_does_not_stop_reading_and_is_cut_off() {
        let (ours, theirs) = tokio::io::duplex(1 << 12);
        let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        let mut socket = Socket::from_raw_socket(Gated::new(ours), Role::Server, None).await;
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
