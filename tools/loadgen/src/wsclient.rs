//! A lean WebSocket client (RFC 6455) for the simulated peers.
//!
//! The load generator shares the machine with the server it measures, so
//! every microsecond it spends is taken from the server under test.
//! `tokio-tungstenite`, which it used before, cost it more than the
//! dispatcher spent on the same utterances (134 against 116 µs each, open
//! loop): half of that was tungstenite's buffers. Each write copied the
//! 43 kB frame into a per-connection output buffer (cold in the cache with
//! 220 connections), and each read zero-filled up to 128 kB of input buffer
//! first, however few bytes arrived. Here a frame is rendered straight into
//! the buffer it is written from, behind room for its header, masked in
//! place, and written; reads go into the spare capacity of a `BytesMut`,
//! which is never zero-filled.
//!
//! Only what the simulated peers need: text frames, close; pings (which our
//! targets never send) are ignored; a fragmented or oversized frame from
//! the server is a clear error.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Error;

/// The longest frame header a client writes: 2 bytes, 8 of length, 4 of mask.
const HEADER_MAX: usize = 14;
/// Frames from the server larger than this are refused (a result with a
/// minute of TTS audio is about 2.6 MB).
const MAX_FRAME: usize = 16 << 20;
/// The handshake's response may not be longer than this.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// How much more the reader asks the kernel for at once.
const READ_CHUNK: usize = 64 << 10;
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A text frame being built: room for the longest header, then the payload.
/// Its payload is UTF-8 by construction (only `&str` goes in).
#[derive(Debug, Clone)]
pub struct TextFrame(Vec<u8>);

impl TextFrame {
    /// An empty frame with room for `payload` bytes.
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_MAX + payload);
        buf.resize(HEADER_MAX, 0);
        Self(buf)
    }

    pub fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.0.len() - HEADER_MAX
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload (UTF-8: only `&str` was pushed).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0[HEADER_MAX..]).unwrap_or_default()
    }
}

impl From<&str> for TextFrame {
    fn from(s: &str) -> Self {
        let mut f = Self::with_capacity(s.len());
        f.push_str(s);
        f
    }
}

impl From<String> for TextFrame {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

/// A text message from the server.
#[derive(Debug, Clone)]
pub struct Text(Bytes);

impl Text {
    /// The text; `None` if the server sent bytes that are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

/// A client connection, both halves.
#[derive(Debug)]
pub struct Socket {
    reader: Reader,
    writer: Writer,
}

/// The reading half: whole frames out of the bytes the kernel has.
#[derive(Debug)]
pub struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    closed: bool,
}

/// The writing half: frames masked with a fresh key each.
#[derive(Debug)]
pub struct Writer {
    write: OwnedWriteHalf,
    rng: StdRng,
}

impl Socket {
    /// Opens `ws://{addr}{path}` with `TCP_NODELAY` (the load generator must
    /// not add Nagle delays) and checks the server's handshake answer.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let mut rng = StdRng::from_os_rng();
        let key = base64::engine::general_purpose::STANDARD.encode(rng.random::<[u8; 16]>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        write.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let head_len = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err("the handshake answer has no end".into());
            }
            if read.read_buf(&mut buf).await? == 0 {
                return Err("the server closed the connection during the handshake".into());
            }
        };
        let head = buf.split_to(head_len);
        check_handshake(&String::from_utf8_lossy(&head), &key)?;
        Ok(Self { reader: Reader { read, buf, closed: false }, writer: Writer { write, rng } })
    }

    /// The next text message; `None` once the server closed the connection.
    pub async fn next_text(&mut self) -> Result<Option<Text>, Error> {
        self.reader.next_text().await
    }

    pub async fn send(&mut self, frame: TextFrame) -> Result<(), Error> {
        self.writer.send(frame).await
    }

    /// Sends a close frame and shuts the writing side.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.writer.close().await
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

/// Checks a `101 Switching Protocols` answer carrying the accept key for `key`.
fn check_handshake(head: &str, key: &str) -> Result<(), Error> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(format!("the server refused the WebSocket upgrade: {status}").into());
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(format!("{key}{ACCEPT_GUID}").as_bytes()));
    let accept = lines.filter_map(|l| l.split_once(':')).find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"));
    match accept {
        Some((_, value)) if value.trim() == expected => Ok(()),
        Some(_) => Err("the server's Sec-WebSocket-Accept does not match the key".into()),
        None => Err("the server's answer has no Sec-WebSocket-Accept".into()),
    }
}

/// A server frame's header: opcode, FIN, and where its payload lies.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
}

/// Parses a server frame's header from the start of `buf`; `Ok(None)` if
/// more bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, Error> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err("the server set reserved bits (no extension was negotiated)".into());
    }
    if b1 & 0x80 != 0 {
        return Err("the server masked a frame (RFC 6455 §5.1 forbids it)".into());
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (10, usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)),
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if payload_len > MAX_FRAME {
        return Err(format!("the server sent a frame of {payload_len} bytes (at most {MAX_FRAME})").into());
    }
    Ok(Some(Header { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, header_len, payload_len }))
}

impl Reader {
    /// The next text message; `None` once the server closed the connection.
    pub async fn next_text(&mut self) -> Result<Option<Text>, Error> {
        loop {
            if self.closed {
                return Ok(None);
            }
            if let Some(h) = parse_header(&self.buf)? {
                let total = h.header_len + h.payload_len;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(h.header_len);
                    match (h.fin, h.opcode) {
                        (true, 0x1) => return Ok(Some(Text(frame.freeze()))),
                        (true, 0x8) => {
                            self.closed = true;
                            return Ok(None);
                        }
                        // Ping and pong: our targets never ping (the dispatcher and the relay only answer).
                        (true, 0x9 | 0xa) => continue,
                        (true, 0x2) => return Err("the server sent a binary frame".into()),
                        (_, op) => return Err(format!("the server sent a fragmented or unknown frame (opcode {op})").into()),
                    }
                }
                // The frame's rest in one go where possible.
                self.buf.reserve(total - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                self.closed = true;
                if !self.buf.is_empty() {
                    return Err("the server closed the connection within a frame".into());
                }
            }
        }
    }
}

/// XORs `payload` with the 4-byte `mask`, from a payload offset of 0.
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

impl Writer {
    /// Frames, masks and writes `frame` (one write call for the whole frame).
    pub async fn send(&mut self, frame: TextFrame) -> Result<(), Error> {
        self.write_frame(0x1, frame).await
    }

    /// Sends a close frame (code 1000) and shuts the writing side.
    pub async fn close(&mut self) -> Result<(), Error> {
        let mut frame = TextFrame::with_capacity(2);
        frame.0.extend_from_slice(&1000u16.to_be_bytes());
        self.write_frame(0x8, frame).await?;
        self.write.shutdown().await?;
        Ok(())
    }

    async fn write_frame(&mut self, opcode: u8, TextFrame(mut buf): TextFrame) -> Result<(), Error> {
        let len = buf.len() - HEADER_MAX;
        let mask: [u8; 4] = self.rng.random();
        apply_mask(&mut buf[HEADER_MAX..], mask);
        let mut header = [0u8; HEADER_MAX];
        header[0] = 0x80 | opcode;
        let n = match len {
            0..=125 => {
                header[1] = 0x80 | len as u8;
                2
            }
            126..=65_535 => {
                header[1] = 0x80 | 126;
                header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                header[1] = 0x80 | 127;
                header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        header[n..n + 4].copy_from_slice(&mask);
        let start = HEADER_MAX - (n + 4);
        buf[start..HEADER_MAX].copy_from_slice(&header[..n + 4]);
        self.write.write_all(&buf[start..]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_twice_gives_the_payload_back_at_every_length() {
        for len in [0, 1, 7, 8, 9, 125, 126, 1000, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut masked = payload.clone();
            apply_mask(&mut masked, [0x12, 0x34, 0x56, 0x78]);
            let by_byte: Vec<u8> = payload.iter().enumerate().map(|(i, b)| b ^ [0x12, 0x34, 0x56, 0x78][i % 4]).collect();
            assert_eq!(masked, by_byte, "len {len}");
            apply_mask(&mut masked, [0x12, 0x34, 0x56, 0x78]);
            assert_eq!(masked, payload);
        }
    }

    #[test]
    fn headers_of_every_length_class_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None, "more bytes needed");
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some(Header { fin: true, opcode: 1, header_len: 2, payload_len: 5 }));
        assert_eq!(parse_header(&[0x81, 126, 0x01]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 0x01, 0x00]).unwrap().map(|h| h.payload_len), Some(256));
        assert_eq!(parse_header(&[0x01, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().map(|h| (h.fin, h.payload_len)), Some((false, 65_536)));
        assert!(parse_header(&[0x81, 0x85]).is_err(), "a masked server frame");
        assert!(parse_header(&[0xc1, 5]).is_err(), "a reserved bit");
        assert!(parse_header(&[0x81, 127, 0xff, 0, 0, 0, 0, 0, 0, 0]).is_err(), "too large");
    }

    #[test]
    fn only_a_matching_accept_key_completes_the_handshake() {
        // The example of RFC 6455 §1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_handshake(ok, key).unwrap();
        assert!(check_handshake(&ok.replace("s3pP", "xxxx"), key).is_err());
        assert!(check_handshake("HTTP/1.1 404 Not Found\r\n\r\n", key).is_err());
        assert!(check_handshake("HTTP/1.1 101 Switching Protocols\r\n\r\n", key).is_err());
    }

    /// Against a real tungstenite server: frames of every length class both
    /// ways (the server checks our masking), then the server's close.
    #[tokio::test]
    async fn talks_to_a_tungstenite_server() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as Ws;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            // Echo each text with a prefix until the client closes.
            while let Some(msg) = ws.next().await {
                match msg.unwrap() {
                    Ws::Text(t) => ws.send(Ws::text(format!("echo:{}", t.as_str()))).await.unwrap(),
                    Ws::Close(_) => break,
                    _ => {}
                }
            }
            ws.send(Ws::text("last")).await.ok();
        });
        let mut socket = Socket::connect(addr, "/x").await.unwrap();
        for len in [0, 5, 125, 126, 65_535, 65_536, 200_000] {
            let body: String = "é".repeat(len / 2) + &"a".repeat(len % 2);
            socket.send(TextFrame::from(body.as_str())).await.unwrap();
            let got = socket.next_text().await.unwrap().expect("an answer");
            assert_eq!(got.as_str().unwrap(), format!("echo:{body}"), "len {len}");
        }
        socket.close().await.unwrap();
        // The server's close arrives after its last text; then `None` for good.
        let mut rest = Vec::new();
        while let Some(t) = socket.next_text().await.unwrap() {
            rest.push(t.as_str().unwrap().to_owned());
        }
        assert!(rest.len() <= 1, "{rest:?}");
        assert!(socket.next_text().await.unwrap().is_none());
        server.await.unwrap();
    }
}
