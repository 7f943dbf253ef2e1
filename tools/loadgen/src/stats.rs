//! Percentiles of latency samples and the printed report.

use std::fmt;
use std::time::Duration;

/// Nearest-rank percentiles of a set of durations (nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Percentiles {
    pub fn of(mut samples_ns: Vec<u64>) -> Self {
        samples_ns.sort_unstable();
        let n = samples_ns.len();
        if n == 0 {
            return Self::default();
        }
        let rank = |q: f64| Duration::from_nanos(samples_ns[((q * n as f64).ceil() as usize).clamp(1, n) - 1]);
        Self { count: n, p50: rank(0.50), p99: rank(0.99), p999: rank(0.999), max: Duration::from_nanos(samples_ns[n - 1]) }
    }

    /// Whether p50 ≤ p99 ≤ p999 ≤ max.
    pub fn is_ordered(&self) -> bool {
        self.p50 <= self.p99 && self.p99 <= self.p999 && self.p999 <= self.max
    }
}

/// A duration in milliseconds with three decimals.
#[derive(Debug, Clone, Copy)]
pub struct Ms(pub Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{:.3} ms", self.0.as_secs_f64() * 1000.0);
        f.pad(&s)
    }
}

/// KiB as MiB with one decimal.
#[derive(Debug, Clone, Copy)]
pub struct Mib(pub u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{:.1} MiB", self.0 as f64 / 1024.0);
        f.pad(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let p = Percentiles::of((1..=1000).rev().collect());
        assert_eq!((p.count, p.p50, p.p99, p.p999, p.max), (1000, ns(500), ns(990), ns(999), ns(1000)));
        assert!(p.is_ordered());
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50, one.p999, one.max), (ns(7), ns(7), ns(7)));
        assert_eq!(Percentiles::of(Vec::new()).count, 0);
        assert_eq!(format!("{}", Ms(Duration::from_micros(1234))), "1.234 ms");
    }

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }
}
