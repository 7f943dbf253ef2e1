//! Throughput of VAD + chunking, in multiples of real time on one core.
//!
//! `cargo bench -p tolk-sdk` runs each configuration over a minute of
//! synthetic audio (tone bursts and gaps in white noise, 20 ms pushes) several
//! times and prints the best run. Under `cargo test --benches` (no `--bench`
//! argument) it runs once over a few seconds, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tolk_sdk::{Chunker, ChunkerConfig};

/// 1 s of noise only, then 2 s of a voiced tone, repeated; white noise
/// throughout, 20 dB below the tone. xorshift64* keeps it deterministic.
fn audio(rate: u32, seconds: u32) -> Vec<i16> {
    use std::f64::consts::PI;
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut noise = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let rate_f = f64::from(rate);
    (0..(rate * seconds) as usize)
        .map(|i| {
            let t = i as f64 / rate_f;
            let voiced = t % 3.0 >= 1.0;
            let tone = if voiced {
                (1..=10).map(|k| (2.0 * PI * 140.0 * f64::from(k) * t).sin() / f64::from(k)).sum::<f64>() * 4000.0
            } else {
                0.0
            };
            (tone + 500.0 * noise()).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Best of `runs` passes over `input`: the time to chunk it all.
fn time(config: &ChunkerConfig, input: &[i16], runs: usize) -> (Duration, usize) {
    let push = (config.sample_rate / 50) as usize;
    let mut best = Duration::MAX;
    let mut utterances = 0;
    for _ in 0..runs {
        let Ok(mut chunker) = Chunker::new(config.clone()) else {
            panic!("bench config is invalid: {config:?}");
        };
        let started = Instant::now();
        utterances = 0;
        for samples in input.chunks(push) {
            utterances += black_box(chunker.push(black_box(samples))).len();
        }
        utterances += usize::from(chunker.flush().is_some());
        best = best.min(started.elapsed());
    }
    (best, utterances)
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (seconds, runs) = if full { (60, 5) } else { (3, 1) };
    println!("VAD + chunking throughput, one core, {seconds} s of audio, 20 ms pushes, best of {runs}");
    for (sample_rate, frame_ms) in [(16_000, 20), (16_000, 10), (16_000, 30), (8_000, 20), (48_000, 20)] {
        let config = ChunkerConfig { sample_rate, frame_ms, ..ChunkerConfig::default() };
        let input = audio(sample_rate, seconds);
        let (elapsed, utterances) = time(&config, &input, runs);
        let realtime = f64::from(seconds) / elapsed.as_secs_f64();
        println!(
            "{:>2} kHz, {frame_ms} ms frames: {realtime:>7.0}x realtime ({:.2} ms for {seconds} s, {utterances} utterances)",
            sample_rate / 1000,
            elapsed.as_secs_f64() * 1000.0,
        );
    }
}
