//! The memory test: many idle sessions (`session_init` + ack, then only
//! heartbeats) and the target's RSS growth per session.

use std::time::Duration;

use tokio::sync::watch;

use crate::Error;
use crate::frames;
use crate::procstat::{Memory, Pid};
use crate::sim::{Target, open_sessions};

#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Idle sessions measured.
    pub sessions: usize,
    /// Sessions opened before the baseline is read (allocator and runtime warm-up).
    pub warmup_sessions: usize,
    /// How long the sessions stay open (sending heartbeats) before RSS is read.
    pub hold: Duration,
    /// Each session's heartbeat period (the SDK's is 5 s).
    pub heartbeat: Duration,
    pub connect_parallel: usize,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            sessions: 10_000,
            warmup_sessions: 100,
            hold: Duration::from_secs(10),
            heartbeat: Duration::from_secs(5),
            connect_parallel: 128,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdleReport {
    pub target: &'static str,
    /// Sessions open during the measurement (warm-up ones not counted).
    pub open: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub before: Memory,
    pub after: Memory,
    pub connect_time: Duration,
}

impl IdleReport {
    /// RSS growth per idle session, in bytes.
    pub fn bytes_per_session(&self) -> f64 {
        (self.after.rss_kib as f64 - self.before.rss_kib as f64) * 1024.0 / self.open.max(1) as f64
    }
}

/// Opens the warm-up and the measured sessions against `target` (whose process is `pid`).
pub async fn run(target: Target, cfg: &IdleConfig, pid: Pid) -> Result<IdleReport, Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let (warm, errors) = open_sessions(target, 0, cfg.warmup_sessions, 1, cfg.connect_parallel).await;
    if let Some(e) = errors.first() {
        return Err(format!("warm-up sessions failed: {e}").into());
    }
    for (number, ws, id) in warm {
        tasks.push(tokio::spawn(idle(ws, id, number, cfg.heartbeat, stop_rx.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pid.memory()?;
    let started = std::time::Instant::now();
    let (open, errors) = open_sessions(target, cfg.warmup_sessions as u32, cfg.sessions, 1, cfg.connect_parallel).await;
    let connect_time = started.elapsed();
    let count = open.len();
    for (number, ws, id) in open {
        tasks.push(tokio::spawn(idle(ws, id, number, cfg.heartbeat, stop_rx.clone())));
    }
    tokio::time::sleep(cfg.hold).await;
    let after = pid.memory()?;
    let _ = stop_tx.send(true);
    let mut lost = 0;
    for t in tasks {
        if !t.await.unwrap_or(false) {
            lost += 1;
        }
    }
    let first_error = errors.first().cloned().or_else(|| (lost > 0).then(|| format!("{lost} sessions were closed by the target")));
    Ok(IdleReport { target: target.name(), open: count, failed: errors.len() + lost, first_error, before, after, connect_time })
}

/// One idle session: a heartbeat every `period` (first one at a spread
/// offset), answers read and dropped. True if it stayed open to the end.
async fn idle(mut ws: crate::sim::Socket, id: String, number: u32, period: Duration, mut stop: watch::Receiver<bool>) -> bool {
    let phase = (f64::from(number) * 0.618_033_988_75).fract();
    let mut next = tokio::time::Instant::now() + period.mul_f64(phase);
    let open = loop {
        tokio::select! {
            msg = ws.next_text() => match msg {
                Ok(None) | Err(_) => break false,
                Ok(Some(_)) => {}
            },
            () = tokio::time::sleep_until(next) => {
                let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                if ws.send(frames::client_heartbeat(&id, ms, None).into()).await.is_err() {
                    break false;
                }
                next += period;
            }
            _ = stop.changed() => break true,
        }
    };
    let _ = ws.close().await;
    open
}
