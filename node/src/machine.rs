//! Facts about this machine (cores, memory, GPUs) and its measured load.
//! The parsers are pure functions over the text of `/proc` files, tested
//! with fixtures; [`Hardware::detect`] and [`LoadSampler`] do the reading.

use std::process::Command;
use std::time::{Duration, Instant};

use tolk_protocol::node::{Gpu, Hardware, NodePlatform};

/// The platform the node was built for.
pub fn platform() -> NodePlatform {
    if cfg!(target_os = "windows") {
        NodePlatform::Windows
    } else if cfg!(target_os = "macos") {
        NodePlatform::Macos
    } else {
        NodePlatform::Linux
    }
}

/// A `/proc/meminfo` field in kB.
pub fn meminfo_kb(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Percent of memory in use: (total − available) / total.
pub fn mem_percent(meminfo: &str) -> Option<f64> {
    let total = meminfo_kb(meminfo, "MemTotal")?;
    let available = meminfo_kb(meminfo, "MemAvailable").or_else(|| meminfo_kb(meminfo, "MemFree"))?;
    (total > 0).then(|| (100.0 * total.saturating_sub(available) as f64 / total as f64).clamp(0.0, 100.0))
}

/// The aggregate `cpu` line of `/proc/stat` as (busy, total) jiffies.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU busy percent between two `cpu_times` samples.
pub fn cpu_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let busy = after.0.checked_sub(before.0)?;
    let total = after.1.checked_sub(before.1)?;
    (total > 0).then(|| (100.0 * busy as f64 / total as f64).clamp(0.0, 100.0))
}

/// GPUs from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`.
pub fn parse_nvidia_gpus(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let (name, mem) = line.rsplit_once(',')?;
            let mib: f64 = mem.trim().parse().ok()?;
            Some(Gpu { name: name.trim().to_owned(), memory_gb: (mib / 1024.0 * 10.0).round() / 10.0 })
        })
        .collect()
}

/// GPU (utilisation %, memory used %) averaged over the lines of
/// `nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits`.
pub fn parse_nvidia_usage(csv: &str) -> Option<(f64, f64)> {
    let rows: Vec<(f64, f64)> = csv
        .lines()
        .filter_map(|line| {
            let f: Vec<f64> = line.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            (f.len() == 3 && f[2] > 0.0).then(|| (f[0].clamp(0.0, 100.0), (100.0 * f[1] / f[2]).clamp(0.0, 100.0)))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let n = rows.len() as f64;
    Some((rows.iter().map(|r| r.0).sum::<f64>() / n, rows.iter().map(|r| r.1).sum::<f64>() / n))
}

fn nvidia_smi(query: &str) -> Option<String> {
    let out = Command::new("nvidia-smi").args([&format!("--query-gpu={query}"), "--format=csv,noheader,nounits"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads this machine's hardware: cores (as the scheduler allows this
/// process), memory from `/proc/meminfo`, NVIDIA GPUs through `nvidia-smi`
/// when it is installed (none otherwise).
pub fn detect_hardware() -> Hardware {
    let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| meminfo_kb(&m, "MemTotal"))
        .map_or(0.0, |kb| (kb as f64 / 1_048_576.0 * 10.0).round() / 10.0);
    let gpus = nvidia_smi("name,memory.total").map(|csv| parse_nvidia_gpus(&csv)).unwrap_or_default();
    Hardware { cpu_cores, memory_gb, gpus }
}

/// Measured load at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub cpu_percent: f64,
    pub mem_percent: f64,
    pub gpu_percent: Option<f64>,
    pub gpu_mem_percent: Option<f64>,
}

/// Measures load: CPU over the time since the previous measurement (at
/// least a second apart; in between the last value stands), memory now, GPU
/// through `nvidia-smi` when the machine has GPUs.
#[derive(Debug)]
pub struct LoadSampler {
    last_cpu: Option<((u64, u64), Instant)>,
    last: Load,
    has_gpu: bool,
}

impl LoadSampler {
    pub fn new(has_gpu: bool) -> Self {
        let mut s = Self { last_cpu: None, last: Load::default(), has_gpu };
        s.sample();
        s
    }

    pub fn sample(&mut self) -> Load {
        let now = Instant::now();
        if self.last_cpu.is_some_and(|(_, at)| now.duration_since(at) < Duration::from_secs(1)) {
            return self.last;
        }
        if let Some(times) = std::fs::read_to_string("/proc/stat").ok().and_then(|s| cpu_times(&s)) {
            if let Some(p) = self.last_cpu.and_then(|(before, _)| cpu_percent(before, times)) {
                self.last.cpu_percent = p;
            }
            self.last_cpu = Some((times, now));
        }
        if let Some(p) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| mem_percent(&m)) {
            self.last.mem_percent = p;
        }
        if self.has_gpu {
            let usage = nvidia_smi("utilization.gpu,memory.used,memory.total").and_then(|csv| parse_nvidia_usage(&csv));
            self.last.gpu_percent = usage.map(|u| u.0);
            self.last.gpu_mem_percent = usage.map(|u| u.1);
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   18432000 kB\n";

    #[test]
    fn memory_is_read_from_meminfo() {
        assert_eq!(meminfo_kb(MEMINFO, "MemTotal"), Some(24_576_000));
        assert_eq!(meminfo_kb(MEMINFO, "Mem"), None);
        assert_eq!(mem_percent(MEMINFO), Some(25.0));
        assert_eq!(mem_percent("MemTotal: 0 kB\nMemFree: 0 kB"), None);
    }

    #[test]
    fn cpu_load_is_the_busy_share_between_samples() {
        let a = cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = cpu_times("cpu  150 0 150 750 150 0 0 0 0 0\n").unwrap();
        assert_eq!(a, (200, 1000));
        assert_eq!(cpu_percent(a, b), Some(50.0));
        assert_eq!(cpu_percent(a, a), None);
        assert_eq!(cpu_times("intr 1 2 3"), None);
    }

    #[test]
    fn nvidia_smi_output_is_parsed() {
        let gpus = parse_nvidia_gpus("NVIDIA GeForce RTX 3060, 12288\nTesla T4, 15360\n");
        assert_eq!(
            gpus,
            [Gpu { name: "NVIDIA GeForce RTX 3060".into(), memory_gb: 12.0 }, Gpu { name: "Tesla T4".into(), memory_gb: 15.0 }]
        );
        assert_eq!(parse_nvidia_usage("50, 1024, 4096\n30, 2048, 4096\n"), Some((40.0, 37.5)));
        assert_eq!(parse_nvidia_usage("[N/A], 1, 2"), None);
    }

    #[test]
    fn this_machine_has_cores_and_memory() {
        let hw = detect_hardware();
        assert!(hw.cpu_cores >= 1 && hw.memory_gb > 0.0, "{hw:?}");
        let load = LoadSampler::new(false).sample();
        assert!((0.0..=100.0).contains(&load.mem_percent) && load.mem_percent > 0.0, "{load:?}");
    }
}
