//! CPU time and memory of a process, read from `/proc/PID/stat` and
//! `/proc/PID/status` (Linux).

use std::time::Instant;

/// Clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_S: f64 = 100.0;

/// A process to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pid(pub u32);

/// CPU time used so far, at a moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// Resident memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak so far.
    pub peak_kib: u64,
}

impl CpuSample {
    /// Two processes' CPU time together (read at about the same moment).
    pub fn plus(self, other: Self) -> Self {
        Self { ticks: self.ticks + other.ticks, at: self.at }
    }
}

impl Pid {
    /// `utime + stime` of all threads (fields 14 and 15 of `/proc/PID/stat`).
    pub fn cpu(self) -> std::io::Result<CpuSample> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.0))?;
        // The command name (field 2) may hold spaces: count fields after its `)`.
        let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime field 15.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        match (field(14), field(15)) {
            (Some(u), Some(s)) => Ok(CpuSample { ticks: u + s, at: Instant::now() }),
            _ => Err(std::io::Error::other(format!("/proc/{}/stat: unexpected format", self.0))),
        }
    }

    pub fn memory(self) -> std::io::Result<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.0))?;
        let kib = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Ok(Memory { rss_kib: kib("VmRSS:").unwrap_or(0), peak_kib: kib("VmHWM:").unwrap_or(0) })
    }
}

/// The machine's 1-minute load average (other work competes for the cores).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

impl CpuSample {
    /// CPU used between `self` and `later`, in % of one core.
    pub fn percent_until(self, later: CpuSample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        later.ticks.saturating_sub(self.ticks) as f64 / TICKS_PER_S / wall * 100.0
    }

    /// CPU seconds between `self` and `later`.
    pub fn seconds_until(self, later: CpuSample) -> f64 {
        later.ticks.saturating_sub(self.ticks) as f64 / TICKS_PER_S
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = Pid(std::process::id());
        let a = me.cpu().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = me.cpu().unwrap();
        assert!(a.percent_until(b) >= 0.0);
        let m = me.memory().unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
    }
}
