//! The pipe protocol between the node and an engine host child
//! (`tolk-node engine-host`): length-prefixed binary frames carrying what the
//! C ABI carries (`tolk_input` in, `tolk_output` or a status out), plus a
//! start-up handshake. Plain encode/decode over byte slices, no I/O.
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, then the payload.
//! Strings are `u32 LE length + UTF-8`, sample arrays `u32 LE count + i16 LE`.
//! Frames are bounded ([`MAX_FRAME`]); every decode checks lengths before it
//! allocates, and anything malformed is a [`WireError`], never a panic: the
//! node treats a bad frame from a child as that child failing.

use std::io::{Read, Write};

use super::{EngineError, EngineErrorKind, Request, Response};

/// The largest frame either side accepts: ten minutes of 48 kHz speech.
pub const MAX_FRAME: usize = 64 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The pipe closed cleanly before a frame started.
    #[error("the pipe closed")]
    Closed,
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

const INIT: u8 = 1;
const REQUEST: u8 = 2;
const READY: u8 = 11;
const INIT_FAILED: u8 = 12;
const REPLY_TEXT: u8 = 13;
const REPLY_SPEECH: u8 = 14;
const REPLY_ERROR: u8 = 15;

/// What the child reports once it has loaded the library and created its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub abi_version: u32,
    /// The descriptor's main stage and every stage served (`abi::stage_bit`s).
    pub stage: u32,
    pub stages: u32,
    pub name: String,
    pub version: String,
}

/// Node → child.
#[derive(Debug, Clone, PartialEq)]
pub enum ToChild {
    /// The first frame: the engine's options (`key=value` lines).
    Init { options: String },
    /// One engine call, owned (the child decodes it into a [`Request`]).
    Request(OwnedRequest),
}

/// Child → node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromChild {
    Ready(Ready),
    /// Loading or `create` failed: the engine cannot start.
    InitFailed(EngineError),
    Reply(Result<Response, EngineError>),
}

/// A [`Request`] with its data owned, as the child receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedRequest {
    /// `abi::STAGE_*`.
    pub stage: u32,
    pub samples: Vec<i16>,
    pub sample_rate: u32,
    pub text: String,
    pub src_lang: String,
    pub tgt_lang: String,
}

impl OwnedRequest {
    /// The request as the engine trait takes it; `None` for an unknown stage.
    pub fn as_request(&self) -> Option<Request<'_>> {
        use tolk_engine_sdk::abi;
        Some(match self.stage {
            abi::STAGE_ASR => Request::Asr { samples: &self.samples, sample_rate: self.sample_rate, lang: &self.src_lang },
            abi::STAGE_NMT => Request::Nmt { text: &self.text, src_lang: &self.src_lang, tgt_lang: &self.tgt_lang },
            abi::STAGE_TTS => Request::Tts { text: &self.text, lang: &self.src_lang },
            abi::STAGE_SPEECH_TRANSLATION => Request::SpeechTranslation {
                samples: &self.samples,
                sample_rate: self.sample_rate,
                src_lang: &self.src_lang,
                tgt_lang: &self.tgt_lang,
            },
            _ => return None,
        })
    }
}

// ------------------------------------------------------------------ encode

struct Encoder(Vec<u8>);

impl Encoder {
    fn new(kind: u8) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&[0; 4]);
        b.push(kind);
        Self(b)
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn len(&mut self, n: usize) -> &mut Self {
        // Lengths beyond u32 are caught by the frame bound in `finish`.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn samples(&mut self, s: &[i16]) -> &mut Self {
        self.len(s.len());
        self.0.reserve(s.len() * 2);
        for v in s {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    fn finish(mut self) -> Result<Vec<u8>, WireError> {
        let body = self.0.len() - 4;
        if body > MAX_FRAME {
            return Err(malformed(format!("a frame of {body} bytes exceeds {MAX_FRAME}")));
        }
        self.0[..4].copy_from_slice(&(body as u32).to_le_bytes());
        Ok(self.0)
    }
}

fn error_kind_code(k: EngineErrorKind) -> u32 {
    match k {
        EngineErrorKind::InvalidInput => 1,
        EngineErrorKind::Unsupported => 2,
        EngineErrorKind::Backend => 3,
        EngineErrorKind::Panic => 4,
    }
}

fn error_kind(code: u32) -> Result<EngineErrorKind, WireError> {
    Ok(match code {
        1 => EngineErrorKind::InvalidInput,
        2 => EngineErrorKind::Unsupported,
        3 => EngineErrorKind::Backend,
        4 => EngineErrorKind::Panic,
        other => return Err(malformed(format!("error kind {other}"))),
    })
}

/// Encodes the request of one engine call, borrowing its data.
pub fn encode_request(request: &Request<'_>) -> Result<Vec<u8>, WireError> {
    use tolk_engine_sdk::abi;
    let empty: &[i16] = &[];
    let (stage, samples, rate, text, src, tgt) = match *request {
        Request::Asr { samples, sample_rate, lang } => (abi::STAGE_ASR, samples, sample_rate, "", lang, ""),
        Request::Nmt { text, src_lang, tgt_lang } => (abi::STAGE_NMT, empty, 0, text, src_lang, tgt_lang),
        Request::Tts { text, lang } => (abi::STAGE_TTS, empty, 0, text, lang, ""),
        Request::SpeechTranslation { samples, sample_rate, src_lang, tgt_lang } => {
            (abi::STAGE_SPEECH_TRANSLATION, samples, sample_rate, "", src_lang, tgt_lang)
        }
    };
    let mut e = Encoder::new(REQUEST);
    e.u32(stage).u32(rate).samples(samples).str(text).str(src).str(tgt);
    e.finish()
}

pub fn encode_init(options: &str) -> Result<Vec<u8>, WireError> {
    let mut e = Encoder::new(INIT);
    e.str(options);
    e.finish()
}

pub fn encode_from_child(msg: &FromChild) -> Result<Vec<u8>, WireError> {
    let error = |kind: u8, err: &EngineError| {
        let mut e = Encoder::new(kind);
        e.u32(error_kind_code(err.kind)).str(&err.message);
        e
    };
    let e = match msg {
        FromChild::Ready(r) => {
            let mut e = Encoder::new(READY);
            e.u32(r.abi_version).u32(r.stage).u32(r.stages).str(&r.name).str(&r.version);
            e
        }
        FromChild::InitFailed(err) => error(INIT_FAILED, err),
        FromChild::Reply(Ok(Response::Text(text))) => {
            let mut e = Encoder::new(REPLY_TEXT);
            e.str(text);
            e
        }
        FromChild::Reply(Ok(Response::Speech { samples, sample_rate })) => {
            let mut e = Encoder::new(REPLY_SPEECH);
            e.u32(*sample_rate).samples(samples);
            e
        }
        FromChild::Reply(Err(err)) => error(REPLY_ERROR, err),
    };
    e.finish()
}

// ------------------------------------------------------------------ decode

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(malformed(format!("{n} bytes wanted, {} left", self.0.len())));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
    }
    fn samples(&mut self) -> Result<Vec<i16>, WireError> {
        let n = self.u32()? as usize;
        // `take` checks the length against what is there before anything is allocated.
        let bytes = self.take(n.checked_mul(2).ok_or_else(|| malformed("sample count"))?)?;
        Ok(bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect())
    }
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() { Ok(()) } else { Err(malformed(format!("{} bytes after the payload", self.0.len()))) }
    }
}

/// Splits a frame body into its kind and payload.
fn kind_of(body: &[u8]) -> Result<(u8, Decoder<'_>), WireError> {
    match body.split_first() {
        Some((&kind, rest)) => Ok((kind, Decoder(rest))),
        None => Err(malformed("an empty frame")),
    }
}

pub fn decode_to_child(body: &[u8]) -> Result<ToChild, WireError> {
    let (kind, mut d) = kind_of(body)?;
    let msg = match kind {
        INIT => ToChild::Init { options: d.str()? },
        REQUEST => {
            let stage = d.u32()?;
            let sample_rate = d.u32()?;
            let samples = d.samples()?;
            let (text, src_lang, tgt_lang) = (d.str()?, d.str()?, d.str()?);
            ToChild::Request(OwnedRequest { stage, samples, sample_rate, text, src_lang, tgt_lang })
        }
        other => return Err(malformed(format!("frame kind {other} from the node"))),
    };
    d.end()?;
    Ok(msg)
}

pub fn decode_from_child(body: &[u8]) -> Result<FromChild, WireError> {
    let (kind, mut d) = kind_of(body)?;
    let error = |d: &mut Decoder<'_>| -> Result<EngineError, WireError> {
        let kind = error_kind(d.u32()?)?;
        Ok(EngineError { kind, message: d.str()? })
    };
    let msg = match kind {
        READY => {
            let (abi_version, stage, stages) = (d.u32()?, d.u32()?, d.u32()?);
            FromChild::Ready(Ready { abi_version, stage, stages, name: d.str()?, version: d.str()? })
        }
        INIT_FAILED => FromChild::InitFailed(error(&mut d)?),
        REPLY_TEXT => FromChild::Reply(Ok(Response::Text(d.str()?))),
        REPLY_SPEECH => {
            let sample_rate = d.u32()?;
            FromChild::Reply(Ok(Response::Speech { sample_rate, samples: d.samples()? }))
        }
        REPLY_ERROR => FromChild::Reply(Err(error(&mut d)?)),
        other => return Err(malformed(format!("frame kind {other} from the engine"))),
    };
    d.end()?;
    Ok(msg)
}

// --------------------------------------------------------------------- I/O

/// Reads one frame body (kind + payload) from `r`; the length is checked
/// against [`MAX_FRAME`] before anything is allocated.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => return Err(malformed("the pipe closed inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(malformed(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => malformed("the pipe closed inside a frame"),
        _ => WireError::Io(e),
    })?;
    Ok(body)
}

/// Writes an encoded frame and flushes it.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), WireError> {
    w.write_all(frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> Vec<u8> {
        read_frame(&mut &frame[..]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_message_round_trips() {
        let samples = [0i16, -1, 32767, -32768, 12];
        let requests = [
            Request::Asr { samples: &samples, sample_rate: 16_000, lang: "en" },
            Request::Nmt { text: "héllo", src_lang: "en", tgt_lang: "es" },
            Request::Tts { text: "hola", lang: "es" },
            Request::SpeechTranslation { samples: &samples, sample_rate: 8_000, src_lang: "zh", tgt_lang: "en" },
        ];
        for r in requests {
            let ToChild::Request(owned) = decode_to_child(&body(&encode_request(&r).unwrap())).unwrap() else { panic!() };
            assert_eq!(format!("{:?}", owned.as_request().unwrap()), format!("{r:?}"));
        }
        assert_eq!(decode_to_child(&body(&encode_init("a=b\n").unwrap())).unwrap(), ToChild::Init { options: "a=b\n".into() });
        let replies = [
            FromChild::Ready(Ready { abi_version: 2, stage: 2, stages: 4, name: "echo".into(), version: "0.1".into() }),
            FromChild::InitFailed(EngineError::new(EngineErrorKind::Unsupported, "no model")),
            FromChild::Reply(Ok(Response::Text("[en→es] hi".into()))),
            FromChild::Reply(Ok(Response::Speech { samples: samples.to_vec(), sample_rate: 22_050 })),
            FromChild::Reply(Err(EngineError::new(EngineErrorKind::Panic, "boom"))),
        ];
        for m in replies {
            assert_eq!(decode_from_child(&body(&encode_from_child(&m).unwrap())).unwrap(), m);
        }
    }

    #[test]
    fn malformed_frames_are_errors_never_panics() {
        let good = encode_from_child(&FromChild::Reply(Ok(Response::Speech { samples: vec![1; 100], sample_rate: 1 }))).unwrap();
        // Every truncation, every single-byte corruption of the payload, and junk.
        for cut in 0..good.len() {
            let r = read_frame(&mut &good[..cut]);
            assert!(matches!(r, Err(WireError::Closed | WireError::Malformed(_))), "cut at {cut}: {r:?}");
        }
        for i in 4..good.len() {
            for b in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = decode_from_child(&bad[4..]);
                let _ = decode_to_child(&bad[4..]);
            }
        }
        // A length beyond the bound is refused before allocating it.
        let huge = (u32::MAX).to_le_bytes();
        assert!(matches!(read_frame(&mut &huge[..]), Err(WireError::Malformed(_))));
        // A sample count beyond the frame, an unknown kind, trailing bytes, bad UTF-8.
        assert!(decode_from_child(&[REPLY_SPEECH, 1, 0, 0, 0, 255, 255, 255, 255]).is_err());
        assert!(decode_from_child(&[99]).is_err() && decode_from_child(&[]).is_err());
        assert!(decode_from_child(&[REPLY_TEXT, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_from_child(&[REPLY_TEXT, 1, 0, 0, 0, 0xff]).is_err());
        assert!(decode_from_child(&[REPLY_ERROR, 9, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn an_oversized_frame_is_refused_when_encoding() {
        let samples = vec![0i16; MAX_FRAME / 2 + 1];
        let r = Request::Asr { samples: &samples, sample_rate: 16_000, lang: "en" };
        assert!(matches!(encode_request(&r), Err(WireError::Malformed(_))));
    }
}
