//! The client end to end: a real dispatcher on 127.0.0.1:0 (in process, as
//! `dispatcher/tests/shell.rs` starts it), a fake node that measures the
//! audio it gets (`support/fake_node.rs`, the only test double), real
//! sockets, real VAD on speech synthesised by `espeak-ng`. A TCP proxy
//! (`support/proxy.rs`) breaks the network on demand: cut, refused, frozen.
//! A dispatcher on its own runtime ([`CrashableServer`]) can crash: its
//! runtime is dropped with every socket in it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

#[path = "support/fake_node.rs"]
mod fake_node;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/speech.rs"]
mod speech;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;
use tolk_dispatcher::{Config, CoreConfig};
use tolk_sdk::{Client, ClientConfig, ConnectionState, Event, SdkError, Translation, Utterance};

use proxy::{Mode, Proxy};

const SENTENCES: [&str; 3] =
    ["The quick brown fox jumps over the lazy dog.", "Where is the nearest train station?", "Thank you very much for your help today."];

struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn dispatcher(config: Config) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tolk_dispatcher::shell::seeded(config, 1).run(listener, async move {
        let _ = rx.await;
    }));
    Server { addr, _stop: stop }
}

/// A dispatcher on its own thread and runtime, so a test can crash it:
/// dropping the runtime drops every task and socket at once, as a killed
/// process would (no shutdown grace, no close frames).
struct CrashableServer {
    addr: SocketAddr,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CrashableServer {
    fn start(config: Config, seed: u64) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.spawn(tolk_dispatcher::shell::seeded(config, seed).run(listener, std::future::pending()));
            runtime.block_on(async {
                let _ = crashed.await;
            });
            runtime.shutdown_background();
        });
        Self { addr, crash: Some(crash), thread: Some(thread) }
    }

    fn crash(&mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for CrashableServer {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A `ws://` URL on 127.0.0.1 where nobody listens (a port just freed).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}/ws/session")
}

/// The three sentences with 1 s of silence around each, spoken once per
/// test binary; and each sentence's length.
fn speech() -> &'static (Vec<i16>, Vec<u64>) {
    static SPEECH: OnceLock<(Vec<i16>, Vec<u64>)> = OnceLock::new();
    SPEECH.get_or_init(|| {
        let dir: PathBuf = [env!("CARGO_TARGET_TMPDIR"), "client_e2e"].iter().collect();
        speech::sentences(&dir, &SENTENCES, 1000)
    })
}

fn client_config(url: String) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.session.src_lang = fake_node::SRC.into();
    c.session.tgt_lang = fake_node::TGT.into();
    c.seed = Some(3);
    c
}

fn start(config: ClientConfig) -> (Client, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Client::start(config, move |e: Event| {
        let _ = tx.send(e);
    })
    .unwrap();
    (client, rx)
}

/// Pushes audio in 100 ms pieces, as a microphone would (faster than real
/// time: the chunker's clock is the sample count).
fn push(client: &Client, samples: &[i16]) {
    for piece in samples.chunks(1600) {
        client.push_audio(piece).unwrap();
    }
}

/// Every event until `Closed`.
async fn until_closed(rx: &mut mpsc::UnboundedReceiver<Event>, events: &mut Vec<Event>) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(e) = rx.recv().await {
            let done = matches!(e, Event::State(ConnectionState::Closed { .. }));
            events.push(e);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Closed within 60 s: {events:#?}"));
}

/// Events until `pred` holds for one (included).
async fn until(rx: &mut mpsc::UnboundedReceiver<Event>, events: &mut Vec<Event>, pred: impl Fn(&Event) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = rx.recv().await {
            let done = pred(&e);
            events.push(e);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("condition not met within 30 s: {events:#?}"));
}

fn results(events: &[Event]) -> Vec<&Translation> {
    events.iter().filter_map(|e| if let Event::Result(t) = e { Some(t) } else { None }).collect()
}

fn states(events: &[Event]) -> Vec<&ConnectionState> {
    events.iter().filter_map(|e| if let Event::State(s) = e { Some(s) } else { None }).collect()
}

fn queued_count(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Queued(_))).count()
}

/// Every utterance taken got a result, exactly once, in index order.
fn assert_all_results_in_order(events: &[Event], n: usize) {
    let queued: Vec<u64> = events.iter().filter_map(|e| if let Event::Queued(q) = e { Some(q.index) } else { None }).collect();
    let got: Vec<u64> = results(events).iter().map(|t| t.index).collect();
    assert_eq!(queued, (0..n as u64).collect::<Vec<_>>(), "{events:#?}");
    assert_eq!(got, queued, "one result per utterance, in order: {events:#?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Failed(_))), "{events:#?}");
}

#[tokio::test]
async fn speech_in_gives_one_ordered_result_per_sentence() {
    let server = dispatcher(Config::default()).await;
    // Staggered answers: the node finishes later utterances first.
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 50, stagger_ms: 150 }).await;
    let (client, mut rx) = start(client_config(format!("ws://{}/ws/session", server.addr)));
    let (audio, lengths) = speech();
    push(&client, audio);
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert!(client.wait_closed(Duration::from_secs(5)));

    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    assert!(
        matches!(
            st[..],
            [ConnectionState::Connecting { attempt: 0 }, ConnectionState::Connected { resumed: false, .. }, ConnectionState::Closed { .. }]
        ),
        "{st:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Error(_))), "{events:#?}");
    let queued: Vec<_> = events.iter().filter_map(|e| if let Event::Queued(q) = e { Some(*q) } else { None }).collect();
    for (i, t) in results(&events).into_iter().enumerate() {
        let q = queued[i];
        let sent_ms = q.end_ms - q.start_ms;
        // The node measured exactly the audio the chunker cut.
        assert_eq!(t.text_translated, format!("utterance {i}: {sent_ms} ms"));
        assert_eq!(t.text_asr, format!("{sent_ms} ms of audio"));
        // Opus both ways by default: the node got Opus (and measured its
        // exact length above), answered Opus (100 ms), and the app gets it
        // decoded to pcm16.
        assert_eq!((t.tts_format, t.tts_sample_rate), (Some(tolk_sdk::AudioFormat::Pcm16), Some(16_000)));
        assert_eq!(t.tts_audio.as_ref().map(Vec::len), Some(1600 * 2), "100 ms at 16 kHz");
        // Sentence plus pre-roll (300 ms) plus tail (≤ 200 ms), give or take
        // what the VAD trims off espeak's soft edges.
        let len = lengths[i];
        println!("sentence {i}: {len} ms spoken, {sent_ms} ms sent");
        assert!(sent_ms + 300 >= len && sent_ms <= len + 600, "sentence {i}: {len} ms spoken, {sent_ms} ms sent");
    }
}

#[tokio::test]
async fn pcm16_both_ways_and_opus_bytes_for_apps_that_want_them() {
    let server = dispatcher(Config::default()).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour::default()).await;
    let mut config = client_config(format!("ws://{}/ws/session", server.addr));
    config.session.audio_encoding = tolk_sdk::AudioEncoding::Pcm16;
    config.session.tts_format = tolk_sdk::AudioFormat::Pcm16;
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    for t in results(&events) {
        assert_eq!(t.tts_audio.as_deref(), Some(&tolk_protocol::audio::encode_pcm16(&[0, 1000, 0, -1000])[..]));
        assert_eq!((t.tts_format, t.tts_sample_rate), (Some(tolk_sdk::AudioFormat::Pcm16), Some(16_000)));
    }

    let mut config = client_config(format!("ws://{}/ws/session", server.addr));
    config.session.decode_tts = false;
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    for t in results(&events) {
        assert_eq!(t.tts_format, Some(tolk_sdk::AudioFormat::Opus));
        let opus = t.tts_audio.as_deref().unwrap();
        assert_eq!(tolk_protocol::ogg_opus::inspect(opus).unwrap().duration_ms(), 100, "the Ogg Opus bytes as the node sent them");
    }
}

#[tokio::test]
async fn wav_audio_works_too() {
    let server = dispatcher(Config::default()).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour::default()).await;
    let mut config = client_config(format!("ws://{}/ws/session", server.addr));
    config.session.audio_encoding = tolk_sdk::AudioEncoding::Wav;
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_and_nothing_is_lost() {
    let server = dispatcher(Config::default()).await;
    // Slow enough that every result is produced while the client is away.
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 1_500, stagger_ms: 0 }).await;
    let proxy = Proxy::start(server.addr).await;
    let (client, mut rx) = start(client_config(format!("ws://{}/ws/session", proxy.addr)));
    push(&client, &speech().0);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::Queued(q) if q.index == 2)).await;
    // Let the utterances reach the dispatcher and the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queued_count(&events), 3, "{events:#?}");
    proxy.cut_all();
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    assert!(st.iter().any(|s| matches!(s, ConnectionState::Disconnected { .. })), "{st:?}");
    assert!(st.iter().any(|s| matches!(s, ConnectionState::Connected { resumed: true, .. })), "{st:?}");
    assert!(proxy.connections() >= 2);
}

#[tokio::test]
async fn a_frozen_connection_is_detected_by_heartbeats() {
    let server = dispatcher(Config::default()).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 100, stagger_ms: 0 }).await;
    let proxy = Proxy::start(server.addr).await;
    let mut config = client_config(format!("ws://{}/ws/session", proxy.addr));
    config.session.heartbeat_interval_ms = 200;
    config.session.dead_after_ms = 1_000;
    let (client, mut rx) = start(config);
    let (audio, _) = speech();
    let half = audio.len() / 2;
    push(&client, &audio[..half]);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::Result(_))).await;
    // Packets now vanish; the socket stays open.
    proxy.set_mode(Mode::Freeze);
    push(&client, &audio[half..]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set_mode(Mode::Forward); // new connections work again; the frozen one stays dead
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    assert!(
        st.iter().any(|s| matches!(s, ConnectionState::Disconnected { reason, .. } if reason.contains("no frame from the server"))),
        "{st:?}"
    );
    assert!(st.iter().any(|s| matches!(s, ConnectionState::Connected { resumed: true, .. })), "{st:?}");
}

#[tokio::test]
async fn an_expired_session_is_replaced_and_its_utterances_sent_again() {
    let config = Config { core: CoreConfig { resume_grace_ms: 200, ..CoreConfig::default() }, ..Config::default() };
    let server = dispatcher(config).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 1_000, stagger_ms: 0 }).await;
    let proxy = Proxy::start(server.addr).await;
    let (client, mut rx) = start(client_config(format!("ws://{}/ws/session", proxy.addr)));
    push(&client, &speech().0);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::Queued(q) if q.index == 2)).await;
    // Let the utterances reach the dispatcher and the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No network for longer than the resume grace period.
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.set_mode(Mode::Forward);
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let sessions: Vec<&String> = states(&events)
        .into_iter()
        .filter_map(|s| if let ConnectionState::Connected { session_id, .. } = s { Some(session_id) } else { None })
        .collect();
    assert_eq!(sessions.len(), 2, "{events:#?}");
    assert_ne!(sessions[0], sessions[1], "a new session");
    assert!(
        states(&events).iter().any(|s| matches!(s, ConnectionState::Disconnected { reason, .. } if reason.contains("could not connect")))
    );
}

#[tokio::test]
async fn a_dead_first_url_costs_one_back_off_step_and_the_next_one_serves() {
    let server = dispatcher(Config::default()).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 50, stagger_ms: 0 }).await;
    let dead = dead_url();
    let mut config = client_config(dead.clone());
    config.fallback_urls = vec![format!("ws://{}/ws/session", server.addr)];
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    assert!(
        matches!(
            &st[..],
            [
                ConnectionState::Connecting { attempt: 0 },
                ConnectionState::Disconnected { reason, .. },
                ConnectionState::Connecting { attempt: 1 },
                ConnectionState::Connected { resumed: false, .. },
                ConnectionState::Closed { .. },
            ] if reason.contains("could not connect") && reason.contains(&dead)
        ),
        "one failed attempt at the dead URL, then the second: {st:?}"
    );
}

#[tokio::test]
async fn a_session_resumes_on_the_next_url_when_its_dispatcher_goes_away() {
    // Two addresses in front of one dispatcher stand for two dispatchers of
    // a cluster that share session state: the second knows the session.
    let server = dispatcher(Config::default()).await;
    // Slow enough that every result is produced after the first address is gone.
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 1_500, stagger_ms: 0 }).await;
    let (first, second) = (Proxy::start(server.addr).await, Proxy::start(server.addr).await);
    let first_url = format!("ws://{}/ws/session", first.addr);
    let mut config = client_config(first_url.clone());
    config.fallback_urls = vec![format!("ws://{}/ws/session", second.addr)];
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::Queued(q) if q.index == 2)).await;
    // Let the utterances reach the dispatcher and the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The first "dispatcher" dies: its connection drops, new ones fail.
    first.set_mode(Mode::Refuse);
    first.cut_all();
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    let sessions: Vec<(&String, bool)> = st
        .iter()
        .filter_map(|s| if let ConnectionState::Connected { session_id, resumed, .. } = s { Some((session_id, *resumed)) } else { None })
        .collect();
    assert!(matches!(sessions[..], [(a, false), (b, true)] if a == b), "resumed on the second URL: {st:?}");
    let lost: Vec<&String> =
        st.iter().filter_map(|s| if let ConnectionState::Disconnected { reason, .. } = s { Some(reason) } else { None }).collect();
    assert!(matches!(lost[..], [reason] if reason.contains(&first_url)), "one back-off step, naming the first URL: {st:?}");
    assert_eq!((first.connections(), second.connections()), (1, 1));
}

#[tokio::test]
async fn a_crashed_dispatcher_is_replaced_by_the_next_url_and_nothing_is_lost() {
    // Two independent dispatchers (different seeds: different session ids);
    // the second does not know the first's session, so the resume is
    // refused and the client starts over there under the same indexes.
    let mut doomed = CrashableServer::start(Config::default(), 2);
    let survivor = dispatcher(Config::default()).await;
    // Slow enough that the crash catches every utterance without a result.
    let _doomed_node = fake_node::start(&format!("ws://{}", doomed.addr), fake_node::Behaviour { delay_ms: 1_500, stagger_ms: 0 }).await;
    let _node = fake_node::start(&format!("ws://{}", survivor.addr), fake_node::Behaviour { delay_ms: 50, stagger_ms: 0 }).await;
    let doomed_url = format!("ws://{}/ws/session", doomed.addr);
    let mut config = client_config(doomed_url.clone());
    config.fallback_urls = vec![format!("ws://{}/ws/session", survivor.addr)];
    let (client, mut rx) = start(config);
    push(&client, &speech().0);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::Queued(q) if q.index == 2)).await;
    // Let the utterances reach the first dispatcher and its node, then crash it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(results(&events).is_empty(), "the crash must catch every utterance without a result: {events:#?}");
    doomed.crash();
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, SENTENCES.len());
    let st = states(&events);
    let sessions: Vec<&String> =
        st.iter().filter_map(|s| if let ConnectionState::Connected { session_id, .. } = s { Some(session_id) } else { None }).collect();
    assert!(matches!(sessions[..], [a, b] if a != b), "a new session on the second dispatcher: {st:?}");
    let lost: Vec<&String> =
        st.iter().filter_map(|s| if let ConnectionState::Disconnected { reason, .. } = s { Some(reason) } else { None }).collect();
    assert!(matches!(lost[..], [reason] if reason.contains(&doomed_url)), "one back-off step, naming the crashed URL: {st:?}");
}

#[tokio::test]
async fn rate_limited_utterances_are_sent_again_and_all_answered() {
    let config = Config { core: CoreConfig { max_pending_per_session: 2, ..CoreConfig::default() }, ..Config::default() };
    let server = dispatcher(config).await;
    let _node = fake_node::start(&format!("ws://{}", server.addr), fake_node::Behaviour { delay_ms: 200, stagger_ms: 0 }).await;
    let mut config = client_config(format!("ws://{}/ws/session", server.addr));
    config.session.max_in_flight = 8; // more than the server takes
    config.session.rate_limit_retry_ms = 300;
    let (client, mut rx) = start(config);
    for i in 0..6u64 {
        let samples = speech().0[16_000..16_000 + 8_000].to_vec();
        let u = Utterance {
            samples,
            sample_rate: 16_000,
            start_ms: i * 500,
            speech_start_ms: i * 500,
            speech_end_ms: i * 500 + 500,
            end_ms: i * 500 + 500,
            manual_cut: true,
            forced: false,
        };
        client.push_utterance(u).unwrap();
    }
    client.close().unwrap();
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert_all_results_in_order(&events, 6);
}

#[tokio::test]
async fn wss_with_a_private_certificate() {
    let dir = std::env::temp_dir().join(format!("tolk-sdk-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let config = Config { tls_cert: Some(dir.join("cert.pem")), tls_key: Some(dir.join("key.pem")), ..Config::default() };
    let server = dispatcher(config).await;
    let url = format!("wss://localhost:{}/ws/session", server.addr.port());

    // Not trusted without the certificate: the attempt fails and is retried.
    let (untrusting, mut rx) = start(client_config(url.clone()));
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::State(ConnectionState::Disconnected { .. }))).await;
    let st = states(&events);
    assert!(
        matches!(st.last(), Some(ConnectionState::Disconnected { reason, .. }) if reason.contains("certificate") || reason.contains("Certificate")),
        "{st:?}"
    );
    drop(untrusting);

    let mut config = client_config(url);
    config.extra_root_certs_pem = Some(cert.cert.pem());
    let (client, mut rx) = start(config);
    let mut events = vec![];
    until(&mut rx, &mut events, |e| matches!(e, Event::State(ConnectionState::Connected { .. }))).await;
    client.close().unwrap();
    until_closed(&mut rx, &mut events).await;
    assert!(matches!(states(&events).last(), Some(ConnectionState::Closed { .. })));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_wrong_pairing_code_stops_the_client() {
    let server = dispatcher(Config::default()).await;
    let mut config = client_config(format!("ws://{}/ws/session", server.addr));
    config.session.pairing_code = Some("000000".into());
    let (client, mut rx) = start(config);
    let mut events = vec![];
    until_closed(&mut rx, &mut events).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Error(SdkError::SessionRefused { code, .. }) if code == "INVALID_PAIRING_CODE")),
        "{events:#?}"
    );
    assert!(client.wait_closed(Duration::from_secs(5)));
    assert_eq!(client.push_audio(&[0; 160]), Err(SdkError::Closed));
}

#[test]
fn bad_settings_fail_at_start() {
    let bad = |config: ClientConfig| Client::start(config, |_e: Event| {}).unwrap_err();
    assert!(matches!(bad(ClientConfig::new("http://x/ws/session")), SdkError::InvalidClientConfig { field, .. } if field == "url"));
    let mut c = ClientConfig::new("ws://127.0.0.1:1/ws/session");
    c.chunker.sample_rate = 44_100;
    assert_eq!(bad(c), SdkError::UnsupportedSampleRate(44_100));
    let mut c = ClientConfig::new("wss://127.0.0.1:1/ws/session");
    c.extra_root_certs_pem = Some("not a certificate".into());
    assert!(matches!(bad(c), SdkError::InvalidClientConfig { field, .. } if field == "extra_root_certs_pem"));
    let mut c = ClientConfig::new("ws://127.0.0.1:1/ws/session");
    c.fallback_urls = vec!["wss://127.0.0.2:1/ws/session".into(), "127.0.0.3:1/ws/session".into()];
    assert!(
        matches!(bad(c), SdkError::InvalidClientConfig { field, reason } if field == "fallback_urls" && reason.contains("entry 1") && reason.contains("127.0.0.3")),
        "names the bad entry"
    );
}

#[test]
fn odd_pcm_bytes_are_refused() {
    let client = Client::start(ClientConfig::new("ws://127.0.0.1:1/ws/session"), |_e: Event| {}).unwrap();
    assert_eq!(client.push_pcm16_le(&[1, 2, 3]), Err(SdkError::OddPcmLength(3)));
    assert_eq!(client.push_pcm16_le(&[1, 2, 3, 4]), Ok(()));
}
