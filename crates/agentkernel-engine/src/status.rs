//! What the engine reports about itself and the host: backends, sandbox counts and resource use
//! (`GET /status`, `/backends`, `/stats`).

use crate::Engine;
use crate::backend::{self, Capabilities};
use crate::error::Result;
use agentkernel_core::BackendKind;
use serde::Serialize;

/// One backend as `GET /backends` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendDescriptor {
    pub backend: String,
    /// This build has the backend.
    pub configured: bool,
    /// It can run sandboxes on this host now.
    pub usable: bool,
    pub readiness_reason: String,
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backends {
    pub default_backend: String,
    pub backends: Vec<BackendDescriptor>,
}

/// Host resources as the fleet's load balancing reads them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ResourceUsage {
    /// Busy share of all CPUs over a short sample, 0-100.
    pub cpu_percent: f64,
    pub cpu_count: usize,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    /// The filesystem holding the state directory (sandboxes' disks and images).
    pub disk_used_mb: u64,
    pub disk_total_mb: u64,
    pub load_average: [f64; 3],
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub sandbox_count: usize,
    pub running_count: usize,
    pub resource_usage: ResourceUsage,
    /// Each sandbox's share, in name order.
    pub sandboxes: Vec<SandboxUsage>,
    /// The sandboxes' shares added up.
    pub sandbox_totals: SandboxTotals,
}

/// What one sandbox uses: CPU over the sample and memory while it runs, disk always.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxUsage {
    pub name: String,
    pub backend: String,
    pub status: String,
    /// Share of one CPU over the sample, in percent (200 = two CPUs busy); `None` when stopped
    /// or not measurable.
    pub cpu_percent: Option<f64>,
    /// Memory charged to it now; `None` when stopped or not measurable.
    pub memory_mb: Option<f64>,
    /// What it wrote: its directory in the state directory (upper layers, disks), plus a
    /// container's writable layer kept by its engine.
    pub disk_mb: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SandboxTotals {
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub disk_mb: f64,
}

impl Engine {
    /// Every backend kind, whether this build has it and whether it can run here.
    pub fn backends(&self) -> Backends {
        let backends = BackendKind::ALL
            .iter()
            .map(|&kind| match backend::backend_for(kind, self.home()) {
                Ok(b) => {
                    let r = b.readiness();
                    BackendDescriptor {
                        backend: kind.to_string(),
                        configured: true,
                        usable: r.usable,
                        readiness_reason: r.reason,
                        capabilities: b.capabilities(),
                    }
                }
                Err(e) => BackendDescriptor {
                    backend: kind.to_string(),
                    configured: false,
                    usable: false,
                    readiness_reason: e.to_string(),
                    capabilities: Capabilities::default(),
                },
            })
            .collect();
        Backends {
            default_backend: BackendKind::Native.to_string(),
            backends,
        }
    }

    /// Sandbox counts and host resource use. Takes about `sample` to measure CPU use.
    pub fn stats(&self, sample: std::time::Duration) -> Result<Stats> {
        let before = cpu_times();
        let started = std::time::Instant::now();
        let sandboxes = self.list()?;
        let measured = self.measure_sandboxes(&sandboxes, sample)?;
        std::thread::sleep(sample.saturating_sub(started.elapsed()));
        let after = cpu_times();
        let cpu_percent = match (before, after) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                100.0 * (busy1 - busy0) as f64 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        let (memory_total_mb, memory_used_mb) = memory_mb();
        let (disk_total_mb, disk_used_mb) = disk_mb(self.home());
        Ok(Stats {
            sandbox_count: sandboxes.len(),
            running_count: sandboxes.iter().filter(|s| s.status == "running").count(),
            resource_usage: ResourceUsage {
                cpu_percent: (cpu_percent * 10.0).round() / 10.0,
                cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
                memory_used_mb,
                memory_total_mb,
                disk_used_mb,
                disk_total_mb,
                load_average: load_average(),
            },
            sandbox_totals: SandboxTotals {
                cpu_percent: round1(measured.iter().filter_map(|m| m.cpu_percent).sum()),
                memory_mb: round1(measured.iter().filter_map(|m| m.memory_mb).sum()),
                disk_mb: round1(measured.iter().map(|m| m.disk_mb).sum()),
            },
            sandboxes: measured,
        })
    }

    /// Each sandbox's usage: two readings of the running ones `sample` apart (CPU is a rate),
    /// and the disk of all.
    fn measure_sandboxes(
        &self,
        sandboxes: &[crate::SandboxInfo],
        sample: std::time::Duration,
    ) -> Result<Vec<SandboxUsage>> {
        let records = self.store()?.list()?;
        let running: Vec<_> = records
            .iter()
            .filter(|r| self.is_running(r))
            .filter_map(|r| Some((r, self.backend(&r.spec).ok()?, r.runtime.clone()?)))
            .collect();
        let read = || -> Vec<_> {
            running
                .iter()
                .map(|(_, b, rt)| (std::time::Instant::now(), b.usage(rt)))
                .collect()
        };
        let first = read();
        std::thread::sleep(sample);
        let second = read();
        let mut out: Vec<SandboxUsage> = sandboxes
            .iter()
            .map(|info| SandboxUsage {
                name: info.name.clone(),
                backend: info.backend.clone(),
                status: info.status.clone(),
                cpu_percent: None,
                memory_mb: None,
                disk_mb: round1(disk_bytes(&self.sandbox_dir(&info.name)) as f64 / MB),
            })
            .collect();
        for (((rec, backend, rt), (t0, u0)), (t1, u1)) in running.iter().zip(first).zip(second) {
            let Some(entry) = out.iter_mut().find(|u| u.name == rec.spec.name) else {
                continue;
            };
            if let (Some(u0), Some(u1)) = (u0, u1) {
                let seconds = t1.duration_since(t0).as_secs_f64().max(1e-3);
                let busy = u1.cpu_nanos.saturating_sub(u0.cpu_nanos) as f64 / 1e9;
                entry.cpu_percent = Some(round1(100.0 * busy / seconds));
                entry.memory_mb = Some(round1(u1.memory_bytes as f64 / MB));
            }
            if let Some(bytes) = backend.written_elsewhere(rt) {
                entry.disk_mb = round1(entry.disk_mb + bytes as f64 / MB);
            }
        }
        Ok(out)
    }
}

const MB: f64 = 1024.0 * 1024.0;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Bytes allocated under `dir` (sparse disk images count what they hold), not crossing into
/// filesystems mounted below it and not following links.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = top.dev();
    let mut total = top.blocks() * 512;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (total, used) from /proc/meminfo, used = total - available.
fn memory_mb() -> (u64, u64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    (total / 1024, total.saturating_sub(available) / 1024)
}

fn disk_mb(path: &std::path::Path) -> (u64, u64) {
    match rustix::fs::statvfs(path) {
        Ok(st) => {
            let total = st.f_blocks * st.f_frsize / (1024 * 1024);
            let free = st.f_bfree * st.f_frsize / (1024 * 1024);
            (total, total.saturating_sub(free))
        }
        Err(_) => (0, 0),
    }
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    out
}
