//! Detached (background) commands: `agentkernel exec -d` and the HTTP `exec/detach` endpoints.
//!
//! A detached command runs through the same path as every exec ([`Engine::exec`]), in a small
//! supervisor process that outlives whoever asked for it (a CLI that exits, a server that
//! restarts). The supervisor is the agentkernel executable re-run with [`SUPERVISOR_ROLE`] as
//! its first argument:
//!
//! 1. [`Engine::exec_detached`] checks the request and the sandbox, makes the record directory
//!    and starts the supervisor with `std::process::Command` (safe from a multithreaded caller;
//!    the only `pre_exec` step is `setsid`, which allocates nothing): its own session, cwd `/`,
//!    stdin and stderr on /dev/null, stdout a close-on-exec pipe back to the caller.
//! 2. The supervisor forks once and exits at once, so the caller reaps it right away and is
//!    never left with a zombie; the grandchild, adopted by init (or the nearest subreaper),
//!    runs the command with `Engine::exec` and a sink that writes its output to files.
//! 3. When the sink sees `Started { pid }`, the supervisor writes the command's record and
//!    reports `started` on the pipe, then points its stdout at /dev/null. A command that cannot
//!    be started (not found, not executable, sandbox gone) is reported as an error instead,
//!    and `exec_detached` returns that error with nothing left behind.
//! 4. When the command ends, the supervisor writes its exit status atomically and exits.
//!
//! Signals reach the command the way they reach any exec: the supervisor passes the read side
//! of a FIFO (`signals`, which it holds open for reading and writing, so it never sees EOF) to
//! `Engine::exec` as `Controls::signals`, and each byte written to it is a signal number the
//! backend forwards (the native relay to the command's process group, a container engine
//! through its run role). [`Engine::detached_kill`] writes SIGKILL there once it has checked
//! that the supervisor is alive (pid, start time and boot id). Only when the supervisor is gone
//! does it signal the command by its host pid, and only where one is known: container engines
//! report pid 0, which is never signalled.
//!
//! On disk, under the sandbox's directory (removed with the sandbox):
//!
//! ```text
//! sandboxes/NAME/detached/ID/
//!     request.json   the request (argv, env, workdir); read and deleted by the supervisor
//!     command.json   id, sandbox, command, started_at, the command's host pid and start time,
//!                    the supervisor's pid and start time, the boot id
//!     stdout         the command's output: the first OUTPUT_CAP bytes, then TRUNCATION_MARKER
//!     stderr         the same for standard error
//!     signals        a FIFO, open in the supervisor: bytes written to it are signal numbers
//!     exit.json      exit_code (absent if the supervisor failed), signal, oom_killed,
//!                    timed_out, finished_at, error; written once, atomically, at the end
//! ```
//!
//! Ids are 12 random lowercase hex digits; anything else (`../x`) is refused as unknown
//! before a path is built from it.

use crate::backend::BackendError;
use crate::error::{EngineError, Result};
use crate::{Engine, validate_exec};
use agentkernel_core::ErrorKind;
use agentkernel_core::{ExecEvent, ExecRequest, ExitStatus};
use agentkernel_sys::proc;
use rustix::fd::{AsFd, OwnedFd};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The first argument that makes the agentkernel binary a detached-command supervisor.
pub const SUPERVISOR_ROLE: &str = "__detached";

/// How much of each stream (stdout, stderr) is kept: the first 8 MiB. Output beyond it is
/// discarded and [`TRUNCATION_MARKER`] is appended once, so a stream file never exceeds
/// `OUTPUT_CAP + TRUNCATION_MARKER.len()` bytes. The command itself is not slowed or stopped.
pub const OUTPUT_CAP: u64 = 8 * 1024 * 1024;

/// Appended to a stream after its first [`OUTPUT_CAP`] bytes when the command wrote more.
pub const TRUNCATION_MARKER: &[u8] =
    b"\n[agentkernel: output beyond the first 8 MiB of this stream was discarded]\n";

/// Length of an id in hex digits.
const ID_LEN: usize = 12;
/// How long `exec_detached` waits for the supervisor to say whether the command started.
const REPORT_WAIT: Duration = Duration::from_secs(30);
/// How long `detached_kill` waits for a killed command's end to be recorded.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long stopping or removing a sandbox waits for supervisors to record their command's end.
const SETTLE_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// Most records of detached commands kept per sandbox (each holds up to twice `OUTPUT_CAP`):
/// starting one more removes the oldest finished ones, and is refused when all are running.
pub const MAX_RECORDS: usize = 64;

const REQUEST: &str = "request.json";
const COMMAND: &str = "command.json";
const EXIT: &str = "exit.json";
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";
const SIGNALS: &str = "signals";

/// Where a detached command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachedStatus {
    /// The command (or its supervisor, recording its end) is still running.
    Running,
    /// It exited with code 0.
    Completed,
    /// It exited with another code, was killed (by [`Engine::detached_kill`], a timeout or the
    /// sandbox stopping), or its supervisor died without recording an exit (no exit code).
    Failed,
}

/// A detached command as the HTTP API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetachedCommand {
    pub id: String,
    pub sandbox: String,
    pub command: Vec<String>,
    /// The command's pid as the host sees it.
    pub pid: u32,
    pub status: DetachedStatus,
    /// The exit code as a shell reports it (128 + N for signal N, 124 after a timeout); absent
    /// while running and when the supervisor died without recording one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// RFC 3339, when the command started.
    pub started_at: String,
    /// RFC 3339, when its end was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One of a detached command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl std::str::FromStr for LogStream {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<LogStream> {
        match s {
            "stdout" => Ok(LogStream::Stdout),
            "stderr" => Ok(LogStream::Stderr),
            other => Err(EngineError::BadLogStream(other.to_string())),
        }
    }
}

/// A detached command's output so far (both streams, or the one asked for).
///
/// Each stream holds at most the first [`OUTPUT_CAP`] bytes the command wrote; when it wrote
/// more, the text ends with [`TRUNCATION_MARKER`] and `*_truncated` is true. Bytes that are not
/// UTF-8 are replaced with U+FFFD.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetachedLogs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
}

/// `command.json`: written by the supervisor when the command has started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    sandbox: String,
    command: Vec<String>,
    started_at: String,
    pid: u32,
    pid_start_time: u64,
    supervisor_pid: u32,
    supervisor_start_time: u64,
    boot_id: String,
}

impl Meta {
    /// Whether the command's host pid is known (container engines report 0) and still its.
    fn command_alive(&self) -> bool {
        self.pid != 0
            && self.boot_id == proc::boot_id()
            && proc::is_alive(self.pid, self.pid_start_time)
    }

    fn supervisor_alive(&self) -> bool {
        self.boot_id == proc::boot_id()
            && proc::is_alive(self.supervisor_pid, self.supervisor_start_time)
    }
}

/// `exit.json`: how the command ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exit {
    exit_code: Option<i32>,
    signal: Option<i32>,
    oom_killed: bool,
    timed_out: bool,
    finished_at: String,
    /// What went wrong when the end could not be observed normally.
    error: Option<String>,
}

impl Exit {
    fn of(status: &ExitStatus) -> Exit {
        Exit {
            exit_code: Some(status.code),
            signal: status.signal,
            oom_killed: status.oom_killed,
            timed_out: status.timed_out,
            finished_at: now(),
            error: None,
        }
    }
}

/// What the supervisor tells `exec_detached` on the pipe: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Report {
    Started { pid: u32 },
    Failed { kind: FailKind, message: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FailKind {
    SandboxNotFound,
    NotRunning,
    /// The backend refused to start the command (not found, not executable, no working
    /// directory, …): its kind and message travel as they are.
    Backend(ErrorKind),
    Other,
}

impl FailKind {
    fn of(e: &EngineError) -> FailKind {
        match e {
            EngineError::NotRunning(_) => FailKind::NotRunning,
            EngineError::NotFound(_) => FailKind::SandboxNotFound,
            EngineError::Backend(b) => FailKind::Backend(b.kind()),
            _ => FailKind::Other,
        }
    }

    /// The error `exec_detached` returns: the one a foreground exec would have given (its
    /// kind, so the CLI exits 127 / 126 / 125 alike, and its message).
    fn into_error(self, sandbox: &str, message: String) -> EngineError {
        match self {
            FailKind::Backend(kind) => BackendError::new(kind, message).into(),
            FailKind::SandboxNotFound => EngineError::NotFound(sandbox.to_string()),
            FailKind::NotRunning => EngineError::NotRunning(sandbox.to_string()),
            FailKind::Other => EngineError::DetachedStart {
                sandbox: sandbox.to_string(),
                reason: message,
            },
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..ID_LEN].to_string()
}

/// Whether `id` can be an id: exactly `ID_LEN` lowercase hex digits (so never a path).
fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sandboxes/NAME/detached`
fn records_dir(home: &Path, sandbox: &str) -> PathBuf {
    agentkernel_core::paths::sandbox_dir(home, sandbox).join("detached")
}

/// Reads a JSON file; `None` if it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` to a temporary file beside `path`, with mode 0600.
fn write_tmp<T: Serialize>(path: &Path, value: &T) -> std::io::Result<PathBuf> {
    let text = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    Ok(tmp)
}

/// Replaces `path` with `value` atomically: a reader sees the old file or the new one.
fn write_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = write_tmp(path, value)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Creates `path` with `value` atomically unless it exists; returns whether it wrote it.
fn create_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<bool> {
    let tmp = write_tmp(path, value)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_record(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Keeps the records of sandbox `name` under `MAX_RECORDS` before one more is added: the
/// oldest finished ones go; if every record is of a running command, the new one is refused.
fn make_room(root: &Path, name: &str) -> Result<()> {
    let entries =
        std::fs::read_dir(root).map_err(EngineError::io(format!("read {}", root.display())))?;
    let mut finished = Vec::new();
    let mut count = 0;
    for entry in entries.flatten() {
        if !valid_id(&entry.file_name().to_string_lossy()) {
            continue;
        }
        count += 1;
        let dir = entry.path();
        if let Ok(meta) = std::fs::metadata(dir.join(EXIT)) {
            finished.push((meta.modified().ok(), dir));
        }
    }
    if count < MAX_RECORDS {
        return Ok(());
    }
    finished.sort();
    let excess = count + 1 - MAX_RECORDS;
    if finished.len() < excess {
        return Err(EngineError::LimitReached(format!(
            "sandbox {name:?} already runs {count} detached commands, the most it keeps: wait for some to end or kill them (DELETE /sandboxes/{name}/exec/detached/ID)"
        )));
    }
    for (_, dir) in finished.into_iter().take(excess) {
        remove_record(&dir);
    }
    Ok(())
}

/// The command's state, from its record and the process table.
fn load(dir: &Path, meta: Meta) -> Result<DetachedCommand> {
    let exit: Option<Exit> = read_json(&dir.join(EXIT)).map_err(EngineError::io(format!(
        "read {}",
        dir.join(EXIT).display()
    )))?;
    let (status, exit_code, finished_at) = match exit {
        Some(e) => {
            let status = if e.exit_code == Some(0) {
                DetachedStatus::Completed
            } else {
                DetachedStatus::Failed
            };
            (status, e.exit_code, Some(e.finished_at))
        }
        // A supervisor that is alive is about to record the end; a command that is alive
        // without its supervisor (killed by someone) still runs, unrecorded.
        None if meta.supervisor_alive() || meta.command_alive() => {
            (DetachedStatus::Running, None, None)
        }
        None => (DetachedStatus::Failed, None, None),
    };
    Ok(DetachedCommand {
        id: meta.id,
        sandbox: meta.sandbox,
        command: meta.command,
        pid: meta.pid,
        status,
        exit_code,
        started_at: meta.started_at,
        finished_at,
    })
}

/// Reads up to `OUTPUT_CAP + TRUNCATION_MARKER.len()` bytes of a stream file.
fn read_stream(path: &Path) -> Result<(String, bool)> {
    let limit = OUTPUT_CAP + TRUNCATION_MARKER.len() as u64;
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            f.take(limit)
                .read_to_end(&mut bytes)
                .map_err(EngineError::io(format!("read {}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EngineError::io(format!("read {}", path.display()))(e)),
    }
    let truncated = bytes.len() as u64 > OUTPUT_CAP;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), truncated))
}

/// Waits (at most `SETTLE_WAIT` in all) until the supervisor of every detached command of
/// `sandbox` has recorded its command's end or is gone. Called after the sandbox was stopped,
/// which ended the commands, so that their status reads `failed` when `stop` returns and
/// `remove` does not race a supervisor writing into the directory it deletes.
pub(crate) fn settle(home: &Path, sandbox: &str) {
    let Ok(entries) = std::fs::read_dir(records_dir(home, sandbox)) else {
        return;
    };
    let deadline = Instant::now() + SETTLE_WAIT;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(Some(meta)) = read_json::<Meta>(&dir.join(COMMAND)) else {
            continue;
        };
        while !dir.join(EXIT).exists() && meta.supervisor_alive() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

impl Engine {
    pub(crate) fn supervisor_exe(&self) -> Result<PathBuf> {
        match &self.supervisor_exe {
            Some(exe) => Ok(exe.clone()),
            // The running binary even after it was replaced on disk (an upgrade, a rebuild).
            None => Ok(PathBuf::from("/proc/self/exe")),
        }
    }

    /// The record directory of `id`, after checking the sandbox exists and `id` is one of its
    /// detached commands, with its metadata.
    fn detached_record(&self, name: &str, id: &str) -> Result<(PathBuf, Meta)> {
        self.get_record(name)?;
        let not_found = || EngineError::DetachedNotFound {
            sandbox: name.to_string(),
            id: id.to_string(),
        };
        if !valid_id(id) {
            return Err(not_found());
        }
        let dir = records_dir(&self.home, name).join(id);
        let path = dir.join(COMMAND);
        let meta: Meta = read_json(&path)
            .map_err(EngineError::io(format!("read {}", path.display())))?
            .ok_or_else(not_found)?;
        Ok((dir, meta))
    }

    /// Starts `req` in the running sandbox `name` and returns at once, with the command's host
    /// pid, while it runs on under its own supervisor (see the module documentation).
    ///
    /// The command reads /dev/null and has no terminal (`req.stdin` and `req.tty` are ignored);
    /// `req.timeout` applies as for `exec`. Errors, with nothing left behind: a bad request, an
    /// unknown or stopped sandbox, and a command that cannot be started: not found (the error
    /// a foreground exec gives, exit code 127) or not executable (126). A command that starts
    /// and then exits non-zero, a shell's `exit 127` included, is a `failed` detached command.
    pub fn exec_detached(&self, name: &str, req: &ExecRequest) -> Result<DetachedCommand> {
        if req.argv.is_empty() {
            return Err(EngineError::NoCommand);
        }
        validate_exec(req)?;
        // Refused here, with the precise error, before anything is made.
        self.running_record(name)?;
        let exe = self.supervisor_exe()?;
        let home = std::path::absolute(&self.home)
            .map_err(EngineError::io(format!("resolve {}", self.home.display())))?;
        let root = records_dir(&home, name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(EngineError::io(format!("create {}", root.display())))?;
        make_room(&root, name)?;
        let id = new_id();
        let dir = root.join(&id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(EngineError::io(format!("create {}", dir.display())))?;
        let started = self.start_supervisor(&exe, &home, name, &id, &dir, req);
        let result = started.and_then(|()| self.detached_get(name, &id));
        if result.is_err() {
            remove_record(&dir);
        }
        result
    }

    fn start_supervisor(
        &self,
        exe: &Path,
        home: &Path,
        name: &str,
        id: &str,
        dir: &Path,
        req: &ExecRequest,
    ) -> Result<()> {
        let request = ExecRequest {
            stdin: false,
            tty: false,
            ..req.clone()
        };
        let path = dir.join(REQUEST);
        write_atomic(&path, &request)
            .map_err(EngineError::io(format!("write {}", path.display())))?;
        let start_error = |reason: String| EngineError::DetachedStart {
            sandbox: name.to_string(),
            reason,
        };
        let line = spawn_role(
            exe,
            &[
                SUPERVISOR_ROLE.as_ref(),
                home.as_os_str(),
                name.as_ref(),
                id.as_ref(),
            ],
            Stdio::null(),
            REPORT_WAIT,
        )
        .map_err(|e| start_error(format!("the supervisor {}: {e}", exe.display())))?;
        let report: Report = serde_json::from_slice(&line).map_err(|_| {
            start_error(format!(
                "the supervisor {} exited before starting the command: check that it is the agentkernel executable",
                exe.display()
            ))
        })?;
        match report {
            Report::Started { .. } => Ok(()),
            Report::Failed { kind, message } => Err(kind.into_error(name, message)),
        }
    }

    /// All detached commands of sandbox `name`, oldest first.
    pub fn detached_list(&self, name: &str) -> Result<Vec<DetachedCommand>> {
        self.get_record(name)?;
        let root = records_dir(&self.home, name);
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(EngineError::io(format!("read {}", root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !valid_id(&id) {
                continue;
            }
            let dir = entry.path();
            // No record yet: a command still starting (or one that failed to, being removed).
            let Ok(Some(meta)) = read_json::<Meta>(&dir.join(COMMAND)) else {
                continue;
            };
            out.push(load(&dir, meta)?);
        }
        out.sort_by(|a, b| (&a.started_at, &a.id).cmp(&(&b.started_at, &b.id)));
        Ok(out)
    }

    /// One detached command of sandbox `name`; `DetachedNotFound` for an unknown or invalid id.
    pub fn detached_get(&self, name: &str, id: &str) -> Result<DetachedCommand> {
        let (dir, meta) = self.detached_record(name, id)?;
        load(&dir, meta)
    }

    /// A detached command's output so far: both streams, or only `stream`. See [`DetachedLogs`]
    /// for the bound.
    pub fn detached_logs(
        &self,
        name: &str,
        id: &str,
        stream: Option<LogStream>,
    ) -> Result<DetachedLogs> {
        let (dir, _) = self.detached_record(name, id)?;
        let mut logs = DetachedLogs::default();
        if stream != Some(LogStream::Stderr) {
            let (text, truncated) = read_stream(&dir.join(STDOUT))?;
            logs.stdout = Some(text);
            logs.stdout_truncated = truncated;
        }
        if stream != Some(LogStream::Stdout) {
            let (text, truncated) = read_stream(&dir.join(STDERR))?;
            logs.stderr = Some(text);
            logs.stderr_truncated = truncated;
        }
        Ok(logs)
    }

    /// Kills a detached command and every process of its process group (SIGKILL), then waits
    /// (up to 10 s) until its end is recorded: it is then `failed` with exit code 137. A command
    /// that already ended is returned as it is.
    ///
    /// The kill goes through the command's supervisor, as an exec's signals do (see the module
    /// documentation), on every backend. Only if the supervisor is gone is the command killed
    /// by its host pid, and only while that pid is still the command's (pid, start time and
    /// boot id match; never a recycled one, never the 0 of a container engine).
    pub fn detached_kill(&self, name: &str, id: &str) -> Result<DetachedCommand> {
        let (dir, meta) = self.detached_record(name, id)?;
        let exit = dir.join(EXIT);
        if exit.exists() {
            return load(&dir, meta);
        }
        let mut signalled = meta.supervisor_alive() && ask_supervisor(&dir, libc::SIGKILL);
        if !signalled
            && meta.command_alive()
            && let Some(pid) = agentkernel_sys::signal::pid(meta.pid)
        {
            agentkernel_sys::signal::kill_group(pid);
            signalled = true;
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            if exit.exists() {
                break;
            }
            let supervisor = meta.supervisor_alive();
            if !supervisor && !meta.command_alive() {
                // Nobody will record the end: do it, if it was this kill that caused it.
                if signalled {
                    let killed = Exit {
                        exit_code: Some(128 + libc::SIGKILL),
                        signal: Some(libc::SIGKILL),
                        oom_killed: false,
                        timed_out: false,
                        finished_at: now(),
                        error: Some("killed while its supervisor was gone".to_string()),
                    };
                    create_atomic(&exit, &killed)
                        .map_err(EngineError::io(format!("write {}", exit.display())))?;
                }
                break;
            }
            if Instant::now() >= deadline {
                return Err(EngineError::DetachedStillRunning {
                    sandbox: name.to_string(),
                    id: id.to_string(),
                    seconds: KILL_WAIT.as_secs(),
                });
            }
            std::thread::sleep(POLL);
        }
        load(&dir, meta)
    }
}

/// Writes `sig` into the supervisor's `signals` FIFO in `dir`; false when nobody reads it (the
/// supervisor is gone) or it is not a FIFO.
fn ask_supervisor(dir: &Path, sig: i32) -> bool {
    use rustix::fs::{Mode, OFlags};
    let Ok(byte) = u8::try_from(sig) else {
        return false;
    };
    // Non-blocking: opening a FIFO nobody reads fails (ENXIO) instead of waiting for a reader.
    let Ok(fifo) = rustix::fs::open(
        dir.join(SIGNALS),
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) else {
        return false;
    };
    let is_fifo = rustix::fs::fstat(&fifo).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    });
    is_fifo && rustix::io::write(&fifo, &[byte]) == Ok(1)
}

/// Makes the `signals` FIFO in `dir` and opens it for reading and writing (never EOF, and
/// never blocking on open), non-blocking and close-on-exec.
fn open_signals(dir: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{FileType, Mode, OFlags};
    let path = dir.join(SIGNALS);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )?;
    Ok(rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Reads one line (the report) from `fd`, waiting at most `wait` in all.
/// Runs `exe ARGS` (a hidden role that forks once and exits at once, its child going on) in a
/// session of its own with cwd `/`, `stdin` as its stdin and a pipe as its stdout; reaps it and
/// returns the first line the child reports on that pipe within `wait`. Shared by the detached
/// supervisor and the egress proxy of persistent sandboxes.
pub(crate) fn spawn_role(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    stdin: Stdio,
    wait: Duration,
) -> std::result::Result<Vec<u8>, String> {
    // Close-on-exec: a command another thread of the caller spawns meanwhile does not inherit
    // it; the role gets the write end as its stdout.
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("create a pipe: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .current_dir("/")
        .stdin(stdin)
        .stdout(Stdio::from(report_w))
        .stderr(Stdio::null());
    // SAFETY: the hook runs in the forked child of a possibly multithreaded caller, where
    // only async-signal-safe calls are allowed: setsid(2) is one, and building the error
    // from errno allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run it: {e}: it must be the agentkernel executable"))?;
    // Our copy of the write end goes with `cmd`: EOF then means the role is gone.
    drop(cmd);
    // The role forks and exits at once (its child does the work): reap it now.
    let _ = child.wait();
    let line = read_report(&report_r, wait).map_err(|e| format!("no word from it: {e}"))?;
    if line.is_empty() {
        return Err(
            "it exited before reporting: check that it is the agentkernel executable".to_string(),
        );
    }
    Ok(line)
}

fn read_report(fd: &OwnedFd, wait: Duration) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", wait.as_secs()),
            ));
        }
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let wait = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(line),
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                if let Some(end) = line.iter().position(|b| *b == b'\n') {
                    line.truncate(end);
                    return Ok(line);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One stream's file, holding at most the first `OUTPUT_CAP` bytes plus the marker.
struct Capped {
    file: Option<std::fs::File>,
    written: u64,
    truncated: bool,
}

impl Capped {
    fn create(path: &Path) -> std::io::Result<Capped> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Capped {
            file: Some(file),
            written: 0,
            truncated: false,
        })
    }

    fn write(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let room = OUTPUT_CAP.saturating_sub(self.written);
        let keep = data.len().min(room.try_into().unwrap_or(usize::MAX));
        if file.write_all(&data[..keep]).is_err() {
            // A full disk: stop writing rather than fail the command.
            self.file = None;
            return;
        }
        self.written += keep as u64;
        if keep < data.len() {
            let _ = file.write_all(TRUNCATION_MARKER);
            self.truncated = true;
        }
    }
}

/// The supervisor role: `agentkernel __detached HOME SANDBOX ID`. Returns the exit code.
///
/// Must run first thing in a fresh process of the binary, before anything starts a thread:
/// it forks.
pub fn supervisor_main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let [home, sandbox, id] = args.as_slice() else {
        report(&Report::Failed {
            kind: FailKind::Other,
            message: format!("usage: agentkernel {SUPERVISOR_ROLE} HOME SANDBOX ID"),
        });
        return 2;
    };
    let (Some(sandbox), Some(id)) = (sandbox.to_str(), id.to_str()) else {
        return 2;
    };
    // SAFETY: this process is a fresh exec of the binary and has started no thread (roles are
    // dispatched before anything else in main), so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            report(&Report::Failed {
                kind: FailKind::Other,
                message: format!("fork: {}", std::io::Error::last_os_error()),
            });
            1
        }
        // The parent exits for the caller to reap; the child is adopted by init.
        0 => supervise(Path::new(home), sandbox, id),
        _ => 0,
    }
}

/// Writes the report line on stdout (the caller's pipe); false if nobody reads it any more.
fn report(r: &Report) -> bool {
    let Ok(mut line) = serde_json::to_vec(r) else {
        return false;
    };
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}

/// Points stdout at /dev/null: the caller sees EOF and the pipe is not held for the command's
/// lifetime.
fn close_report() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

fn supervise(home: &Path, sandbox: &str, id: &str) -> i32 {
    let fail = |message: String| {
        report(&Report::Failed {
            kind: FailKind::Other,
            message,
        });
        1
    };
    if !valid_id(id) || agentkernel_core::validate_name(sandbox).is_err() {
        return fail(format!("invalid sandbox {sandbox:?} or id {id:?}"));
    }
    let dir = records_dir(home, sandbox).join(id);
    let code = run_supervised(home, sandbox, id, &dir);
    close_report();
    code
}

fn run_supervised(home: &Path, sandbox: &str, id: &str, dir: &Path) -> i32 {
    let fail_other = |message: String| {
        report(&Report::Failed {
            kind: FailKind::Other,
            message,
        });
        remove_record(dir);
        1
    };
    let engine = match Engine::open(home) {
        Ok(e) => e,
        Err(e) => return fail_other(e.to_string()),
    };
    let request_path = dir.join(REQUEST);
    let req: ExecRequest = match read_json(&request_path) {
        Ok(Some(r)) => r,
        Ok(None) => return fail_other(format!("{} is missing", request_path.display())),
        Err(e) => return fail_other(format!("read {}: {e}", request_path.display())),
    };
    // The request may carry secrets in its environment: it is not kept.
    let _ = std::fs::remove_file(&request_path);
    let (mut out, mut err) = match (
        Capped::create(&dir.join(STDOUT)),
        Capped::create(&dir.join(STDERR)),
    ) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return fail_other(format!("create the output files in {}: {e}", dir.display()));
        }
    };
    let signals = match open_signals(dir) {
        Ok(fd) => fd,
        Err(e) => {
            return fail_other(format!(
                "create the signal FIFO {}: {e}",
                dir.join(SIGNALS).display()
            ));
        }
    };
    let supervisor_pid = std::process::id();
    let supervisor_start_time = proc::start_time(supervisor_pid).unwrap_or(0);
    let boot_id = proc::boot_id();
    let mut started = false;
    // The caller gave up (or the record was removed) before the command could be recorded.
    let mut abandoned = false;
    let result = {
        let mut sink = |event: ExecEvent| {
            match event {
                ExecEvent::Started { pid } => {
                    let meta = Meta {
                        id: id.to_string(),
                        sandbox: sandbox.to_string(),
                        command: req.argv.clone(),
                        started_at: now(),
                        pid,
                        pid_start_time: proc::start_time(pid).unwrap_or(0),
                        supervisor_pid,
                        supervisor_start_time,
                        boot_id: boot_id.clone(),
                    };
                    started = true;
                    let recorded = write_atomic(&dir.join(COMMAND), &meta).is_ok();
                    if !recorded || !report(&Report::Started { pid }) {
                        // Nobody will ever know about it: it must not run unsupervised. Killed
                        // the way every signal reaches it (a container engine reports pid 0).
                        abandoned = true;
                        let sigkill = [libc::SIGKILL as u8];
                        let _ = rustix::io::write(&signals, &sigkill);
                    }
                    close_report();
                }
                ExecEvent::Stdout(data) => out.write(&data),
                ExecEvent::Stderr(data) => err.write(&data),
                ExecEvent::Exit(_) => {}
            }
            ControlFlow::Continue(())
        };
        engine.exec_audited(
            sandbox,
            &req,
            &mut sink,
            crate::backend::Controls {
                signals: Some(signals.as_fd()),
                resized: None,
            },
            Some(id),
        )
    };
    if abandoned {
        remove_record(dir);
        return 1;
    }
    let exit = match (&result, started) {
        (Ok(status), true) => Exit::of(status),
        (Err(e), true) => Exit {
            exit_code: None,
            signal: None,
            oom_killed: false,
            timed_out: false,
            finished_at: now(),
            error: Some(e.to_string()),
        },
        (Err(e), false) => {
            report(&Report::Failed {
                kind: FailKind::of(e),
                message: e.to_string(),
            });
            remove_record(dir);
            return 1;
        }
        (Ok(_), false) => return fail_other("the command did not start".to_string()),
    };
    // The record may be gone (the sandbox was removed): then there is nothing to update.
    let _ = write_atomic(&dir.join(EXIT), &exit);
    if result.is_ok() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {

    #[test]
    fn records_are_capped_oldest_finished_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let ids: Vec<String> = (0..MAX_RECORDS).map(|i| format!("{i:012x}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let dir = root.path().join(id);
            std::fs::create_dir(&dir).expect("record");
            // The first two are finished, the oldest first.
            if i < 2 {
                std::fs::write(dir.join(EXIT), "{}").expect("exit");
                let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
                std::fs::File::options()
                    .write(true)
                    .open(dir.join(EXIT))
                    .and_then(|f| f.set_modified(at))
                    .expect("mtime");
            }
        }
        make_room(root.path(), "s").expect("room made");
        assert!(
            !root.path().join(&ids[0]).exists(),
            "the oldest finished record goes"
        );
        assert!(root.path().join(&ids[1]).exists());
        assert!(
            root.path().join(&ids[2]).exists(),
            "running commands' records stay"
        );
        std::fs::create_dir(root.path().join("ffffffffffff")).expect("one more");
        make_room(root.path(), "s").expect("room made");
        assert!(!root.path().join(&ids[1]).exists());
        std::fs::create_dir(root.path().join("fffffffffffe")).expect("one more");
        let e = make_room(root.path(), "s").expect_err("all running");
        assert!(matches!(e, EngineError::LimitReached(_)), "{e}");
    }

    use super::*;

    #[test]
    fn ids_are_hex_and_paths_are_refused() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(new_id(), id);
        for bad in [
            "../x",
            "",
            "0123456789ab/",
            "0123456789AB",
            "0123456789a",
            "..",
            "/etc/passwd",
        ] {
            assert!(!valid_id(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn output_is_capped_with_a_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let mut c = Capped::create(&path).expect("create");
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..9 {
            c.write(&chunk);
        }
        c.write(b"more");
        drop(c);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(
            bytes.len() as u64,
            OUTPUT_CAP + TRUNCATION_MARKER.len() as u64
        );
        assert!(bytes.ends_with(TRUNCATION_MARKER));
        let (text, truncated) = read_stream(&path).expect("read");
        assert!(truncated);
        assert_eq!(text.len(), bytes.len());
    }

    #[test]
    fn kill_fallback_never_overwrites_a_recorded_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(EXIT);
        let first = Exit::of(&ExitStatus {
            code: 3,
            ..Default::default()
        });
        assert!(create_atomic(&path, &first).expect("create"));
        let second = Exit::of(&ExitStatus::default());
        assert!(!create_atomic(&path, &second).expect("create"));
        let kept: Exit = read_json(&path).expect("read").expect("exists");
        assert_eq!(kept.exit_code, Some(3));
    }

    #[test]
    fn log_streams_parse() {
        assert_eq!("stdout".parse::<LogStream>().ok(), Some(LogStream::Stdout));
        assert_eq!("stderr".parse::<LogStream>().ok(), Some(LogStream::Stderr));
        assert!(matches!(
            "both".parse::<LogStream>(),
            Err(EngineError::BadLogStream(_))
        ));
    }
}
