//! `replay FILE.cast`: plays an asciicast recording (what `attach --record` writes, or any
//! asciicast v2 file) on this terminal with its recorded timing.
//!
//! Output events (`"o"`) are written as they were recorded; input, resize and marker events
//! are skipped, as asciinema's player does. `--speed` divides every pause; `--max-idle` caps a
//! pause before the speed applies (the header's `idle_time_limit` when not given), so a
//! recording with minutes of idle plays in seconds.

use agentkernel_core::CoreError;
use agentkernel_engine::EngineError;
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The recording (asciicast v2), e.g. ~/.agentkernel/recordings/NAME-DATE.cast
    pub file: PathBuf,
    /// Play this many times faster (0.5 is half speed)
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub speed: f64,
    /// Never pause longer than this many seconds between two outputs
    #[arg(long, value_name = "S")]
    pub max_idle: Option<f64>,
}

fn invalid(file: &std::path::Path, line: usize, why: impl std::fmt::Display) -> EngineError {
    CoreError::InvalidArgument(format!(
        "{} line {line}: {why}: give an asciicast v2 recording (as `attach --record` writes)",
        file.display()
    ))
    .into()
}

/// Plays the recording; the exit code is 0 once it has played.
pub fn replay(args: &ReplayArgs) -> Result<i32, EngineError> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(CoreError::InvalidArgument(format!(
            "--speed {}: give a number above 0 (2 plays twice as fast)",
            args.speed
        ))
        .into());
    }
    if let Some(idle) = args.max_idle
        && !(idle.is_finite() && idle > 0.0)
    {
        return Err(CoreError::InvalidArgument(format!(
            "--max-idle {idle}: give a number of seconds above 0"
        ))
        .into());
    }
    let file = std::fs::File::open(&args.file).map_err(|e| EngineError::Io {
        context: format!(
            "open {} (recordings are in ~/.agentkernel/recordings/)",
            args.file.display()
        ),
        source: e,
    })?;
    let mut lines = std::io::BufReader::new(file).lines();
    let read = |line: Option<std::io::Result<String>>| -> Result<Option<String>, EngineError> {
        line.transpose().map_err(|e| EngineError::Io {
            context: format!("read {}", args.file.display()),
            source: e,
        })
    };
    let header: serde_json::Value = match read(lines.next())? {
        Some(text) => serde_json::from_str(&text).map_err(|e| invalid(&args.file, 1, e))?,
        None => return Err(invalid(&args.file, 1, "the file is empty")),
    };
    if header.get("version").and_then(serde_json::Value::as_u64) != Some(2) {
        return Err(invalid(&args.file, 1, "not an asciicast version 2 header"));
    }
    let max_idle = args
        .max_idle
        .or_else(|| header.get("idle_time_limit")?.as_f64())
        .filter(|s| s.is_finite() && *s > 0.0);
    let mut out = std::io::stdout().lock();
    let mut previous = 0.0_f64;
    let mut number = 1;
    while let Some(text) = read(lines.next())? {
        number += 1;
        if text.trim().is_empty() {
            continue;
        }
        let (time, kind, data): (f64, String, String) =
            serde_json::from_str(&text).map_err(|e| invalid(&args.file, number, e))?;
        if !time.is_finite() || time < 0.0 {
            return Err(invalid(
                &args.file,
                number,
                "an event time is not a number of seconds",
            ));
        }
        if kind != "o" {
            continue;
        }
        // Times only grow in a well-formed file; one that goes back plays at once.
        let mut pause = (time - previous).max(0.0);
        previous = time;
        if let Some(cap) = max_idle {
            pause = pause.min(cap);
        }
        let _ = out.flush();
        std::thread::sleep(Duration::from_secs_f64(pause / args.speed));
        // A reader that went away (`replay … | head`) ends the replay quietly.
        if out.write_all(data.as_bytes()).is_err() {
            return Ok(0);
        }
    }
    let _ = out.flush();
    Ok(0)
}
