//! Engines in supervised child processes, against real children of the real
//! `tolk-node` binary (`engine-host`) and the `faulty` test engine: a
//! segfault, an `abort()`, an `exit()`, a hang and a leak each cost only the
//! call that caused them (an error naming why), the child is restarted with
//! a back-off that grows on repeated failures, the next call succeeds, and
//! another engine keeps serving meanwhile. Also: a frame bound, an external
//! SIGKILL, and the overhead per call against in-process (`--ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tolk_engine_sdk::Options;
use tolk_node::engine::process::{Notice, ProcessEngine, ProcessOptions};
use tolk_node::engine::supervisor::SupervisorConfig;
use tolk_node::engine::{Engine, EngineErrorKind, Request, Response};

/// Text spelled in samples, as the faulty engine hears it, padded with silence.
fn spelled(text: &str) -> Vec<i16> {
    let mut s: Vec<i16> = text.chars().map(|c| c as u32 as u16 as i16).collect();
    s.resize(s.len() + 1_600, 0);
    s
}

fn hear(engine: &dyn Engine, text: &str, deadline: Option<Instant>) -> Result<Response, tolk_node::engine::EngineError> {
    let samples = spelled(text);
    engine.process_until(Request::Asr { samples: &samples, sample_rate: 16_000, lang: "en" }, deadline)
}

struct Started {
    engine: ProcessEngine,
    notices: mpsc::Receiver<Notice>,
}

fn start(package: &str, options: &str, memory_limit_mb: Option<u64>, instances: usize) -> Started {
    let (tx, notices) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let opts = ProcessOptions {
        host: env!("CARGO_BIN_EXE_tolk-node").into(),
        library: support::plugin(package),
        options: options.to_owned(),
        memory_limit_mb,
        name: package.to_owned(),
        supervisor: SupervisorConfig {
            instances,
            backoff_min_ms: 100,
            backoff_max_ms: 2_000,
            healthy_ms: 60_000,
            start_timeout_ms: 20_000,
        },
        notify: Some(std::sync::Arc::new(move |n| {
            let _ = tx.lock().unwrap().send(n);
        })),
    };
    let (engine, ready) = ProcessEngine::start(opts).unwrap_or_else(|e| panic!("{package} starts: {e}"));
    assert_eq!(ready.abi_version, 2);
    Started { engine, notices }
}

impl Started {
    fn next_notice(&self) -> Notice {
        self.notices.recv_timeout(Duration::from_secs(30)).expect("a health notice in time")
    }

    /// The Down notice of the failure just caused, then the Up of the restart.
    fn down_then_up(&self) -> (String, u32, u64) {
        let Notice::Down { reason, failures, restart_in_ms } = self.next_notice() else { panic!("Down first") };
        assert_eq!(self.next_notice(), Notice::Up, "restarted after {reason}");
        (reason, failures, restart_in_ms)
    }
}

fn text(r: Result<Response, tolk_node::engine::EngineError>) -> String {
    match r {
        Ok(Response::Text(t)) => t,
        other => panic!("{other:?}"),
    }
}

/// One fault: a good call, the fault (an error with `why` in its message),
/// a restart (a new process), a good call again.
fn fault_costs_one_call(word: &str, why: &str, memory_limit_mb: Option<u64>) {
    let s = start("tolk-test-engine-faulty", "", memory_limit_mb, 1);
    let pid = s.engine.pids();
    assert_eq!(text(hear(&s.engine, "hello before", None)), "hello before");
    let deadline = Some(Instant::now() + Duration::from_secs(2));
    let err = hear(&s.engine, word, deadline).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::Backend);
    assert!(err.message.contains(why), "{word}: {:?} lacks {why:?}", err.message);
    let (reason, failures, _) = s.down_then_up();
    assert_eq!((reason, failures), (err.message.clone(), 1));
    assert_ne!(s.engine.pids(), pid, "a new child");
    assert_eq!(text(hear(&s.engine, "hello after", None)), "hello after");
    let h = s.engine.health();
    assert_eq!((h.running, h.failures_total), (1, 1));
}

#[test]
fn a_segfault_costs_one_call() {
    fault_costs_one_call("segfault", "killed by signal 11 (SIGSEGV): faulty: writing through a null pointer", None);
}

#[test]
fn an_abort_costs_one_call() {
    fault_costs_one_call("abort", "killed by signal 6 (SIGABRT)", None);
}

#[test]
fn an_exit_costs_one_call() {
    fault_costs_one_call("exit", "exited with status 3: faulty: calling exit(3)", None);
}

#[test]
fn a_hang_is_killed_at_the_deadline() {
    let started = Instant::now();
    fault_costs_one_call("hang", "the engine hung: killed at the job's deadline", None);
    // Not a timing assertion on speed: the hang cannot have ended before its deadline.
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[test]
fn a_leak_hits_the_memory_limit() {
    // The allocator's own last words name the cause.
    fault_costs_one_call("leak", "memory allocation of", Some(256));
}

#[test]
fn back_off_grows_on_repeated_crashes() {
    let s = start("tolk-test-engine-faulty", "", None, 1);
    let mut delays = Vec::new();
    for i in 1..=4 {
        assert!(hear(&s.engine, "abort", None).is_err());
        let (_, failures, restart_in_ms) = s.down_then_up();
        assert_eq!(failures, i);
        delays.push(restart_in_ms);
    }
    assert_eq!(delays, [100, 200, 400, 800]);
    assert_eq!(s.engine.health().failures_in_a_row, 4);
    assert_eq!(text(hear(&s.engine, "still here", None)), "still here");
}

#[test]
fn another_engine_and_another_instance_keep_serving_while_one_hangs() {
    let a = start("tolk-test-engine-faulty", "", None, 2);
    let b = start("tolk-test-engine-echo", "", None, 1);
    std::thread::scope(|scope| {
        let hung = scope.spawn(|| hear(&a.engine, "hang", Some(Instant::now() + Duration::from_secs(3))));
        // Let the hang take its instance; the other instance and the other
        // engine must still answer while it holds it.
        std::thread::sleep(Duration::from_millis(300));
        let nmt = b.engine.process(Request::Nmt { text: "hi", src_lang: "en", tgt_lang: "es" }).unwrap();
        assert_eq!(nmt, Response::Text("[en→es] hi".into()));
        assert_eq!(text(hear(&a.engine, "second instance", None)), "second instance");
        assert!(!hung.is_finished(), "the hang is still held while the others answer");
        let err = hung.join().unwrap().unwrap_err();
        assert!(err.message.contains("hung"), "{err:?}");
    });
    a.down_then_up();
}

#[test]
fn a_child_killed_from_outside_is_restarted_and_a_failing_create_is_a_start_error() {
    let s = start("tolk-test-engine-faulty", "", None, 1);
    let pid = s.engine.pids()[0];
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let (reason, _, _) = s.down_then_up();
    assert!(reason.contains("signal 9 (SIGKILL)"), "{reason}");
    assert_eq!(text(hear(&s.engine, "ok", None)), "ok");

    let opts = ProcessOptions {
        host: env!("CARGO_BIN_EXE_tolk-node").into(),
        library: support::plugin("tolk-test-engine-faulty"),
        options: Options::from_pairs([("fail_create".to_owned(), "yes".to_owned())]).encode(),
        memory_limit_mb: None,
        name: "broken".into(),
        supervisor: SupervisorConfig::default(),
        notify: None,
    };
    let err = ProcessEngine::start(opts).unwrap_err();
    assert!(err.message.contains("asked to fail at creation"), "{err:?}");
}

#[test]
fn a_dropped_engine_leaves_no_child_behind() {
    let s = start("tolk-test-engine-faulty", "", None, 2);
    let pids = s.engine.pids();
    assert_eq!(pids.len(), 2);
    drop(s);
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
        assert!(!alive, "child {pid} still runs");
    }
}

/// The overhead of a call in a child process against the same call in
/// process, with the echo engine (nothing but the call) and with flite
/// (a real synthesis). Prints µs per call; asserts nothing about time.
/// `cargo test -p tolk-node --test isolation -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run on a quiet machine"]
fn overhead_per_call_against_in_process() {
    use tolk_node::engine::plugin::{Library, PluginEngine};
    let samples = vec![1000i16; 16_000 * 5];
    let cases: [(&str, Request<'_>, u32); 3] = [
        ("tolk-test-engine-echo", Request::Nmt { text: "the weather is nice today", src_lang: "en", tgt_lang: "es" }, 2_000),
        ("tolk-test-engine-faulty", Request::Asr { samples: &samples, sample_rate: 16_000, lang: "en" }, 500),
        ("tolk-engine-flite", Request::Tts { text: "the weather is nice today", lang: "en" }, 30),
    ];
    for (package, request, n) in cases {
        let local = PluginEngine::create(Library::open(&support::plugin(package)).unwrap(), &Options::default()).unwrap();
        let child = start(package, "", None, 1);
        let (a, b) = alternating(n, || local.process(request).map(drop).unwrap(), || child.engine.process(request).map(drop).unwrap());
        println!(
            "{package:<24} in process {:>9.1} µs/call, child process {:>9.1} µs/call: overhead {:>7.1} µs",
            a * 1e6,
            b * 1e6,
            (b - a) * 1e6
        );
    }
}

/// Runs `a` and `b` in turn `n` times each (so load from elsewhere hits
/// both alike); the median seconds of each.
fn alternating(n: u32, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b(); // warm both
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        a();
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        tb.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut ta), median(&mut tb))
}

/// A whole real job (PocketSphinx → echo → eSpeak NG on a sentence spoken by
/// flite) through `pipeline::run`, engines in process and in child
/// processes: ms per job both ways, and the difference as a share of the job.
/// `cargo test -p tolk-node --test isolation -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run on a quiet machine"]
fn overhead_per_real_job_against_in_process() {
    use tolk_node::config::Config;
    use tolk_node::engine::plugin::{Library, PluginEngine};
    use tolk_node::engine::{EngineSet, Hosting};
    use tolk_protocol::node::{JobAssign, Pipeline};
    use tolk_protocol::{AudioFormat, Features, audio};

    let flite = PluginEngine::create(Library::open(&support::plugin("tolk-engine-flite")).unwrap(), &Options::default()).unwrap();
    let Response::Speech { samples, sample_rate } = flite.process(Request::Tts { text: "where is the train station", lang: "en" }).unwrap()
    else {
        panic!()
    };
    let job = JobAssign {
        job_id: "j".into(),
        session_id: "s".into(),
        utterance_index: 0,
        src_lang: "en".into(),
        tgt_lang: "es".into(),
        dialect: None,
        features: Features::default(),
        pipeline: Pipeline::default(),
        audio: audio::to_base64(&audio::encode_wav(&samples, sample_rate)).into(),
        audio_format: AudioFormat::Wav,
        sample_rate,
        deadline_ms: Some(60_000),
        tts_format: None,
    };
    let entry = |stage: &str, package: &str, id: &str, langs: &str, options: &str| {
        format!(
            "[[engine]]\nstage = \"{stage}\"\nlibrary = \"{}\"\nmodel_id = \"{id}\"\n{langs}\n[engine.options]\n{options}\n\n",
            support::plugin(package).display()
        )
    };
    let mut text = entry("asr", "tolk-engine-pocketsphinx", "ps", "src_lang = \"en\"", "");
    text += &entry("nmt", "tolk-test-engine-echo", "echo", "src_lang = \"en\"\ntgt_lang = \"es\"", "");
    text += &entry("tts", "tolk-engine-espeak", "espeak", "src_lang = \"es\"", "voice = \"es\"");
    let config = Config::parse(&text).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let (local, failures) = EngineSet::load(&config, &Hosting::default());
    assert!(failures.is_empty(), "{failures:?}");
    let children = Hosting { program: Some(env!("CARGO_BIN_EXE_tolk-node").into()), notify: None };
    let (isolated, failures) = EngineSet::load(&config, &children);
    assert!(failures.is_empty(), "{failures:?}");
    let job_on = |set: &EngineSet| tolk_node::pipeline::run(set, &job, &cancel).result.map(drop).unwrap();
    let (a, b) = alternating(20, || job_on(&local), || job_on(&isolated));
    let (a, b) = (a * 1e3, b * 1e3);
    let audio_s = samples.len() as f64 / f64::from(sample_rate);
    println!(
        "real job ({audio_s:.1} s of speech, 3 engine calls): in process {a:.1} ms/job, child processes {b:.1} ms/job: overhead {:.2} ms ({:.2} % of the job)",
        b - a,
        (b - a) / a * 100.0
    );
}
