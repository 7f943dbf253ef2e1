//! An app streams speech through the SDK to the dispatcher, which spreads
//! the utterances over two real nodes (PocketSphinx → Apertium → eSpeak NG):
//! every utterance comes back once, in order, recognised, translated and
//! spoken.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, scratch};

/// Apertium's Spanish for `text`, from the `apertium` program itself.
fn apertium(text: &str) -> String {
    let mut child = Command::new("apertium").args(["-u", "eng-spa"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_speech_comes_back_from_two_nodes_recognised_translated_spoken_and_in_order() {
    let dir = scratch("streaming");
    let texts = &SENTENCES[..6];
    let clips = speech::clips(&dir.join("speech"), texts);
    // Utterances may queue for a node while both are busy.
    let dispatcher = DispatcherProcess::start(&dir, "[core]\nadmission_wait_ms = 60000\n", &[]).await;
    let setup = NodeSetup::new(Engines::Real);
    let mut nodes = [
        NodeProcess::start(&dir, "a", &dispatcher.ws_base(), &setup, false),
        NodeProcess::start(&dir, "b", &dispatcher.ws_base(), &setup, false),
    ];
    for n in &mut nodes {
        n.registered(1).await;
    }

    // The whole recording at once, as a long microphone stream: the VAD cuts
    // it into one utterance per sentence, sent as soon as each is cut.
    let mut app = App::start(app::config(&dispatcher.session_url()));
    app.push_audio(&speech::stream(&clips, 1000));
    app.close(Duration::from_secs(120)).await;

    assert_eq!(app.queued(), (0..texts.len() as u64).collect::<Vec<_>>(), "one utterance per sentence: {}", app.summary());
    app.assert_one_result_each_in_order();
    assert_eq!(app.connections().len(), 1, "one connection, never lost: {:#?}", app.states());

    let (mut errors, mut reference_words) = (0, 0);
    for (t, text) in app.results().into_iter().zip(texts) {
        // Recognised: PocketSphinx's words, close to what flite said.
        let e = speech::word_errors(text, &t.text_asr);
        errors += e;
        reference_words += speech::words(text).len();
        println!("#{} {text:?} → {:?} ({e} errors) → {:?}", t.index, t.text_asr, t.text_translated);
        // Translated: exactly Apertium's Spanish for the recognised text.
        assert!(!t.text_translated.is_empty() && t.text_translated != t.text_asr, "{t:?}");
        assert_eq!(t.text_translated, apertium(&t.text_asr));
        // Spoken: speech, neither empty nor silent; Opus from the node (the
        // SDK's default), decoded by the SDK: eSpeak's 22.05 kHz coded at 24.
        assert_eq!((t.tts_format, t.tts_sample_rate), (Some(tolk_sdk::AudioFormat::Pcm16), Some(24_000)));
        let (samples, rate) = app::speech_of(t);
        let secs = samples.len() as f64 / f64::from(rate);
        let n_words = speech::words(&t.text_translated).len() as f64;
        assert!(secs >= 0.1 * n_words && secs <= 1.5 * n_words + 1.0, "#{}: {secs:.2} s of speech for {n_words} words", t.index);
        assert!(speech::rms(&samples) > 300.0, "#{}: the speech is near silence", t.index);
    }
    let wer = errors as f64 / reference_words as f64;
    println!("WER {:.1}% ({errors} errors in {reference_words} words)", wer * 100.0);
    assert!(wer <= 0.2, "word error rate {:.1}% > 20%", wer * 100.0);

    // Both nodes worked (utterances arrived together, so the least-loaded
    // policy spread them), and every result is a job one of them finished.
    let done: Vec<Vec<String>> = nodes.iter().map(NodeProcess::jobs_done).collect();
    assert!(done.iter().all(|d| !d.is_empty()), "both nodes ran jobs: {done:?}");
    let all: HashSet<&String> = done.iter().flatten().collect();
    for t in app.results() {
        assert!(all.contains(&t.job_id), "job {} of #{} was done by a node: {done:?}", t.job_id, t.index);
    }
}
