//! An app on the SDK: a [`Client`] whose listener records every event, and
//! the checks the tests make on them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tolk_sdk::{Client, ClientConfig, ConnectionState, Event, Translation, Utterance, UtteranceFailure};

/// A running SDK client and the events it delivered so far.
#[derive(Debug)]
pub struct App {
    pub client: Client,
    rx: mpsc::UnboundedReceiver<Event>,
    pub events: Vec<Event>,
}

/// A client config for `url`, `en` → `es`, reconnecting quickly (tests
/// restart servers), with a fixed jitter seed.
pub fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.session.src_lang = "en".into();
    c.session.tgt_lang = "es".into();
    c.session.reconnect_min_ms = 100;
    c.session.reconnect_max_ms = 500;
    c.session.close_timeout_ms = 90_000;
    c.seed = Some(7);
    c
}

impl App {
    /// Starts a client with `config`.
    pub fn start(config: ClientConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = Client::start(config, move |e: Event| {
            let _ = tx.send(e);
        })
        .expect("the client starts");
        Self { client, rx, events: Vec::new() }
    }

    /// Pushes audio as a microphone would, in 100 ms pieces (faster than
    /// real time: the chunker's clock is the sample count).
    pub fn push_audio(&self, samples: &[i16]) {
        for piece in samples.chunks(1600) {
            self.client.push_audio(piece).unwrap();
        }
    }

    /// Hands over one utterance cut by the app (bypassing the VAD).
    pub fn push_utterance(&self, samples: &[i16], start_ms: u64) {
        let len_ms = samples.len() as u64 * 1000 / u64::from(crate::speech::RATE);
        let u = Utterance {
            samples: samples.to_vec(),
            sample_rate: crate::speech::RATE,
            start_ms,
            speech_start_ms: start_ms,
            speech_end_ms: start_ms + len_ms,
            end_ms: start_ms + len_ms,
            manual_cut: true,
            forced: false,
        };
        self.client.push_utterance(u).unwrap();
    }

    /// Records events until one satisfies `pred` (it included), unless one
    /// recorded already does; panics after `limit`.
    pub async fn until(&mut self, what: &str, limit: Duration, pred: impl Fn(&Event) -> bool) {
        self.until_count(what, limit, 1, pred).await;
    }

    /// Records events until `count` recorded events satisfy `pred`; panics
    /// after `limit`.
    pub async fn until_count(&mut self, what: &str, limit: Duration, count: usize, pred: impl Fn(&Event) -> bool) {
        self.drain();
        let mut seen = self.events.iter().filter(|e| pred(e)).count();
        if seen >= count {
            return;
        }
        let found = tokio::time::timeout(limit, async {
            while let Some(e) = self.rx.recv().await {
                seen += usize::from(pred(&e));
                self.events.push(e);
                if seen >= count {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "{what}: not within {limit:?}; events so far:\n{}", self.summary());
    }

    /// Records every event already delivered, without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.events.push(e);
        }
    }

    /// Closes the session and records every event up to `Closed`.
    pub async fn close(&mut self, limit: Duration) {
        self.client.close().unwrap();
        self.until("the client closes", limit, |e| matches!(e, Event::State(ConnectionState::Closed { .. }))).await;
        assert!(self.client.wait_closed(Duration::from_secs(10)), "the worker thread stops after Closed");
    }

    /// One line per event, speech left out (for failure messages).
    pub fn summary(&self) -> String {
        self.events
            .iter()
            .map(|e| match e {
                Event::Queued(q) => format!("queued #{} ({}–{} ms)", q.index, q.start_ms, q.end_ms),
                Event::Result(t) => format!("result #{} job {} asr {:?} → {:?}", t.index, t.job_id, t.text_asr, t.text_translated),
                Event::Failed(f) => format!("failed #{} {} {}", f.index, f.code, f.message),
                Event::State(s) => format!("state {s:?}"),
                Event::Error(e) => format!("error {e:?}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Indexes of the utterances the client took (`Queued`), in order.
    pub fn queued(&self) -> Vec<u64> {
        self.events.iter().filter_map(|e| if let Event::Queued(q) = e { Some(q.index) } else { None }).collect()
    }

    pub fn results(&self) -> Vec<&Translation> {
        self.events.iter().filter_map(|e| if let Event::Result(t) = e { Some(t) } else { None }).collect()
    }

    pub fn failures(&self) -> Vec<&UtteranceFailure> {
        self.events.iter().filter_map(|e| if let Event::Failed(f) = e { Some(f) } else { None }).collect()
    }

    pub fn states(&self) -> Vec<&ConnectionState> {
        self.events.iter().filter_map(|e| if let Event::State(s) = e { Some(s) } else { None }).collect()
    }

    /// Session ids of every `Connected` state, with `resumed`.
    pub fn connections(&self) -> Vec<(String, bool)> {
        self.states()
            .into_iter()
            .filter_map(|s| match s {
                ConnectionState::Connected { session_id, resumed, .. } => Some((session_id.clone(), *resumed)),
                _ => None,
            })
            .collect()
    }

    /// Indexes of outcome events (`Result` or `Failed`), in delivery order.
    pub fn outcome_indexes(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Result(t) => Some(t.index),
                Event::Failed(f) => Some(f.index),
                _ => None,
            })
            .collect()
    }

    /// Every utterance taken got exactly one outcome, delivered in index
    /// order, and each was a result (no failure).
    pub fn assert_one_result_each_in_order(&self) {
        let queued = self.queued();
        let outcomes = self.outcome_indexes();
        let mut per_index: BTreeMap<u64, usize> = BTreeMap::new();
        for i in &outcomes {
            *per_index.entry(*i).or_default() += 1;
        }
        let duplicated: Vec<_> = per_index.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicated.is_empty(), "utterances with more than one outcome: {duplicated:?}\n{}", self.summary());
        assert_eq!(outcomes, queued, "one outcome per utterance taken, in index order:\n{}", self.summary());
        assert!(self.failures().is_empty(), "every outcome is a result: {:#?}", self.failures());
    }
}

/// The speech of a result as samples and their rate, whichever format the
/// SDK handed over (pcm16, Opus decoded by default, or wav).
pub fn speech_of(t: &Translation) -> (Vec<i16>, u32) {
    let bytes = t.tts_audio.clone().unwrap_or_else(|| panic!("#{} has no speech", t.index));
    match t.tts_format {
        Some(tolk_sdk::AudioFormat::Pcm16) => {
            let rate = t.tts_sample_rate.unwrap_or_else(|| panic!("#{}: pcm16 without a rate", t.index));
            (bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(), rate)
        }
        Some(tolk_sdk::AudioFormat::Wav) => {
            let r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
            let rate = r.spec().sample_rate;
            (r.into_samples::<i16>().collect::<Result<_, _>>().unwrap(), rate)
        }
        other => panic!("#{}: speech as {other:?}", t.index),
    }
}
