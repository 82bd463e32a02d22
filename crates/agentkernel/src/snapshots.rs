//! `snapshot take|list|restore|delete`, `session start|save|resume|list|delete`, and the
//! `sandbox fork|export|clean` subcommands: the engine's snapshots (`agentkernel_engine::
//! snapshot`) and sessions on the command line.

use crate::cli::SandboxOpts;
use agentkernel_engine::EngineError;
use agentkernel_engine::resolve::Caller;
use agentkernel_engine::session::SessionInfo;
use agentkernel_engine::snapshot::{SnapshotInfo, SnapshotKind};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Capture a sandbox's files and settings, running or stopped, without stopping it
    Take(TakeArgs),
    /// List snapshots
    #[command(visible_alias = "ls")]
    List(JsonArg),
    /// Show one snapshot
    Show(SnapshotShowArgs),
    /// Make a new sandbox from a snapshot and start it
    Restore(RestoreArgs),
    /// Delete a snapshot
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct TakeArgs {
    /// The sandbox to capture
    pub sandbox: String,
    /// The snapshot's name [default: SANDBOX-YYYYMMDD-HHMMSS]
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotShowArgs {
    /// Snapshot name
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot name
    pub snapshot: String,
    /// Name of the new sandbox [default: SANDBOX-restored]
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Snapshot name
    pub name: String,
    /// Delete it even if sandboxes start from it or a session keeps it (its files stay until
    /// their last sandbox is removed)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ForkArgs {
    /// The sandbox to copy
    pub name: String,
    /// How many copies
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Copies are named PREFIX-1 … PREFIX-N [default: NAME-fork]
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The sandbox to export
    pub name: String,
    /// Archive to write [default: NAME.tar]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CleanArgs {
    /// Remove every sandbox, snapshot, session, template cache and unused image
    #[arg(long)]
    pub all: bool,
    /// Say what would be removed, and remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Start a session: a sandbox session-NAME for an agent, started
    Start(Box<SessionStartArgs>),
    /// Save a session: a snapshot of its sandbox, added to its saves
    Save(SessionNameArg),
    /// Resume a session: its sandbox started again, or restored from its latest save
    Resume(SessionNameArg),
    /// List sessions
    #[command(visible_alias = "ls")]
    List(JsonArg),
    /// Delete a session and its sandbox (its saves stay as snapshots)
    #[command(visible_alias = "rm")]
    Delete(SessionNameArg),
}

#[derive(Args, Debug)]
pub struct SessionStartArgs {
    /// Session name
    #[arg(long)]
    pub name: String,
    /// The agent: claude, codex, gemini or opencode
    #[arg(long)]
    pub agent: String,
    #[command(flatten)]
    pub sandbox: SandboxOpts,
}

#[derive(Args, Debug)]
pub struct SessionNameArg {
    /// Session name
    pub name: String,
}

/// Runs one `snapshot` subcommand; returns the exit code.
pub fn snapshot(cmd: SnapshotCommand) -> Result<i32, EngineError> {
    let engine = crate::engine()?;
    match cmd {
        SnapshotCommand::Take(a) => {
            let s = engine.take_snapshot(&a.sandbox, a.name.as_deref(), SnapshotKind::User)?;
            if a.json {
                print_json(&s);
            } else {
                println!("{}", s.name);
                eprintln!(
                    "agentkernel: snapshot {} of {}: {} written, processes frozen {:.1} ms",
                    s.name,
                    s.sandbox,
                    human_bytes(s.size_bytes),
                    s.frozen_ms
                );
            }
        }
        SnapshotCommand::List(a) => snapshots(&engine.list_snapshots()?, a.json),
        SnapshotCommand::Show(a) => print_json(&engine.get_snapshot(&a.name)?),
        SnapshotCommand::Restore(a) => {
            let info = engine.restore_snapshot(&a.snapshot, a.as_name.as_deref(), Caller::Local)?;
            if a.json {
                print_json(&info);
            } else {
                println!("{}", info.name);
            }
        }
        SnapshotCommand::Delete(a) => engine.delete_snapshot(&a.name, a.force)?,
    }
    Ok(0)
}

/// `sandbox fork`.
pub fn fork(a: ForkArgs) -> Result<i32, EngineError> {
    // The children start in parallel threads: sandbox inits are then cloned by the boot
    // helper (see `serve::runtime`).
    agentkernel_native::use_boot_helper(std::path::PathBuf::from("/proc/self/exe"));
    let made = crate::engine()?.fork(&a.name, a.count, a.name_prefix.as_deref(), Caller::Local)?;
    if a.json {
        print_json(&made);
    } else {
        for s in &made {
            println!("{}", s.name);
        }
    }
    Ok(0)
}

/// `sandbox export`.
pub fn export(a: ExportArgs) -> Result<i32, EngineError> {
    let path = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.tar", a.name)));
    let written = crate::engine()?.export_to_file(&a.name, &path)?;
    eprintln!(
        "agentkernel: exported {} ({}) to {}",
        a.name,
        human_bytes(written),
        path.display()
    );
    Ok(0)
}

/// `sandbox clean --all`.
pub fn clean(a: CleanArgs) -> Result<i32, EngineError> {
    if !a.all {
        return Err(agentkernel_core::CoreError::InvalidArgument(
            "`sandbox clean` removes everything agentkernel keeps: give --all to confirm (or --all --dry-run to see what it would remove); `agentkernel gc` removes only what expired".to_string(),
        )
        .into());
    }
    let cleaned = crate::engine()?.clean_all(a.dry_run)?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for r in &cleaned.removed {
        println!("{verb} {r}");
    }
    println!(
        "{} {} item(s), {} freed",
        if a.dry_run { "would remove" } else { "removed" },
        cleaned.removed.len(),
        human_bytes(cleaned.bytes)
    );
    Ok(0)
}

/// Runs one `session` subcommand; returns the exit code.
pub fn session(cmd: SessionCommand) -> Result<i32, EngineError> {
    let engine = crate::engine()?;
    match cmd {
        SessionCommand::Start(a) => {
            let req = crate::spec_request(a.sandbox)?;
            let s = engine.session_start(&a.name, &a.agent, &req)?;
            println!("Session '{}' started.", s.name);
            println!("  Sandbox: {}", s.sandbox);
            println!("Attach with: agentkernel attach {}", s.sandbox);
        }
        SessionCommand::Save(a) => {
            let snap = engine.session_save(&a.name)?;
            println!("Session '{}' saved (snapshot: {})", a.name, snap.name);
        }
        SessionCommand::Resume(a) => {
            let s = engine.session_resume(&a.name)?;
            println!("Session '{}' resumed.", s.name);
            println!("  Sandbox: {}", s.sandbox);
        }
        SessionCommand::List(a) => sessions(&engine.session_list()?, a.json),
        SessionCommand::Delete(a) => engine.session_delete(&a.name)?,
    }
    Ok(0)
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

fn snapshots(list: &[SnapshotInfo], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    println!(
        "{:<32} {:<24} {:<8} {:>10} {:<22} USED BY",
        "NAME", "SANDBOX", "BACKEND", "SIZE", "CREATED"
    );
    for s in list {
        println!(
            "{:<32} {:<24} {:<8} {:>10} {:<22} {}",
            s.name,
            s.sandbox,
            s.backend,
            human_bytes(s.size_bytes),
            s.created_at,
            s.used_by.join(",")
        );
    }
}

fn sessions(list: &[SessionInfo], json: bool) {
    if json {
        print_json(&list);
        return;
    }
    println!(
        "{:<24} {:<10} {:<9} {:>5} {:<26} SANDBOX",
        "NAME", "AGENT", "STATUS", "SAVES", "CREATED"
    );
    for s in list {
        println!(
            "{:<24} {:<10} {:<9} {:>5} {:<26} {}",
            s.name,
            s.agent,
            s.status,
            s.saves.len(),
            s.created_at,
            s.sandbox
        );
    }
}

/// Bytes for people: B, KB, MB, GB (powers of 1024).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
