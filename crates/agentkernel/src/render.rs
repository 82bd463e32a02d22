//! Rendering for people (tables) and programs (JSON), and asciicast recordings.

use agentkernel_engine::SandboxInfo;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn sandboxes(list: &[SandboxInfo], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!(
        "{:<28} {:<8} {:<8} {:<12} {:<22} {:<28} IMAGE",
        "NAME", "STATUS", "BACKEND", "PROFILE", "CREATED", "PORTS"
    );
    for s in list {
        println!(
            "{:<28} {:<8} {:<8} {:<12} {:<22} {:<28} {}",
            s.name,
            s.status,
            s.backend,
            s.profile,
            s.created_at,
            s.ports.join(","),
            s.image
        );
    }
}

pub fn checks(list: &[agentkernel_engine::doctor::Check], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    for c in list {
        let mark = if c.ok { "ok " } else { "-- " };
        println!("{mark} {:<28} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("    {:<28} fix: {fix}", "");
        }
    }
}

pub fn images(list: &[agentkernel_image::ImageSummary], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!(
        "{:<50} {:<20} {:>6} {:>10}",
        "REFERENCE", "DIGEST", "LAYERS", "SIZE"
    );
    for i in list {
        let short = i.manifest.strip_prefix("sha256:").unwrap_or(&i.manifest);
        let size = format!("{:.1} MB", i.size_bytes as f64 / 1_000_000.0);
        println!(
            "{:<50} {:<20} {:>6} {:>10}",
            i.reference,
            &short[..short.len().min(12)],
            i.layers,
            size
        );
    }
}

pub fn audit(entries: &[Value], json: bool) {
    for e in entries {
        if json {
            println!("{e}");
            continue;
        }
        let ts = e["timestamp"].as_str().unwrap_or("");
        let kind = e["event"].as_str().unwrap_or("?");
        let mut details: Vec<String> = Vec::new();
        if let Some(map) = e.as_object() {
            for (k, v) in map {
                if matches!(k.as_str(), "timestamp" | "event" | "pid" | "user") {
                    continue;
                }
                let shown = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                };
                details.push(format!("{k}={shown}"));
            }
        }
        println!("{ts}  {kind:<18} {}", details.join(" "));
    }
}

/// An asciicast v2 recording: a JSON header line, then `[seconds, "o", text]` per output chunk.
pub struct Recording {
    file: std::fs::File,
    path: PathBuf,
    started: Instant,
    /// The start of a character whose remaining bytes have not arrived yet.
    pending: Vec<u8>,
}

impl Recording {
    pub fn create(home: &Path, sandbox: &str) -> std::io::Result<Recording> {
        let dir = home.join("recordings");
        std::fs::create_dir_all(&dir)?;
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let path = dir.join(format!("{sandbox}-{stamp}.cast"));
        let mut file = std::fs::File::create(&path)?;
        let (rows, cols) = agentkernel_sys::terminal::size().unwrap_or((24, 80));
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": chrono::Utc::now().timestamp(),
            "env": {"TERM": std::env::var("TERM").unwrap_or_default(), "SHELL": "/bin/sh"},
        });
        writeln!(file, "{header}")?;
        Ok(Recording {
            file,
            path,
            started: Instant::now(),
            pending: Vec::new(),
        })
    }

    pub fn output(&mut self, data: &[u8]) {
        // A character split between two reads is written whole with the second: the format
        // holds text, and decoding each half alone would record two replacement characters.
        self.pending.extend_from_slice(data);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => incomplete_tail_start(&self.pending),
        };
        if complete == 0 {
            return;
        }
        let text: Vec<u8> = self.pending.drain(..complete).collect();
        let t = self.started.elapsed().as_secs_f64();
        let line =
            serde_json::json!([(t * 1e6).round() / 1e6, "o", String::from_utf8_lossy(&text)]);
        let _ = writeln!(self.file, "{line}");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where a trailing, still incomplete UTF-8 sequence starts in `bytes` (its length when there
/// is none): invalid bytes before it are written as replacement characters.
fn incomplete_tail_start(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let at = bytes.len() - back;
        let lead = bytes[at];
        let needs = match lead {
            0x00..=0x7F => return bytes.len(),
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => continue,
        };
        return if needs > back { at } else { bytes.len() };
    }
    bytes.len()
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let t = self.started.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&self.pending);
            let line = serde_json::json!([(t * 1e6).round() / 1e6, "o", text]);
            let _ = writeln!(self.file, "{line}");
        }
    }
}

/// Writes events to the caller's stdout and stderr as they come: the CLI's sink.
pub fn write_to_stdio(event: agentkernel_core::ExecEvent) -> std::ops::ControlFlow<()> {
    use agentkernel_core::ExecEvent;
    use std::io::Write;
    let result = match &event {
        ExecEvent::Stdout(data) => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|_| o.flush())
        }
        ExecEvent::Stderr(data) => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|_| e.flush())
        }
        _ => Ok(()),
    };
    match result {
        // A closed stdout (`| head`) means nobody wants more output.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::ops::ControlFlow::Break(()),
        _ => std::ops::ControlFlow::Continue(()),
    }
}

/// `sandbox policy`: the sandbox's network mode and host patterns.
pub fn network_policy(info: &SandboxInfo, json: bool) {
    if json {
        let value = serde_json::json!({
            "name": info.name,
            "network": info.network,
            "allow_hosts": info.allow_hosts,
            "deny_hosts": info.deny_hosts,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    println!("network: {}", info.network);
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    if info.network == "allowlist" {
        println!("allow:   {}", list(&info.allow_hosts));
    }
    println!("deny:    {}", list(&info.deny_hosts));
}

/// `stats`: the host line, then one row per sandbox and their total.
pub fn stats(stats: &agentkernel_engine::status::Stats, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(stats).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let r = &stats.resource_usage;
    println!(
        "sandboxes: {} ({} running)",
        stats.sandbox_count, stats.running_count
    );
    println!(
        "host: cpu {:.1}% of {} cores, memory {}/{} MB, disk {}/{} MB, load {:.2} {:.2} {:.2}",
        r.cpu_percent,
        r.cpu_count,
        r.memory_used_mb,
        r.memory_total_mb,
        r.disk_used_mb,
        r.disk_total_mb,
        r.load_average[0],
        r.load_average[1],
        r.load_average[2]
    );
    if stats.sandboxes.is_empty() {
        return;
    }
    let width = stats
        .sandboxes
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(5);
    let dash = || "-".to_string();
    println!(
        "{:<width$}  {:<8} {:<8} {:>7} {:>11} {:>11}",
        "NAME", "BACKEND", "STATUS", "CPU %", "MEMORY MB", "DISK MB"
    );
    for s in &stats.sandboxes {
        println!(
            "{:<width$}  {:<8} {:<8} {:>7} {:>11} {:>11.1}",
            s.name,
            s.backend,
            s.status,
            s.cpu_percent.map_or_else(dash, |c| format!("{c:.1}")),
            s.memory_mb.map_or_else(dash, |m| format!("{m:.1}")),
            s.disk_mb
        );
    }
    let t = &stats.sandbox_totals;
    println!(
        "{:<width$}  {:<8} {:<8} {:>7.1} {:>11.1} {:>11.1}",
        "TOTAL", "", "", t.cpu_percent, t.memory_mb, t.disk_mb
    );
}
