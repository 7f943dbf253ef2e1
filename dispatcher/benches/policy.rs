//! One scheduling decision at 1, 10, 100 and 1000 candidates: the
//! `least-loaded` wasm plugin (through the sandboxed host, as the core calls
//! it) against the built-in native policy.
//!
//! `cargo bench -p tolk-dispatcher --bench policy`

#![allow(clippy::expect_used)] // a benchmark: fail loudly

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use tolk_dispatcher::core::policy::{Candidate, JobInfo, LeastLoaded, Policy};
use tolk_dispatcher::plugins::{PluginHost, PluginsConfig};

fn candidates(ids: &[String]) -> Vec<Candidate<'_>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| Candidate {
            node_id: id,
            node_key: i as u32,
            running: (i * 7 % 4) as u32,
            capacity: 4,
            cpu_percent: (i * 13 % 100) as f64,
            is_last_node: false,
            ms_per_audio_s: Some(200.0 + (i % 50) as f64),
            recent_failures: 0,
            trust_score: 0.5,
            verified: false,
            remote: false,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let built = tolk_plugin_build::build_shipped().expect("plugins build");
    let dir = std::env::temp_dir().join(format!("tolk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = built.iter().find(|p| p.ends_with("least-loaded.wasm")).expect("least-loaded built");
    std::fs::copy(src, dir.join("least-loaded.wasm")).expect("copy");
    let config = PluginsConfig { dir: Some(dir.clone()), ..PluginsConfig::default() };
    let host = PluginHost::new(config, &mut Registry::default()).expect("engine").expect("host");
    // A plugin that failed to load would make the built-in policy answer
    // below: measure only what loaded.
    let report = host.scan();
    assert_eq!(report.loaded, vec!["least-loaded".to_owned()], "{report:?}");
    let mut wasm = host.policy();
    let job = JobInfo { session_id: "s-0123456789abcdef", utterance_index: 7, audio_ms: 2400, attempt: 0, paired: false };

    let mut group = c.benchmark_group("decision");
    for n in [1usize, 10, 100, 1000] {
        let ids: Vec<String> = (0..n).map(|i| format!("n-{i:032x}")).collect();
        let cands = candidates(&ids);
        assert!(wasm.pick(&job, &cands).is_some(), "the plugin answers");
        group.bench_with_input(BenchmarkId::new("wasm", n), &cands, |b, cands| b.iter(|| wasm.pick(&job, cands)));
        group.bench_with_input(BenchmarkId::new("native", n), &cands, |b, cands| b.iter(|| LeastLoaded::choose(cands)));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
