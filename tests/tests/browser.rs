//! The web client (`/app/`) and the dashboard (`/dashboard`) in headless
//! Chromium, against the real dispatcher and a real node (PocketSphinx →
//! Apertium → eSpeak NG).
//!
//! Chromium's fake microphone plays a WAV of flite speaking three sentences;
//! the page cuts it with the SDK's chunker (wasm), sends it with the SDK's
//! session rules, and shows and plays the results. `tests/browser/run.mjs`
//! (playwright-core driving Debian's `/usr/bin/chromium`) checks the page
//! and asks this test, over its stdin/stdout, to start the node, kill it and
//! kill the dispatcher, so the dashboard can be seen following each.
//! Screenshots go to `target/browser-screenshots/`.
//!
//! Needs `chromium` and `tests/browser/node_modules` (scripts/setup.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{ADMIN_TOKEN, DispatcherProcess, NodeProcess, NodeSetup, scratch, wire, workspace_root};

/// Speech at 16 kHz mono with `gap_ms` of silence around each clip, and a
/// longer lead-in so the page is listening before the first word.
fn write_wav(path: &std::path::Path, clips: &[Vec<i16>]) {
    let mut samples = vec![0i16; speech::RATE as usize * 2];
    samples.extend(speech::stream(clips, 1500));
    samples.extend(vec![0i16; speech::RATE as usize * 2]);
    let spec = hound::WavSpec { channels: 1, sample_rate: speech::RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_and_dashboard_in_headless_chromium() {
    let root = workspace_root();
    let script = root.join("tests/browser/run.mjs");
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "Debian's chromium is missing: run scripts/setup.sh");
    assert!(root.join("tests/browser/node_modules/playwright-core").exists(), "playwright-core is missing: run scripts/setup.sh");

    let dir = scratch("browser");
    let texts = &SENTENCES[..3];
    let clips = speech::clips(&dir.join("speech"), texts);
    let wav = dir.join("microphone.wav");
    write_wav(&wav, &clips);
    // Two sentences back to back: more than 4 s without a pause the VAD
    // would end on, so the release always falls inside the speech.
    let long = speech::clips(&dir.join("speech"), &["thank you very much for your help", "my brother lives in a small house"]).concat();
    let ptt_wav = dir.join("push-to-talk.wav");
    write_wav(&ptt_wav, &[long]);
    let shots = root.join("target/browser-screenshots");
    let _ = std::fs::remove_dir_all(&shots);

    let mut dispatcher = DispatcherProcess::start(&dir, "", &[("TOLK_WEB_LANGUAGES", "en-es")]).await;
    // The dashboard's data needs the admin token; the pages themselves hold none.
    let addr = dispatcher.addr;
    for path in ["/dashboard/feed", "/dashboard/snapshot"] {
        assert_eq!(wire::http(addr, "GET", path, None).await.0, 401, "{path} without a token");
        assert_eq!(wire::http(addr, "GET", path, Some("wrong")).await.0, 401, "{path} with a wrong token");
    }
    let (status, body) = wire::http(addr, "GET", "/dashboard/snapshot", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snapshot["nodes"], serde_json::json!([]), "{snapshot}");
    for path in ["/app/", "/app/app.js", "/app/tolk_client.wasm", "/dashboard"] {
        assert_eq!(wire::http(addr, "GET", path, None).await.0, 200, "{path}");
    }
    // No node, no language to offer.
    let (_, body) = wire::http(addr, "GET", "/app/languages", None).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["pairs"], serde_json::json!([]), "{body}");
    let mut child = Command::new("node")
        .arg(&script)
        .env("TOLK_BASE", format!("http://{}", dispatcher.addr))
        .env("TOLK_WAV", &wav)
        .env("TOLK_PTT_WAV", &ptt_wav)
        .env("TOLK_TOKEN", ADMIN_TOKEN)
        .env("TOLK_EXPECT", texts.len().to_string())
        .env("TOLK_SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("browser.log")).unwrap())
        .spawn()
        .expect("run node (Node.js)");
    let mut to_script = child.stdin.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(420);
    let mut node: Option<NodeProcess> = None;
    let mut result = None;
    let context = |dispatcher: &DispatcherProcess, node: &Option<NodeProcess>| {
        format!(
            "\nbrowser log:\n{}\ndispatcher log:\n{}\nnode log:\n{}",
            std::fs::read_to_string(dir.join("browser.log")).unwrap_or_default(),
            dispatcher.log(),
            node.as_ref().map(NodeProcess::log).unwrap_or_default()
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the browser script ended without PASS{}", context(&dispatcher, &node)),
            Err(_) => {
                let _ = child.kill();
                panic!("the browser script took longer than 7 minutes{}", context(&dispatcher, &node));
            }
        };
        println!("browser: {line}");
        let reply = match line.as_str() {
            "STEP start-node" => {
                // `--pair`: the page binds its session to this node with the code.
                let mut n = NodeProcess::start(&dir, "node", &dispatcher.ws_base(), &NodeSetup::new(Engines::Real), true);
                let id = n.registered(1).await;
                let code = n.pairing_code().await;
                node = Some(n);
                let (_, body) = wire::http(addr, "GET", "/app/languages", None).await;
                let pairs = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pairs"].clone();
                assert_eq!(pairs, serde_json::json!([{"src_lang": "en", "tgt_lang": "es"}]), "{body}");
                format!("GO {id} {code}")
            }
            "STEP kill-node" => {
                node.as_mut().expect("a node runs").kill();
                "GO".to_owned()
            }
            "STEP kill-dispatcher" => {
                dispatcher.kill();
                "GO".to_owned()
            }
            "PASS" => break,
            l if l.starts_with("RESULT ") => {
                result = Some(serde_json::from_str::<serde_json::Value>(&l["RESULT ".len()..]).unwrap());
                continue;
            }
            l if l.starts_with("FAIL") => panic!("{l}\nscreenshots: {}{}", shots.display(), context(&dispatcher, &node)),
            _ => continue,
        };
        writeln!(to_script, "{reply}").unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the browser script exited with {status}");

    // The results came from the node: its log names every job it finished.
    let result = result.expect("the script reported its result");
    let done = node.as_ref().unwrap().jobs_done();
    let results = result["results"].as_array().unwrap();
    assert_eq!(results.len(), texts.len());
    for (r, text) in results.iter().zip(texts) {
        let job = r["job_id"].as_str().unwrap();
        assert!(done.iter().any(|j| j == job), "job {job} was done by the node: {done:?}");
        let heard = r["text_asr"].as_str().unwrap();
        let errors = speech::word_errors(text, heard);
        println!("said {text:?}, heard {heard:?} ({errors} word errors), translated {:?}", r["text_translated"]);
        assert!(errors * 2 <= speech::words(text).len(), "the node heard the sentence: {text:?} → {heard:?}");
    }
    // Measured, not asserted: from the end of an utterance to its translation on the page.
    println!("utterance cut → translation shown (ms): {}", result["latency_ms"]);
    // Push-to-talk, released mid-sentence: the node heard its beginning.
    println!("push-to-talk, released mid-sentence: heard {}", result["ptt_heard"]);
    for shot in [
        "app.png",
        "app-push-to-talk.png",
        "app-wrong-pairing-code.png",
        "app-offline.png",
        "dashboard-1-empty.png",
        "dashboard-2-live.png",
        "dashboard-3-after-session.png",
        "dashboard-4-node-gone.png",
        "dashboard-5-offline.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot}");
    }
    println!("screenshots in {}", shots.display());
}
