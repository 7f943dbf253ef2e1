//! Small, allocation-light signal analysis for detectors: an energy envelope,
//! syllable-nucleus peaks, and autocorrelation pitch. Plain functions over
//! samples, so they run the same natively and in wasm.

/// Frame hop of every contour here, in milliseconds.
pub const HOP_MS: u32 = 10;

/// Energy contour in dB (RMS over `window_ms`, one value per 10 ms),
/// smoothed by a moving average of `smooth` frames.
pub fn energy_db(samples: &[i16], rate: u32, window_ms: u32, smooth: usize) -> Vec<f32> {
    let hop = (rate * HOP_MS / 1000).max(1) as usize;
    let win = (rate * window_ms / 1000).max(1) as usize;
    let mut raw = Vec::with_capacity(samples.len() / hop + 1);
    let mut start = 0;
    while start + win <= samples.len() {
        let sum: f64 = samples[start..start + win].iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (sum / win as f64).sqrt();
        raw.push((20.0 * (rms + 1.0).log10()) as f32);
        start += hop;
    }
    if smooth <= 1 || raw.is_empty() {
        return raw;
    }
    let half = smooth / 2;
    (0..raw.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(raw.len());
            raw[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect()
}

/// The speech threshold of an energy contour: well above its quiet floor,
/// within `range_db` of its loudest frame.
pub fn speech_threshold(db: &[f32], range_db: f32) -> f32 {
    let max = db.iter().copied().fold(f32::MIN, f32::max);
    let mut sorted: Vec<f32> = db.to_vec();
    sorted.sort_by(f32::total_cmp);
    let floor = sorted.get(sorted.len() / 10).copied().unwrap_or(0.0);
    (floor + 6.0).max(max - range_db)
}

/// Indexes of syllable nuclei: local maxima above `threshold` that rise at
/// least `prominence_db` over the dip since the previous nucleus.
pub fn nuclei(db: &[f32], threshold: f32, prominence_db: f32) -> Vec<usize> {
    let mut peaks = Vec::new();
    let mut dip = f32::MAX;
    for i in 1..db.len().saturating_sub(1) {
        dip = dip.min(db[i]);
        let is_max = db[i] >= db[i - 1] && db[i] > db[i + 1];
        if is_max && db[i] > threshold && db[i] - dip >= prominence_db {
            peaks.push(i);
            dip = db[i];
        }
    }
    peaks
}

/// Seconds between the first and last frame above `threshold`.
pub fn speech_seconds(db: &[f32], threshold: f32) -> f32 {
    let first = db.iter().position(|&d| d > threshold);
    let last = db.iter().rposition(|&d| d > threshold);
    match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a + 1) as f32 * HOP_MS as f32 / 1000.0,
        _ => 0.0,
    }
}

/// Pitch in Hz per 10 ms frame (`None` where unvoiced), by normalised
/// autocorrelation over 40 ms windows, searched between 60 and 400 Hz.
pub fn pitch_track(samples: &[i16], rate: u32, voiced_db: f32) -> Vec<Option<f32>> {
    // Work at <= 8 kHz: pitch lives far below 4 kHz, and it quarters the cost.
    let step = (rate / 8000).max(1) as usize;
    let x: Vec<f32> = samples.chunks(step).map(|c| c.iter().map(|&s| f32::from(s)).sum::<f32>() / c.len() as f32).collect();
    let rate = rate as usize / step;
    let hop = rate * HOP_MS as usize / 1000;
    let win = rate * 40 / 1000;
    let (min_lag, max_lag) = (rate / 400, rate / 60);
    let mut out = Vec::new();
    let mut start = 0;
    while start + win + max_lag <= x.len() && hop > 0 {
        let frame = &x[start..start + win + max_lag];
        let energy: f32 = frame[..win].iter().map(|v| v * v).sum();
        let db = 10.0 * (energy / win as f32 + 1.0).log10();
        if db < voiced_db {
            out.push(None);
            start += hop;
            continue;
        }
        let mut best = (0.0f32, 0usize);
        for lag in min_lag.max(1)..=max_lag {
            let mut num = 0.0;
            let mut den = 0.0;
            for i in 0..win {
                num += frame[i] * frame[i + lag];
                den += frame[i + lag] * frame[i + lag];
            }
            let r = num / (energy * den).sqrt().max(1e-9);
            if r > best.0 {
                best = (r, lag);
            }
        }
        out.push((best.0 > 0.5 && best.1 > 0).then(|| rate as f32 / best.1 as f32));
        start += hop;
    }
    out
}
