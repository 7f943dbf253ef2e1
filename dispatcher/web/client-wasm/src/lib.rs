//! `tolk-web-wasm`: the SDK's [`Chunker`] and [`Session`] for the browser.
//!
//! The web client (`/app/`) follows exactly the rules of the Rust SDK because
//! it *is* the Rust SDK: `sdk/src/chunker.rs` and `sdk/src/session.rs` are
//! compiled in here unchanged (`#[path]` includes, so there is one
//! implementation) for `wasm32-unknown-unknown`. The page's JavaScript is the
//! shell, as `sdk/src/client.rs` is for native apps: it owns the microphone,
//! the WebSocket, the timers and the speaker, and every decision (where an
//! utterance starts and ends, indexes, heartbeats, resume, re-send, order of
//! results) comes out of this module as a list of actions.
//!
//! Why not depend on `tolk-sdk`: its native shell pulls in tokio's networking
//! and rustls, which do not build for `wasm32-unknown-unknown`; the two
//! sans-IO modules need only `webrtc-vad`, `tolk-protocol` and `rand`.
//!
//! # ABI
//! No `wasm-bindgen`: a handful of `extern "C"` functions over numbers, with
//! bytes passed through two buffers owned here. The page writes its input
//! (PCM16 little-endian samples, a UTF-8 frame, or the JSON settings) at
//! [`tolk_in_buf`] and calls a function with its length; a function that has
//! output returns its length and leaves the UTF-8 JSON at [`tolk_out_ptr`].
//! Handles are small integers into a table, so no raw pointer to Rust state
//! ever crosses the boundary.
//!
//! `webrtc-vad`'s C code (libfvad) needs `malloc` and `free`, which
//! wasm32-unknown-unknown does not have: they are exported below, backed by
//! Rust's allocator (see `build.sh` for the libc headers it compiles against).
//!
//! # Layout
//! - [`chunker`], [`session`]: the SDK's modules, included as they are.
//! - [`SdkError`]: the SDK's error type, included as it is.
//! - `codec`: the session's codecs here: pcm16 and wav; Opus is the page's
//!   (WebCodecs), handed back through op 10.
//! - this file: the handle table, the buffers and the exported functions.

// `#[no_mangle]` exports are the whole point of this crate; they are the only
// reason `unsafe_code` is allowed (there is no `unsafe` block).
#![allow(unsafe_code)]
// The included SDK modules carry items only the native client uses.
#![allow(dead_code)]

#[path = "../../../../sdk/src/chunker.rs"]
pub mod chunker;
mod codec;
#[path = "../../../../sdk/src/error.rs"]
mod error;
#[path = "../../../../sdk/src/session.rs"]
pub mod session;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
pub use chunker::{Chunker, ChunkerConfig, Utterance};
pub use error::SdkError;
use serde_json::{Value, json};
pub use session::{Action, AudioEncoding, ConnectionState, EncodedUtterance, Event, Input, Session, SessionConfig};
use tolk_protocol::session::ClientPlatform;

/// A client as the page drives it: the chunker feeds the session.
struct Client {
    chunker: Chunker,
    session: Session,
    /// Opus bitrate and complexity when the page encodes utterances as Opus.
    opus: Option<(u32, u8)>,
    /// Utterances handed to the page to encode, oldest first: the page
    /// encodes one at a time and answers in order (op 10 or 11).
    encoding: VecDeque<Utterance>,
}

/// Utterances the page may be encoding at once; beyond, they go as pcm16.
const MAX_ENCODING: usize = 32;

enum Handle {
    Chunker { chunker: Box<Chunker>, out: Vec<Utterance> },
    Client(Box<Client>),
}

thread_local! {
    // wasm32-unknown-unknown runs one thread: thread-locals are the globals.
    static HANDLES: RefCell<Vec<Option<Handle>>> = const { RefCell::new(Vec::new()) };
    static IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Blocks handed to C, by address, so `free` can drop them.
    static ALLOCS: RefCell<HashMap<usize, Box<[u64]>>> = RefCell::new(HashMap::new());
}

/// The longest input accepted at once: 1 MiB (30 s of 16 kHz PCM16; a frame
/// from the server is smaller than the dispatcher's frame limit).
const MAX_IN: usize = 8 << 20;

// ------------------------------------------------------------------ memory

/// `malloc` for libfvad. Blocks are `u64`s so they are 8-byte aligned.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn malloc(n: usize) -> *mut u8 {
    let mut block = vec![0u64; n.div_ceil(8).max(1)].into_boxed_slice();
    let ptr = block.as_mut_ptr().cast::<u8>();
    ALLOCS.with(|a| a.borrow_mut().insert(ptr as usize, block));
    ptr
}

/// `free` for libfvad: drops the block `malloc` handed out (unknown
/// addresses, null included, are ignored).
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn free(ptr: *mut u8) {
    ALLOCS.with(|a| a.borrow_mut().remove(&(ptr as usize)));
}

/// Makes the input buffer `len` bytes long and returns where the page writes
/// them (valid until the next call into this module). Null if too long.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_in_buf(len: usize) -> *mut u8 {
    if len > MAX_IN {
        return std::ptr::null_mut();
    }
    IN.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.resize(len, 0);
        b.as_mut_ptr()
    })
}

/// Leaves the hash of the sources this module was built from (see
/// `build.rs`) as the output and returns its length.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_sources() -> usize {
    output(&json!(env!("TOLK_WEB_SOURCES_FNV")))
}

/// Where the last output is.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_out_ptr() -> *const u8 {
    OUT.with(|b| b.borrow().as_ptr())
}

/// The length of the last output (for a call that returns something else,
/// such as a refused [`tolk_client_new`]).
#[unsafe(no_mangle)]
pub extern "C" fn tolk_out_len() -> usize {
    OUT.with(|b| b.borrow().len())
}

fn input_bytes(len: usize) -> Vec<u8> {
    IN.with(|b| {
        let b = b.borrow();
        b[..len.min(b.len())].to_vec()
    })
}

fn input_samples(n: usize) -> Vec<i16> {
    input_bytes(n.saturating_mul(2)).chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

/// Leaves `v` as the output and returns its length.
fn output(v: &Value) -> usize {
    let text = v.to_string();
    OUT.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.extend_from_slice(text.as_bytes());
        b.len()
    })
}

fn insert(h: Handle) -> i32 {
    HANDLES.with(|t| {
        let mut t = t.borrow_mut();
        let slot = t.iter().position(Option::is_none).unwrap_or_else(|| {
            t.push(None);
            t.len() - 1
        });
        t[slot] = Some(h);
        i32::try_from(slot).unwrap_or(-1)
    })
}

fn with_handle<R>(h: i32, f: impl FnOnce(&mut Handle) -> R) -> Option<R> {
    HANDLES.with(|t| {
        let mut t = t.borrow_mut();
        let slot = usize::try_from(h).ok()?;
        t.get_mut(slot)?.as_mut().map(f)
    })
}

/// Frees a handle of either kind.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_drop(h: i32) {
    HANDLES.with(|t| {
        if let Some(slot) = usize::try_from(h).ok().and_then(|s| t.borrow_mut().get_mut(s).map(Option::take)) {
            drop(slot);
        }
    });
}

// ----------------------------------------------------------------- chunker

fn utterance_json(u: &Utterance) -> Value {
    // FNV-1a over the samples: lets a test compare audio without moving it.
    let fnv = u
        .samples
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, s| s.to_le_bytes().iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)));
    json!({
        "start_ms": u.start_ms, "speech_start_ms": u.speech_start_ms, "speech_end_ms": u.speech_end_ms,
        "end_ms": u.end_ms, "manual_cut": u.manual_cut, "forced": u.forced,
        "samples": u.samples.len(), "fnv": format!("{fnv:016x}"),
    })
}

/// A chunker with the SDK's default settings at `sample_rate`; -1 if the
/// rate is not one `webrtc-vad` takes.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_chunker_new(sample_rate: u32) -> i32 {
    match Chunker::new(ChunkerConfig { sample_rate, ..ChunkerConfig::default() }) {
        Ok(chunker) => insert(Handle::Chunker { chunker: Box::new(chunker), out: Vec::new() }),
        Err(_) => -1,
    }
}

/// `op`: 0 push `n` samples from the input buffer, 1 cut, 2 flush. Returns
/// the length of a JSON array of the utterances that ended (see
/// `utterance_json`), or 0 for a bad handle.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_chunker_op(h: i32, op: u32, n: usize) -> usize {
    let samples = if op == 0 { input_samples(n) } else { Vec::new() };
    let done = with_handle(h, |handle| match handle {
        Handle::Chunker { chunker, out } => {
            match op {
                0 => out.extend(chunker.push(&samples)),
                1 => out.extend(chunker.cut()),
                _ => out.extend(chunker.flush()),
            }
            std::mem::take(out)
        }
        Handle::Client(_) => Vec::new(),
    });
    match done {
        Some(list) => output(&Value::Array(list.iter().map(utterance_json).collect())),
        None => 0,
    }
}

// ------------------------------------------------------------------ client

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The session and chunker settings from the page's JSON; every field is
/// optional and defaults to the SDK's, but `platform` is always `web`.
fn settings(v: &Value) -> (SessionConfig, ChunkerConfig, Option<(u32, u8)>) {
    // The session itself sends pcm16 here (`codec.rs`); Opus utterances come
    // encoded from the page. Results' speech is left as it came: the
    // browser decodes and plays wav and Opus alike.
    let mut s = SessionConfig {
        client_version: concat!("tolk-web/", env!("CARGO_PKG_VERSION")).to_owned(),
        platform: ClientPlatform::Web,
        audio_encoding: AudioEncoding::Pcm16,
        tts_format: tolk_protocol::AudioFormat::Wav,
        decode_tts: false,
        ..SessionConfig::default()
    };
    if opt_str(v, "tts_format").as_deref() == Some("opus") {
        s.tts_format = tolk_protocol::AudioFormat::Opus;
    }
    if let Some(l) = opt_str(v, "src_lang") {
        s.src_lang = l;
    }
    if let Some(l) = opt_str(v, "tgt_lang") {
        s.tgt_lang = l;
    }
    s.pairing_code = opt_str(v, "pairing_code");
    let num = |key: &str| v.get(key).and_then(Value::as_u64);
    if let Some(ms) = num("heartbeat_interval_ms") {
        s.heartbeat_interval_ms = ms;
        s.dead_after_ms = s.dead_after_ms.max(ms.saturating_mul(3));
    }
    if let Some(ms) = num("reconnect_min_ms") {
        s.reconnect_min_ms = ms;
    }
    let mut c = ChunkerConfig::default();
    if let Some(rate) = num("sample_rate").and_then(|r| u32::try_from(r).ok()) {
        c.sample_rate = rate;
    }
    let opus = (opt_str(v, "audio_encoding").as_deref() == Some("opus")).then(|| {
        let bitrate = num("opus_bitrate_bps").and_then(|b| u32::try_from(b).ok()).unwrap_or(24_000);
        let complexity = num("opus_complexity").and_then(|c| u8::try_from(c).ok()).unwrap_or(5);
        (bitrate.clamp(6_000, 510_000), complexity.min(10))
    });
    (s, c, opus)
}

fn state_json(s: &ConnectionState) -> Value {
    match s {
        ConnectionState::Connecting { attempt } => json!({"state": "connecting", "attempt": attempt}),
        ConnectionState::Connected { session_id, resumed, assigned_node_id } => {
            json!({"state": "connected", "session_id": session_id, "resumed": resumed, "assigned_node_id": assigned_node_id})
        }
        ConnectionState::Disconnected { reason, retry_in_ms } => {
            json!({"state": "disconnected", "reason": reason, "retry_in_ms": retry_in_ms})
        }
        ConnectionState::Closed { reason } => json!({"state": "closed", "reason": reason}),
    }
}

fn event_json(e: &Event) -> Value {
    match e {
        Event::State(s) => json!({"event": "state", "state": state_json(s)}),
        Event::Queued(q) => {
            json!({"event": "queued", "index": q.index, "start_ms": q.start_ms, "end_ms": q.end_ms, "manual_cut": q.manual_cut})
        }
        Event::Result(t) => json!({
            "event": "result", "index": t.index, "job_id": t.job_id, "text_asr": t.text_asr,
            "text_translated": t.text_translated,
            "tts_audio": t.tts_audio.as_deref().map(|a| base64::engine::general_purpose::STANDARD.encode(a)),
            "tts_format": t.tts_format.map(|f| f.as_str()), "tts_sample_rate": t.tts_sample_rate,
        }),
        Event::Failed(f) => json!({"event": "failed", "index": f.index, "code": f.code, "message": f.message}),
        Event::Error(err) => json!({"event": "error", "message": err.to_string()}),
    }
}

fn actions_json(actions: Vec<Action>) -> Value {
    Value::Array(
        actions
            .into_iter()
            .map(|a| match a {
                Action::Connect => json!({"do": "connect"}),
                Action::Send(frame) => json!({"do": "send", "frame": frame}),
                Action::Disconnect => json!({"do": "disconnect"}),
                Action::Deliver(e) => json!({"do": "deliver", "event": event_json(&e)}),
            })
            .collect(),
    )
}

/// A client from the JSON settings (`len` bytes in the input buffer) at
/// monotonic time `now` ms and wall clock `epoch_ms`; -1 if the settings are
/// refused (the reason is the output, as `{"error": ...}`).
#[unsafe(no_mangle)]
pub extern "C" fn tolk_client_new(len: usize, now: f64, epoch_ms: f64, seed: f64) -> i32 {
    let v: Value = serde_json::from_slice(&input_bytes(len)).unwrap_or(Value::Null);
    let (scfg, ccfg, opus) = settings(&v);
    let chunker = match Chunker::new(ccfg) {
        Ok(c) => c,
        Err(e) => {
            output(&json!({"error": e.to_string()}));
            return -1;
        }
    };
    match Session::new(scfg, seed as u64, epoch_ms as u64, now as u64) {
        Ok(session) => insert(Handle::Client(Box::new(Client { chunker, session, opus, encoding: VecDeque::new() }))),
        Err(e) => {
            output(&json!({"error": e.to_string()}));
            -1
        }
    }
}

/// Feeds the client at time `now` and returns the length of the JSON array
/// of actions it queued (`{"do": "connect" | "send" | "disconnect" |
/// "deliver", ...}`). `op`:
/// 0 push `len` samples (bytes / 2) of microphone audio; 1 manual cut;
/// 2 flush (recording stopped); 3 connected; 4 connect failed; 5 connection
/// lost; 6 a text frame of `len` bytes; 7 close; 8 abort; 9 timers due;
/// 10 the oldest utterance handed out to encode, as `len` bytes of Ogg Opus;
/// 11 that utterance could not be encoded (it goes as pcm16).
///
/// With `audio_encoding: "opus"`, an utterance the chunker cuts is not given
/// to the session at once: an action `{"do": "encode", "pcm": base64 pcm16,
/// "sample_rate", "bitrate", "complexity"}` asks the page to encode it, and
/// op 10 (or 11) gives it to the session, in the order they were cut.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_client_op(h: i32, op: u32, len: usize, now: f64) -> usize {
    let now = now as u64;
    let bytes = if matches!(op, 0 | 4 | 5 | 6 | 10) { input_bytes(len) } else { Vec::new() };
    let result = with_handle(h, |handle| {
        let Handle::Client(c) = handle else { return (Vec::new(), Vec::new()) };
        let utterances = match op {
            0 => {
                let samples: Vec<i16> = bytes.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect();
                c.chunker.push(&samples)
            }
            1 => c.chunker.cut().into_iter().collect(),
            2 => c.chunker.flush().into_iter().collect(),
            _ => Vec::new(),
        };
        let mut encode = Vec::new();
        for u in utterances {
            match c.opus {
                Some((bitrate, complexity)) if c.encoding.len() < MAX_ENCODING => {
                    let pcm = base64::engine::general_purpose::STANDARD.encode(tolk_protocol::audio::encode_pcm16(&u.samples));
                    encode.push(
                        json!({"do": "encode", "pcm": pcm, "sample_rate": u.sample_rate, "bitrate": bitrate, "complexity": complexity}),
                    );
                    c.encoding.push_back(u);
                }
                _ => c.session.handle(now, Input::Utterance(u)),
            }
        }
        match op {
            10 => {
                if let Some(u) = c.encoding.pop_front() {
                    let e = EncodedUtterance {
                        audio: bytes.clone(),
                        format: tolk_protocol::AudioFormat::Opus,
                        sample_rate: u.sample_rate,
                        start_ms: u.start_ms,
                        end_ms: u.end_ms,
                        manual_cut: u.manual_cut,
                    };
                    c.session.handle(now, Input::Encoded(e));
                }
            }
            11 => {
                if let Some(u) = c.encoding.pop_front() {
                    c.session.handle(now, Input::Utterance(u));
                }
            }
            _ => {}
        }
        let text = String::from_utf8_lossy(&bytes);
        match op {
            3 => c.session.handle(now, Input::Connected),
            4 => c.session.handle(now, Input::ConnectFailed(text.into_owned())),
            5 => c.session.handle(now, Input::ConnectionLost(text.into_owned())),
            6 => c.session.handle(now, Input::Frame(&text)),
            7 => c.session.handle(now, Input::Close),
            8 => c.session.handle(now, Input::Abort),
            9 => c.session.on_timeout(now),
            _ => {}
        }
        (c.session.take_actions(), encode)
    });
    match result {
        Some((actions, encode)) => {
            let mut list = actions_json(actions);
            if let Value::Array(items) = &mut list {
                items.extend(encode);
            }
            output(&list)
        }
        None => 0,
    }
}

/// When timers are due next (monotonic ms), or -1 when none is armed.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_client_deadline(h: i32) -> f64 {
    with_handle(h, |handle| match handle {
        Handle::Client(c) => c.session.next_deadline().map_or(-1.0, |d| d as f64),
        Handle::Chunker { .. } => -1.0,
    })
    .unwrap_or(-1.0)
}

/// Whether the chunker is inside an utterance (1) or not (0): the page shows it.
#[unsafe(no_mangle)]
pub extern "C" fn tolk_client_in_speech(h: i32) -> i32 {
    with_handle(h, |handle| match handle {
        Handle::Client(c) => i32::from(c.chunker.in_speech()),
        Handle::Chunker { chunker, .. } => i32::from(chunker.in_speech()),
    })
    .unwrap_or(0)
}
