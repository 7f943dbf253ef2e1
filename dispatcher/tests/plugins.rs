//! The Wasm plugin host with real components built from `plugins/guests/`:
//! loading and refusing, the sandbox against hostile plugins, the shipped
//! policies' behaviour, and the detectors on speech synthesised by espeak-ng.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::registry::Registry;
use tolk_dispatcher::core::policy::{Candidate, JobInfo, Policy};
use tolk_dispatcher::plugins::{Api, Kind, PluginHost, PluginsConfig};
use tolk_protocol::{AudioFormat, Features};

/// Builds every guest plugin once per test binary (cargo is incremental).
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tolk_plugin_build::build_shipped().expect("plugins build from source");
        tolk_plugin_build::repo_root().join("target/plugins")
    })
}

fn fresh_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tolk-plugins-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies built plugin `from` into `dir` as `to.wasm` (write + rename, as an operator's deploy would).
fn install(dir: &Path, from: &str, to: &str) {
    let tmp = dir.join(format!("{to}.tmp"));
    let src =
        [built().join(format!("{from}.wasm")), built().join(format!("testing/{from}.wasm"))].into_iter().find(|p| p.exists()).unwrap();
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{to}.wasm"))).unwrap();
}

fn host(dir: &Path, settings: &[(&str, &str)]) -> PluginHost {
    let mut config = PluginsConfig { dir: Some(dir.to_owned()), ..PluginsConfig::default() };
    for (stem, toml_text) in settings {
        config.settings.insert((*stem).to_owned(), toml::from_str(toml_text).unwrap());
    }
    PluginHost::new(config, &mut Registry::default()).unwrap().unwrap()
}

fn cand(node_id: &str, running: u32, last: bool, ms: Option<f64>) -> Candidate<'_> {
    Candidate {
        node_id,
        node_key: node_id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))),
        running,
        capacity: 4,
        cpu_percent: 10.0,
        is_last_node: last,
        ms_per_audio_s: ms,
        recent_failures: 0,
        trust_score: 0.5,
        verified: false,
        remote: false,
    }
}

fn job(session: &str) -> JobInfo<'_> {
    JobInfo { session_id: session, utterance_index: 0, audio_ms: 1000, attempt: 0, paired: false }
}

#[test]
fn shipped_plugins_load_and_declare_what_they_are() {
    let dir = fresh_dir("shipped");
    for p in ["least-loaded", "round-robin", "latency-aware", "sticky-session", "speech-rate", "emotion"] {
        install(&dir, p, p);
    }
    let h = host(&dir, &[]);
    let report = h.scan();
    assert_eq!(report.loaded.len(), 6, "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    let list = h.list();
    assert_eq!(list.iter().filter(|p| p.kind == Kind::Scheduler).count(), 4);
    assert_eq!(list.iter().filter(|p| p.kind == Kind::Detector).count(), 2);
    assert_eq!(list.iter().filter(|p| p.active).count(), 3, "one scheduler in effect, detectors always");
    // Both interface versions load side by side: 0.1.0 plugins are handed
    // the 0.1.0 view of each decision.
    let api = |file: &str| list.iter().find(|p| p.file == file).map(|p| p.api).unwrap();
    assert_eq!((api("least-loaded"), api("emotion")), (Api::V02, Api::V02));
    assert_eq!((api("round-robin"), api("sticky-session"), api("speech-rate")), (Api::V01, Api::V01, Api::V01));
    let supplied = h.supplied_features();
    assert!(supplied.emotion_detection && supplied.speech_rate_detection && !supplied.voice_style_detection);
    // A second scan of an unchanged folder does nothing.
    let again = h.scan();
    assert!(again.loaded.is_empty() && !again.scheduler_changed);
}

#[test]
fn both_versions_decide_and_the_trust_aware_policy_prefers_proven_nodes() {
    let dir = fresh_dir("versions-0.2.0");
    install(&dir, "least-loaded", "least-loaded");
    let old = fresh_dir("versions-0.1.0");
    install(&old, "round-robin", "round-robin");
    // Two equally loaded nodes; b has passed its canaries.
    let mut proven = cand("b", 1, false, None);
    proven.trust_score = 0.8;
    proven.verified = true;
    let cands = [cand("a", 1, false, None), proven];
    let h = host(&dir, &[]);
    h.scan();
    let mut p = h.policy();
    assert_eq!(p.pick(&job("s-1"), &cands), Some(1), "0.2.0 least-loaded: the proven node on a tie");
    // And load still comes first.
    let busy_proven = [cand("a", 0, false, None), cands[1]];
    assert_eq!(p.pick(&job("s-1"), &busy_proven), Some(0));
    let h = host(&old, &[]);
    h.scan();
    let mut p = h.policy();
    let picks: Vec<Option<usize>> = (0..4).map(|_| p.pick(&job("s-1"), &cands)).collect();
    assert!(picks.iter().all(Option::is_some), "the 0.1.0 policy decides: {picks:?}");
    assert_ne!(picks[0], picks[1], "round-robin takes turns");
}

#[test]
fn bad_files_are_refused_with_a_clear_reason_and_the_old_plugin_stays() {
    let dir = fresh_dir("refuse");
    install(&dir, "least-loaded", "policy");
    let h = host(&dir, &[]);
    assert_eq!(h.scan().loaded, vec!["policy"]);
    type Case<'a> = (&'a str, &'a dyn Fn(&Path), &'a str);
    let cases: [Case<'_>; 3] = [
        ("not-wasm", &|d: &Path| std::fs::write(d.join("policy.wasm"), b"#!/bin/sh\necho hi\n").unwrap(), "not a valid component"),
        ("wrong-version", &|d: &Path| install(d, "wrong-version", "policy"), "speaks tolk:plugin/scheduling@0.3.0"),
        ("extra-import", &|d: &Path| install(d, "extra-import", "policy"), "imports tolk:plugin/net"),
    ];
    for (what, write, reason) in cases {
        write(&dir);
        let report = h.scan();
        assert_eq!(report.refused.len(), 1, "{what}: {report:?}");
        assert!(report.refused[0].1.contains(reason), "{what}: {}", report.refused[0].1);
        // The previous policy is still in effect.
        let list = h.list();
        assert_eq!((list.len(), list[0].name.as_str(), list[0].active), (1, "least-loaded", true), "{what}");
        let mut policy = h.policy();
        assert_eq!(policy.pick(&job("s"), &[cand("a", 3, false, None), cand("b", 0, false, None)]), Some(1), "{what}");
    }
}

#[test]
fn hostile_plugins_fall_back_fast_and_never_take_the_host_down() {
    let modes = ["loop", "alloc", "trap", "panic", "log-flood", "bad-index"];
    for mode in modes {
        let dir = fresh_dir(mode);
        install(&dir, "hostile", "hostile");
        let h = host(&dir, &[("hostile", &format!("mode = \"{mode}\""))]);
        assert_eq!(h.scan().loaded.len(), 1, "{mode}");
        let mut policy = h.policy();
        let candidates = [cand("a", 0, false, None), cand("b", 1, false, None)];
        let started = Instant::now();
        let answer = policy.pick(&job("s"), &candidates);
        let took = started.elapsed();
        assert_eq!(answer, None, "{mode}: falls back to the built-in policy");
        eprintln!("hostile {mode:>10}: fallback after {:.2} ms", took.as_secs_f64() * 1000.0);
        // Again (a fresh instance), and a third time: then the plugin rests.
        assert_eq!(policy.pick(&job("s"), &candidates), None);
        assert_eq!(policy.pick(&job("s"), &candidates), None);
        let started = Instant::now();
        assert_eq!(policy.pick(&job("s"), &candidates), None);
        assert!(started.elapsed().as_millis() < 50 || mode == "alloc", "{mode}: resting plugins are not called");
        let failures = h.list()[0].failures;
        assert_eq!(failures, 3, "{mode}: failures counted");
    }
    // A well-behaved configuration of the same plugin works.
    let dir = fresh_dir("first");
    install(&dir, "hostile", "hostile");
    let h = host(&dir, &[("hostile", "mode = \"first\"")]);
    h.scan();
    assert_eq!(h.policy().pick(&job("s"), &[cand("a", 0, false, None), cand("b", 0, false, None)]), Some(0));
}

#[test]
fn shipped_policies_behave_as_documented() {
    let dir = fresh_dir("policies");
    for p in ["least-loaded", "round-robin", "latency-aware", "sticky-session"] {
        install(&dir, p, p);
    }
    let pick_with = |name: &str| {
        let mut config = PluginsConfig { dir: Some(dir.clone()), scheduler: Some(name.to_owned()), ..PluginsConfig::default() };
        config.cache_dir = Some(dir.join(".cache"));
        let h = PluginHost::new(config, &mut Registry::default()).unwrap().unwrap();
        h.scan();
        (h.clone(), h.policy())
    };
    let (_h, mut ll) = pick_with("least-loaded");
    assert_eq!(ll.pick(&job("s"), &[cand("a", 3, false, None), cand("b", 1, false, None), cand("c", 2, false, None)]), Some(1));

    let (_h, mut rr) = pick_with("round-robin");
    let c = [cand("a", 0, false, None), cand("b", 0, false, None), cand("c", 0, false, None)];
    let picks: Vec<_> = (0..6).map(|_| rr.pick(&job("s"), &c).unwrap()).collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);

    let (_h, mut la) = pick_with("latency-aware");
    let c = [cand("a", 0, false, Some(900.0)), cand("b", 0, false, Some(300.0)), cand("c", 0, false, Some(600.0))];
    assert_eq!(la.pick(&job("s"), &c), Some(1), "fastest per audio second");
    let c = [cand("a", 0, false, Some(300.0)), cand("b", 0, false, None)];
    assert_eq!(la.pick(&job("s"), &c), Some(1), "an unmeasured node is tried");
    let c = [cand("a", 4, false, Some(300.0)), cand("b", 0, false, Some(500.0))];
    assert_eq!(la.pick(&job("s"), &c), Some(1), "a busy fast node can lose to an idle one");

    let (_h, mut st) = pick_with("sticky-session");
    let c = [cand("a", 0, false, None), cand("b", 3, true, None), cand("c", 0, false, None)];
    assert_eq!(st.pick(&job("s1"), &c), Some(1), "stays on the last node");
    let c = [cand("a", 0, false, None), cand("b", 0, false, None), cand("c", 0, false, None)];
    let first = st.pick(&job("s1"), &c);
    assert!((0..20).all(|_| st.pick(&job("s1"), &c) == first), "a session maps to one node");
    // A call over its time budget (a loaded machine) answers None, which the
    // core turns into a fallback: count the nodes chosen.
    let spread: std::collections::HashSet<_> = (0..60).filter_map(|i| st.pick(&job(&format!("session-{i}")), &c)).collect();
    assert_eq!(spread.len(), 3, "sessions spread over the nodes");
}

#[test]
fn precompiled_cache_makes_reloads_cheap() {
    let dir = fresh_dir("cache");
    install(&dir, "emotion", "emotion");
    let t = Instant::now();
    host(&dir, &[]).scan();
    let cold = t.elapsed();
    assert!(dir.join(".cache").read_dir().unwrap().count() >= 1, "artifact cached");
    let t = Instant::now();
    let report = host(&dir, &[]).scan();
    let warm = t.elapsed();
    assert_eq!(report.loaded, vec!["emotion"]);
    eprintln!("load emotion.wasm: compile {:.1} ms, from cache {:.1} ms", cold.as_secs_f64() * 1e3, warm.as_secs_f64() * 1e3);
}

// ------------------------------------------------------------- detectors

fn espeak(text: &str, args: &[&str]) -> (Vec<i16>, u32) {
    let path = std::env::temp_dir().join(format!("tolk-espeak-{}-{}.wav", std::process::id(), rand_suffix()));
    let status = std::process::Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .expect("espeak-ng is needed for the detector tests: run scripts/setup.sh (apt-get install espeak-ng)");
    assert!(status.success());
    let mut reader = hound::WavReader::open(&path).unwrap();
    let rate = reader.spec().sample_rate;
    let samples = reader.samples::<i16>().map(Result::unwrap).collect();
    let _ = std::fs::remove_file(&path);
    (samples, rate)
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

fn as_wav_base64(samples: &[i16], rate: u32) -> String {
    tolk_protocol::audio::to_base64(&tolk_protocol::audio::encode_wav(samples, rate))
}

const SENTENCES: [&str; 20] = [
    "The weather is nice today and the sun is shining.",
    "Please send me the report before the meeting starts.",
    "We are going to the market to buy some fresh vegetables.",
    "My brother plays the guitar in a small band.",
    "The train to the city leaves at half past seven.",
    "Could you tell me where the nearest pharmacy is?",
    "She has been learning Spanish for almost three years.",
    "The children were playing football in the park.",
    "I would like a cup of coffee with a little milk.",
    "Our flight was delayed because of the heavy snow.",
    "The museum is open every day except on Mondays.",
    "He forgot his umbrella at the restaurant last night.",
    "This translation system works in real time on a phone.",
    "The library has thousands of books about history.",
    "We need to finish the project by the end of the month.",
    "Turn left at the traffic lights and then go straight on.",
    "The concert tickets were sold out within an hour.",
    "My grandmother bakes the best apple pie in town.",
    "The new bridge will connect the two sides of the river.",
    "Remember to switch off the lights when you leave.",
];

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

fn detector_host() -> PluginHost {
    let dir = fresh_dir("detectors");
    install(&dir, "speech-rate", "speech-rate");
    install(&dir, "emotion", "emotion");
    let h = host(&dir, &[]);
    h.scan();
    h
}

#[test]
fn speech_rate_ranks_espeak_rates() {
    let h = detector_host();
    let rates = [100.0, 140.0, 180.0, 240.0];
    let want = Features { speech_rate_detection: true, ..Features::default() };
    let (mut truth, mut estimate) = (Vec::new(), Vec::new());
    let mut per_rate = vec![Vec::new(); rates.len()];
    let mut per_sentence_rho = Vec::new();
    for sentence in SENTENCES {
        let mut this = Vec::new();
        for (k, wpm) in rates.iter().enumerate() {
            let (samples, rate) = espeak(sentence, &["-s", &format!("{wpm}")]);
            let extra = h.detect(&as_wav_base64(&samples, rate), AudioFormat::Wav, rate, want);
            let est = extra.speech_rate.expect("a rate for speech");
            truth.push(*wpm);
            estimate.push(est);
            per_rate[k].push(est);
            this.push(est);
        }
        per_sentence_rho.push(spearman(&rates, &this));
    }
    let rho = spearman(&truth, &estimate);
    let mean_sentence_rho = per_sentence_rho.iter().sum::<f64>() / per_sentence_rho.len() as f64;
    for (k, wpm) in rates.iter().enumerate() {
        let v = &per_rate[k];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        eprintln!("espeak -s {wpm:>3}: mean estimate {mean:.2} syllables/s over {} sentences", v.len());
    }
    eprintln!("speech-rate: Spearman over all {} samples {rho:.3}; mean per-sentence {mean_sentence_rho:.3}", truth.len());
    assert!(rho >= 0.9, "estimates must rank the rates (Spearman {rho:.3})");
}

#[test]
fn emotion_separates_calm_from_excited_speech() {
    let h = detector_host();
    let want = Features { emotion_detection: true, ..Features::default() };
    let calm_args = ["-p", "20", "-s", "120", "-a", "60"];
    let excited_args = ["-p", "85", "-s", "210", "-a", "190"];
    let mut correct = 0;
    let mut labels = Vec::new();
    for sentence in &SENTENCES[..10] {
        for (args, expected) in [(&calm_args[..], "calm"), (&excited_args[..], "excited")] {
            let (samples, rate) = espeak(sentence, args);
            let extra = h.detect(&as_wav_base64(&samples, rate), AudioFormat::Wav, rate, want);
            let label = extra.emotion.unwrap_or_default();
            correct += usize::from(label == expected);
            labels.push(format!("{expected}->{label}"));
        }
    }
    eprintln!("emotion: {correct}/20 correct: {labels:?}");
    assert!(correct >= 18, "calm vs excited: {correct}/20 ({labels:?})");
}

#[test]
fn detectors_decode_opus_utterances() {
    // Opus (extension 12) is relayed untouched; a detector that needs
    // samples decodes it, and hears what it hears in the wav.
    let h = detector_host();
    let want = Features { speech_rate_detection: true, ..Features::default() };
    for wpm in [100, 240] {
        let (samples, rate) = espeak(SENTENCES[0], &["-s", &format!("{wpm}")]);
        let from_wav = h.detect(&as_wav_base64(&samples, rate), AudioFormat::Wav, rate, want).speech_rate.expect("a rate from wav");
        let opus = tolk_protocol::opus::encode(&samples, rate, Default::default()).unwrap();
        let b64 = tolk_protocol::audio::to_base64(&opus);
        let from_opus = h.detect(&b64, AudioFormat::Opus, rate, want).speech_rate.expect("a rate from opus");
        assert!((from_opus - from_wav).abs() <= 0.15 * from_wav, "{wpm} wpm: {from_opus:.2} from opus, {from_wav:.2} from wav");
    }
}

#[test]
fn detectors_fail_soft_on_silence_and_bad_audio() {
    let h = detector_host();
    let want = Features { emotion_detection: true, speech_rate_detection: true, ..Features::default() };
    let silence = vec![0i16; 16_000];
    let extra = h.detect(&as_wav_base64(&silence, 16_000), AudioFormat::Wav, 16_000, want);
    assert_eq!((extra.emotion, extra.speech_rate), (None, None));
    let extra = h.detect("not base64!", AudioFormat::Pcm16, 16_000, want);
    assert_eq!((extra.emotion, extra.speech_rate), (None, None));
}

#[test]
fn a_shadow_policy_is_asked_without_effect_counted_and_promoted() {
    let dir = fresh_dir("shadow");
    install(&dir, "least-loaded", "least-loaded");
    install(&dir, "round-robin", "round-robin");
    let mut registry = Registry::default();
    let config = PluginsConfig {
        dir: Some(dir.clone()),
        scheduler: Some("least-loaded".into()),
        shadow: Some("round-robin".into()),
        ..PluginsConfig::default()
    };
    let h = PluginHost::new(config, &mut registry).unwrap().unwrap();
    h.scan();
    let list = h.list();
    let flags = |list: &[tolk_dispatcher::plugins::PluginView], file: &str| {
        list.iter().find(|p| p.file == file).map(|p| (p.active, p.shadow)).unwrap()
    };
    assert_eq!((flags(&list, "least-loaded"), flags(&list, "round-robin")), ((true, false), (false, true)));
    let mut p = h.policy();
    // a is free, b busy: least-loaded always says a; round-robin alternates.
    let cands = [cand("a", 0, false, None), cand("b", 3, false, None)];
    for _ in 0..10 {
        assert_eq!(p.pick(&job("s-1"), &cands), Some(0), "the shadow never changes the decision");
    }
    let metrics = |registry: &Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let count = |outcome: &str| {
            text.lines()
                .find(|l| l.starts_with("tolk_plugin_shadow_decisions_total") && l.contains(&format!("outcome=\"{outcome}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0.0, |v| v.parse::<f64>().unwrap())
        };
        (count("agree"), count("disagree"), count("failed"))
    };
    let (agree, disagree, failed) = metrics(&registry);
    assert_eq!((agree + disagree, failed), (10.0, 0.0), "every decision counted");
    assert!(agree >= 1.0 && disagree >= 1.0, "round-robin agrees half the time: {agree} / {disagree}");
    // Promote: round-robin takes effect, least-loaded watches.
    assert_eq!(h.promote().unwrap(), ("round-robin".to_owned(), "least-loaded".to_owned()));
    let list = h.list();
    assert_eq!((flags(&list, "least-loaded"), flags(&list, "round-robin")), ((false, true), (true, false)));
    let picks: Vec<Option<usize>> = (0..4).map(|_| p.pick(&job("s-1"), &cands)).collect();
    assert!(picks.contains(&Some(1)), "round-robin decides now: {picks:?}");
    // Without a shadow, promotion is refused with the reason.
    let plain = fresh_dir("no-shadow");
    install(&plain, "least-loaded", "least-loaded");
    let h = host(&plain, &[]);
    h.scan();
    assert!(h.promote().unwrap_err().contains("no shadow policy"));
}
