//! Pairing end to end: a node started with `--pair` gets a code from the
//! dispatcher and prints it; an app binds its session with the code, and
//! its jobs go only to that node — never to the public node beside it, not
//! even when the paired node is gone. Wrong codes are refused
//! (`INVALID_PAIRING_CODE`), and guessing is rate limited (`RATE_LIMITED`,
//! then even the right code is refused to that address).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tolk_e2e::node::Engines;
use tolk_e2e::speech::{self, SENTENCES};
use tolk_e2e::{App, DispatcherProcess, NodeProcess, NodeSetup, app, scratch, wire};
use tolk_sdk::{ConnectionState, Event, SdkError};

fn paired_init(code: &str) -> serde_json::Value {
    let mut init = wire::session_init();
    init["pairing_code"] = json!(code);
    init
}

/// A six-digit code that is not `code`.
fn wrong_code(code: &str, n: u32) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1 + n) % 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_session_uses_only_its_node_and_wrong_codes_are_refused_then_rate_limited() {
    const LIMIT: Duration = Duration::from_secs(90);
    let dir = scratch("pairing");
    let clips = speech::clips(&dir.join("speech"), &SENTENCES[..3]);
    // A paired utterance whose node is gone fails after this wait.
    let dispatcher = DispatcherProcess::start(&dir, "[core]\nadmission_wait_ms = 3000\n", &[]).await;
    // The personal node serves only its paired sessions; the other takes
    // public jobs.
    let personal_setup = NodeSetup { accept_public_jobs: false, ..NodeSetup::new(Engines::Quick) };
    let mut personal = NodeProcess::start(&dir, "personal", &dispatcher.ws_base(), &personal_setup, true);
    let personal_id = personal.registered(1).await;
    let mut public = NodeProcess::start(&dir, "public", &dispatcher.ws_base(), &NodeSetup::new(Engines::Quick), false);
    public.registered(1).await;
    let code = personal.pairing_code().await;
    println!("pairing code {code} for {personal_id}");

    // A paired app and a public app, side by side.
    let mut config = app::config(&dispatcher.session_url());
    config.session.pairing_code = Some(code.clone());
    let mut paired = App::start(config);
    let mut anonymous = App::start(app::config(&dispatcher.session_url()));
    for (i, clip) in clips.iter().enumerate() {
        paired.push_utterance(clip, i as u64 * 10_000);
        anonymous.push_utterance(clip, i as u64 * 10_000);
    }
    paired.close(LIMIT).await;
    anonymous.close(LIMIT).await;
    for app in [&paired, &anonymous] {
        assert_eq!(app.queued(), vec![0, 1, 2], "{}", app.summary());
        app.assert_one_result_each_in_order();
    }
    let bound: Vec<Option<String>> = paired
        .states()
        .into_iter()
        .filter_map(|s| if let ConnectionState::Connected { assigned_node_id, .. } = s { Some(assigned_node_id.clone()) } else { None })
        .collect();
    assert_eq!(bound, vec![Some(personal_id.clone())], "the ack names the paired node");
    let by_personal: HashSet<String> = personal.jobs_done().into_iter().collect();
    let by_public: HashSet<String> = public.jobs_done().into_iter().collect();
    for t in paired.results() {
        assert!(by_personal.contains(&t.job_id) && !by_public.contains(&t.job_id), "paired job {} ran on the personal node", t.job_id);
    }
    for t in anonymous.results() {
        assert!(by_public.contains(&t.job_id) && !by_personal.contains(&t.job_id), "public job {} ran on the public node", t.job_id);
    }

    // The code binds more sessions while it lives. With the personal node
    // gone, a paired utterance fails — it is not given to the public node.
    let (mut phone, ack) = wire::open_session(dispatcher.addr, &paired_init(&code)).await;
    assert_eq!(ack["assigned_node_id"], json!(personal_id), "{ack}");
    let sid = ack["session_id"].as_str().unwrap().to_owned();
    personal.kill();
    let public_before = public.jobs_done().len();
    wire::send(&mut phone, &wire::utterance(&sid, 0, &clips[0])).await;
    let e = wire::expect_error(&mut phone, "NODE_UNAVAILABLE").await;
    assert_eq!(e["details"]["utterance_index"], 0, "the error is the utterance's outcome: {e}");
    assert_eq!(public.jobs_done().len(), public_before, "the public node never got the paired job");

    // A wrong code, through the SDK: refused, and the SDK gives up.
    let mut config = app::config(&dispatcher.session_url());
    config.session.pairing_code = Some(wrong_code(&code, 0));
    let mut guesser = App::start(config);
    guesser.until("the SDK closes", LIMIT, |e| matches!(e, Event::State(ConnectionState::Closed { .. }))).await;
    let refused =
        guesser.events.iter().any(|e| matches!(e, Event::Error(SdkError::SessionRefused { code, .. }) if code == "INVALID_PAIRING_CODE"));
    assert!(refused, "{}", guesser.summary());

    // Four more wrong codes from this address: refused one by one (five
    // wrong codes per minute are allowed)...
    for n in 1..5 {
        let mut ws = wire::connect(dispatcher.addr, "/ws/session").await;
        wire::send(&mut ws, &paired_init(&wrong_code(&code, n))).await;
        wire::expect_error(&mut ws, "INVALID_PAIRING_CODE").await;
    }
    // ...then guessing is cut off, whatever the code, the right one too.
    for guess in [wrong_code(&code, 5), code.clone()] {
        let mut ws = wire::connect(dispatcher.addr, "/ws/session").await;
        wire::send(&mut ws, &paired_init(&guess)).await;
        wire::expect_error(&mut ws, "RATE_LIMITED").await;
    }
    // A session without a code is still welcome.
    let (_ws, ack) = wire::open_session(dispatcher.addr, &wire::session_init()).await;
    assert_eq!(ack["assigned_node_id"], serde_json::Value::Null);
    assert_eq!(dispatcher.metric("tolk_pairing_failures_total").await, 5.0);
    assert_eq!(dispatcher.metric("tolk_pairing_rate_limited_total").await, 2.0);
}
