//! The dispatcher's own figures over a measured window, from two scrapes of
//! its `/metrics`: the share of its CPU spent under the core's lock, and
//! the time inside the dispatcher (frame read → frames written) as
//! percentiles of the `tolk_dispatch_seconds` histogram's window delta.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;

/// One scrape, the parts the benchmark reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub lock_held_s: f64,
    pub lock_wait_s: f64,
    /// `(le, cumulative count)` of `tolk_dispatch_seconds`.
    pub dispatch: Vec<(f64, u64)>,
    /// `tolk_scheduling_lag_ms`, `tolk_shed_window`, `tolk_jobs_running`.
    pub lag_ms: Option<f64>,
    pub shed_window: Option<f64>,
    pub jobs_running: Option<f64>,
}

/// What happened between two scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Lock held ÷ the process's CPU time (may exceed 1 when waits spin).
    pub lock_share: Option<f64>,
    pub lock_held_s: f64,
    pub lock_wait_s: f64,
    pub dispatch_frames: u64,
    /// Upper bounds of the buckets holding the 50th and 99th percentiles.
    pub dispatch_p50_s: Option<f64>,
    pub dispatch_p99_s: Option<f64>,
}

impl Window {
    pub fn between(a: &Scrape, b: &Scrape, cpu_s: Option<f64>) -> Self {
        let held = b.lock_held_s - a.lock_held_s;
        let delta: Vec<(f64, u64)> =
            b.dispatch.iter().map(|&(le, n)| (le, n - a.dispatch.iter().find(|(l, _)| *l == le).map_or(0, |x| x.1).min(n))).collect();
        let total = delta.last().map_or(0, |x| x.1);
        let quantile = |q: f64| {
            let rank = (q * total as f64).ceil() as u64;
            delta.iter().find(|(_, n)| *n >= rank.max(1)).map(|(le, _)| *le)
        };
        Self {
            lock_share: cpu_s.filter(|&c| c > 0.0 && b.lock_held_s > 0.0).map(|c| held / c),
            lock_held_s: held,
            lock_wait_s: b.lock_wait_s - a.lock_wait_s,
            dispatch_frames: total,
            dispatch_p50_s: (total > 0).then(|| quantile(0.5)).flatten(),
            dispatch_p99_s: (total > 0).then(|| quantile(0.99)).flatten(),
        }
    }
}

/// Parses the OpenMetrics text the dispatcher serves.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        if name == "tolk_core_lock_held_seconds_total" {
            s.lock_held_s = v;
        } else if name == "tolk_core_lock_wait_seconds_total" {
            s.lock_wait_s = v;
        } else if name == "tolk_scheduling_lag_ms" {
            s.lag_ms = Some(v);
        } else if name == "tolk_shed_window" {
            s.shed_window = Some(v);
        } else if name == "tolk_jobs_running" {
            s.jobs_running = Some(v);
        } else if let Some(le) = name.strip_prefix("tolk_dispatch_seconds_bucket{le=\"").and_then(|r| r.strip_suffix("\"}")) {
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            s.dispatch.push((le, v as u64));
        }
    }
    s
}

/// GET `/metrics` from the dispatcher at `addr`.
pub async fn metrics(addr: SocketAddr) -> Result<Scrape, Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    Ok(parse(&String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_scrapes_give_the_window_figures() {
        let a = parse(
            "tolk_core_lock_held_seconds_total 1.0\ntolk_dispatch_seconds_bucket{le=\"0.0001\"} 10\ntolk_dispatch_seconds_bucket{le=\"0.001\"} 10\ntolk_dispatch_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let b = parse(
            "tolk_core_lock_held_seconds_total 1.5\ntolk_dispatch_seconds_bucket{le=\"0.0001\"} 108\ntolk_dispatch_seconds_bucket{le=\"0.001\"} 110\ntolk_dispatch_seconds_bucket{le=\"+Inf\"} 110\n",
        );
        let w = Window::between(&a, &b, Some(2.0));
        assert_eq!(w.dispatch_frames, 100);
        assert_eq!((w.dispatch_p50_s, w.dispatch_p99_s), (Some(0.0001), Some(0.001)));
        assert_eq!(w.lock_share, Some(0.25));
    }
}
