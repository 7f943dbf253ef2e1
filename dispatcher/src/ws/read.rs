//! Reading a client's WebSocket frames (RFC 6455 §5), ours rather than
//! tungstenite's, for what each utterance costs.
//!
//! tungstenite reads at most its read buffer per `recv` (so a 43 kB
//! utterance took six with the 8 KiB that keeps idle connections small),
//! and zero-fills that buffer before each read. Here a read goes into
//! memory that is not zero-filled, as much as the frame still lacks (or up
//! to `read_ahead` while waiting for a header), and the payload is unmasked
//! in place and handed on as a slice of that memory. The buffer is given
//! back whenever it is drained and the socket has nothing more, so an idle
//! connection holds none.
//!
//! What a server must refuse is refused, with the close code the RFC
//! gives: unmasked frames, reserved bits (no extension is agreed), unknown
//! opcodes, fragmented or long control frames, a continuation with nothing
//! to continue or a new message inside a fragmented one (1002); text that
//! is not UTF-8 (1007); a frame or message over the limit, refused from
//! its header before its payload is read (1009).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Why the peer's stream cannot be read on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("a text message that is not UTF-8")]
    NotUtf8,
    #[error("a message of {size} bytes; at most {max}")]
    TooBig { size: usize, max: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The close code that tells the peer why (none for a broken connection).
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            ReadError::Protocol(_) => Some(1002),
            ReadError::NotUtf8 => Some(1007),
            ReadError::TooBig { .. } => Some(1009),
            ReadError::Io(_) => None,
        }
    }
}

/// A frame's header, parsed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    key: [u8; 4],
    /// Bytes of the header.
    len: usize,
    /// Bytes of the payload.
    payload: usize,
}

/// What the buffered bytes hold.
#[derive(Debug)]
enum Step {
    /// A whole message.
    Message(Message),
    /// A fragment, taken in: look again.
    Fragment,
    /// At least this many more bytes are needed.
    Need(usize),
}

/// One connection's reading state.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: BytesMut,
    /// The largest frame, and message, accepted.
    max_size: usize,
    /// Bytes read at once while waiting for a frame's header.
    read_ahead: usize,
    /// A fragmented message so far: whether it is text, and its bytes.
    partial: Option<(bool, BytesMut)>,
}

impl Reader {
    pub(crate) fn new(max_size: usize, read_ahead: usize) -> Self {
        Self { buf: BytesMut::new(), max_size, read_ahead: read_ahead.max(64), partial: None }
    }

    /// The next message; `None` when the peer's stream ended.
    pub(crate) fn poll_message<T: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
    ) -> Poll<Result<Option<Message>, ReadError>> {
        loop {
            let need = match self.step()? {
                Step::Message(m) => return Poll::Ready(Ok(Some(m))),
                Step::Fragment => continue,
                Step::Need(n) => n,
            };
            // As much as the frame lacks, or a read-ahead's worth while its
            // length is unknown; never nothing (a read of nothing is the end).
            let want = need.max(if self.buf.len() < 14 { self.read_ahead } else { 1 });
            if self.buf.capacity() - self.buf.len() < want && !self.buf.try_reclaim(want) {
                // Exactly what is wanted, not `reserve`'s doubling: a payload
                // is a slice of this buffer and keeps all of it while its
                // job runs.
                let mut grown = BytesMut::with_capacity(self.buf.len() + want);
                grown.extend_from_slice(&self.buf);
                self.buf = grown;
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Nothing to read: an idle connection keeps no buffer.
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The bytes held now: 0 once drained and idle.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |(_, m)| m.capacity())
    }

    fn header(&self) -> Result<Result<Header, usize>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(Err(2 - b.len()));
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        if rsv != 0 {
            return Err(ReadError::Protocol("reserved bits set, and no extension was agreed"));
        }
        if b[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("a client's frames must be masked"));
        }
        let (payload, at) = match b[1] & 0x7f {
            126 if b.len() < 4 => return Ok(Err(4 - b.len())),
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(Err(10 - b.len())),
            127 => {
                let n = u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
                if n >> 63 != 0 {
                    return Err(ReadError::Protocol("the most significant bit of a 64-bit length is set"));
                }
                (usize::try_from(n).unwrap_or(usize::MAX), 10)
            }
            n => (usize::from(n), 2),
        };
        if opcode >= 8 && (!fin || payload > 125) {
            return Err(ReadError::Protocol("a control frame is fragmented or longer than 125 bytes"));
        }
        // Refused from the header: the payload is never buffered.
        let so_far = if opcode == 0 { self.partial.as_ref().map_or(0, |(_, m)| m.len()) } else { 0 };
        if payload > self.max_size || so_far + payload > self.max_size {
            return Err(ReadError::TooBig { size: so_far.saturating_add(payload), max: self.max_size });
        }
        if b.len() < at + 4 {
            return Ok(Err(at + 4 - b.len()));
        }
        Ok(Ok(Header { fin, opcode, key: [b[at], b[at + 1], b[at + 2], b[at + 3]], len: at + 4, payload }))
    }

    fn step(&mut self) -> Result<Step, ReadError> {
        let h = match self.header()? {
            Ok(h) => h,
            Err(need) => return Ok(Step::Need(need)),
        };
        let whole = h.len + h.payload;
        if self.buf.len() < whole {
            return Ok(Step::Need(whole - self.buf.len()));
        }
        let mut payload = self.buf.split_to(whole);
        payload.advance(h.len);
        unmask(&mut payload, h.key);
        let message = match h.opcode {
            0 => {
                let Some((text, mut so_far)) = self.partial.take() else {
                    return Err(ReadError::Protocol("a continuation frame with no message to continue"));
                };
                so_far.extend_from_slice(&payload);
                if !h.fin {
                    self.partial = Some((text, so_far));
                    return Ok(Step::Fragment);
                }
                data(text, so_far.freeze())?
            }
            1 | 2 => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("a new message before the fragmented one ended"));
                }
                if !h.fin {
                    self.partial = Some((h.opcode == 1, payload));
                    return Ok(Step::Fragment);
                }
                data(h.opcode == 1, payload.freeze())?
            }
            8 => Message::Close(close(&payload)?),
            9 => Message::Ping(payload.freeze()),
            10 => Message::Pong(payload.freeze()),
            _ => return Err(ReadError::Protocol("an unknown opcode")),
        };
        Ok(Step::Message(message))
    }
}

fn data(text: bool, payload: Bytes) -> Result<Message, ReadError> {
    if !text {
        return Ok(Message::Binary(payload));
    }
    Utf8Bytes::try_from(payload).map(Message::Text).map_err(|_| ReadError::NotUtf8)
}

/// A close frame's payload: nothing, or a code the RFC allows on the wire
/// and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Option<CloseFrame>, ReadError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() { Ok(None) } else { Err(ReadError::Protocol("a close frame of one byte")) };
    };
    let code = u16::from_be_bytes(*code);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(ReadError::Protocol("a close code that may not be sent"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
    Ok(Some(CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() }))
}

/// XORs `data` with the masking key (RFC 6455 §5.3), eight bytes at a time.
fn unmask(data: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let (words, rest) = data.as_chunks_mut::<8>();
    for w in words {
        *w = (u64::from_ne_bytes(*w) ^ word).to_ne_bytes();
    }
    // `rest` starts at a multiple of 8, so the key lines up again.
    for (b, k) in rest.iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// A client's frame, masked with `key`: `first` is FIN, RSV and opcode.
#[cfg(test)]
pub(crate) fn client_frame(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    use super::client_frame as frame;

    /// A stream that hands out `wire` at most `chunk` bytes per read, then ends.
    struct Trickle {
        wire: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.chunk.min(buf.remaining()).min(self.wire.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.wire[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Every message in `wire`, read `chunk` bytes at a time, and how it ended.
    fn read_all(wire: Vec<u8>, chunk: usize, max: usize) -> (Vec<Message>, Result<(), ReadError>) {
        let mut io = Trickle { wire, at: 0, chunk };
        let mut reader = Reader::new(max, 64 * 1024);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        loop {
            match reader.poll_message(&mut cx, &mut io) {
                Poll::Ready(Ok(Some(m))) => got.push(m),
                Poll::Ready(Ok(None)) => return (got, Ok(())),
                Poll::Ready(Err(e)) => return (got, Err(e)),
                Poll::Pending => unreachable!("the stream is always ready"),
            }
        }
    }

    fn text(n: usize) -> String {
        (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
    }

    #[test]
    fn frames_of_every_length_class_in_any_chunking() {
        let sizes = [0usize, 1, 7, 8, 9, 125, 126, 65_535, 65_536, 200_000];
        let mut wire = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            wire.extend(frame(0x81, text(n).as_bytes(), [i as u8, 0x5a, 0xa5, 0xff]));
        }
        wire.extend(frame(0x82, &[0, 1, 2, 255], [9, 8, 7, 6]));
        for chunk in [1, 3, 1000, 1 << 20] {
            let (got, end) = read_all(wire.clone(), chunk, 1 << 20);
            assert!(end.is_ok(), "{end:?}");
            assert_eq!(got.len(), sizes.len() + 1);
            for (m, &n) in got.iter().zip(&sizes) {
                assert!(matches!(m, Message::Text(t) if t.as_str() == text(n)), "{n} bytes, chunks of {chunk}");
            }
            assert_eq!(got[sizes.len()], Message::Binary(Bytes::from_static(&[0, 1, 2, 255])));
        }
    }

    #[test]
    fn fragments_join_and_control_frames_come_between_them() {
        let key = [1, 2, 3, 4];
        let mut wire = frame(0x01, b"hel", key);
        wire.extend(frame(0x89, b"are you there", key));
        wire.extend(frame(0x00, b"lo ", key));
        wire.extend(frame(0x8a, b"", key));
        wire.extend(frame(0x80, "wörld".as_bytes(), key));
        wire.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], key));
        let (got, end) = read_all(wire, 2, 1 << 20);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(got[0], Message::Ping(Bytes::from_static(b"are you there")));
        assert_eq!(got[1], Message::Pong(Bytes::new()));
        assert_eq!(got[2], Message::text("hello wörld"));
        assert!(matches!(&got[3], Message::Close(Some(c)) if u16::from(c.code) == 1000 && c.reason.as_str() == "bye"), "{:?}", got[3]);
    }

    #[test]
    fn what_a_server_must_refuse_is_refused_with_its_close_code() {
        let key = [7, 7, 7, 7];
        let mut unmasked = frame(0x81, b"hi", key);
        unmasked[1] &= 0x7f;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (frame(0xc1, b"hi", key), 1002),                                   // RSV1 without an extension
            (frame(0x83, b"hi", key), 1002),                                   // opcode 3
            (frame(0x09, b"", key), 1002),                                     // a fragmented ping
            (frame(0x89, &[0; 126], key), 1002),                               // a ping of 126 bytes
            (frame(0x80, b"x", key), 1002),                                    // continuation of nothing
            ([frame(0x01, b"a", key), frame(0x81, b"b", key)].concat(), 1002), // a new message inside one
            (frame(0x88, &[3], key), 1002),                                    // a close of one byte
            (frame(0x88, &[0x03, 0xed], key), 1002),                           // close code 1005 on the wire
            (frame(0x81, &[0xff, 0xfe], key), 1007),                           // not UTF-8
            ([frame(0x01, &[0xe2, 0x82], key), frame(0x80, &[0x28], key)].concat(), 1007), // split and wrong
            (frame(0x81, &[b'a'; 1001], key), 1009),                           // over the limit
            ([frame(0x01, &[b'a'; 600], key), frame(0x80, &[b'a'; 600], key)].concat(), 1009), // together over it
        ];
        for (i, (wire, code)) in cases.into_iter().enumerate() {
            let (got, end) = read_all(wire, 1 << 20, 1000);
            let e = end.expect_err(&format!("case {i} is refused"));
            assert_eq!(e.close_code(), Some(code), "case {i}: {e}");
            assert!(got.is_empty(), "case {i}: nothing of it is handed on");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        // Only the header of a 1 GB frame arrives: refused without waiting for (or buffering) the rest.
        let mut wire = vec![0x81, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 30).to_be_bytes());
        let (_, end) = read_all(wire, 1 << 20, 1 << 20);
        assert!(matches!(end, Err(ReadError::TooBig { size, .. }) if size == 1 << 30), "{end:?}");
        let mut wire = vec![0x81, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(read_all(wire, 1 << 20, 1 << 20).1.err().and_then(|e| e.close_code()), Some(1002));
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut theirs, mut ours) = tokio::io::duplex(1 << 20);
        let mut reader = Reader::new(1 << 20, 64 * 1024);
        theirs.write_all(&frame(0x81, text(50_000).as_bytes(), [1, 2, 3, 4])).await.unwrap_or_else(|e| panic!("{e}"));
        let m = std::future::poll_fn(|cx| reader.poll_message(cx, &mut ours)).await;
        assert!(matches!(m, Ok(Some(Message::Text(t))) if t.len() == 50_000));
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(20), std::future::poll_fn(|cx| reader.poll_message(cx, &mut ours)));
        assert!(quiet.await.is_err(), "nothing more to read");
        assert_eq!(reader.held(), 0, "drained and idle: no buffer");
        drop(theirs);
        assert!(matches!(std::future::poll_fn(|cx| reader.poll_message(cx, &mut ours)).await, Ok(None)), "the peer's end");
    }

    /// Random bytes, and valid frames with random bytes changed: never a
    /// panic, never more held than one frame's limit and a read.
    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6455);
        let valid: Vec<u8> =
            [frame(0x01, b"abc", [1, 2, 3, 4]), frame(0x89, b"p", [5, 6, 7, 8]), frame(0x80, b"def", [9, 9, 9, 9])].concat();
        for round in 0..20_000 {
            let wire: Vec<u8> = if round % 3 == 0 {
                (0..rng.random_range(0..300)).map(|_| rng.random()).collect()
            } else if round % 3 == 1 {
                // Frames with any first byte, masked or not, their lengths in
                // any of the three encodings (some past the limit).
                let mut w = Vec::new();
                for _ in 0..rng.random_range(1..6) {
                    let len: usize = rng.random_range(0..400);
                    w.push(rng.random());
                    let mask = if rng.random_bool(0.9) { 0x80 } else { 0 };
                    match rng.random_range(0..3) {
                        0 if len < 126 => w.push(mask | len as u8),
                        0 | 1 => {
                            w.push(mask | 126);
                            w.extend_from_slice(&(len as u16).to_be_bytes());
                        }
                        _ => {
                            w.push(mask | 127);
                            w.extend_from_slice(&(len as u64).to_be_bytes());
                        }
                    }
                    w.extend((0..4 + len).map(|_| rng.random::<u8>()));
                }
                w
            } else {
                let mut w = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..w.len());
                    w[i] = rng.random();
                }
                w
            };
            let mut io = Trickle { wire, at: 0, chunk: rng.random_range(1..40) };
            let mut reader = Reader::new(256, 512);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while let Poll::Ready(Ok(Some(_))) = reader.poll_message(&mut cx, &mut io) {
                assert!(reader.held() <= 4 * (256 + 512), "{}", reader.held());
            }
        }
    }

    #[test]
    fn unmasking_matches_the_bytewise_definition() {
        for n in 0..40 {
            let plain: Vec<u8> = (0..n as u8).collect();
            let key = [0x12, 0x34, 0x56, 0x78];
            let mut data = plain.clone();
            unmask(&mut data, key);
            let want: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(data, want, "{n} bytes");
        }
    }
}
