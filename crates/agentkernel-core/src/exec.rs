//! What an exec asks for and what it produces.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One command to run in a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra environment, applied over the sandbox's own.
    pub env: Vec<(String, String)>,
    /// Absolute path inside the sandbox; the sandbox's default when `None`.
    pub workdir: Option<String>,
    /// Run under a pseudo-terminal (attach).
    pub tty: bool,
    /// Forward the caller's stdin to the command; otherwise it reads /dev/null.
    pub stdin: bool,
    pub timeout: Option<Duration>,
}

/// Sets `key` in an environment list, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

/// A sandbox's environment `base` with the request's variables on top (every backend starts
/// a command with it).
pub fn merged_env(base: &[(String, String)], req: &ExecRequest) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    for (k, v) in &req.env {
        set_env(&mut env, k.clone(), v.clone());
    }
    env
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitStatus {
    /// The exit code as a shell reports it: the command's own code, or 128 + signal.
    pub code: i32,
    pub signal: Option<i32>,
    /// The sandbox's memory limit was hit and the kernel killed a process.
    pub oom_killed: bool,
    /// The request's timeout elapsed and the command was killed.
    pub timed_out: bool,
    /// With `oom_killed`: how much of the sandbox's memory, in MB, was files it had written to
    /// filesystems kept in memory (`/tmp`; a throwaway run's root and `/workspace`), so that a
    /// disk fill is not reported as a memory hog. `None` where the backend cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_in_memory_mb: Option<u64>,
}

/// The stream every exec yields: `Started`, then output chunks as produced, then `Exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecEvent {
    Started { pid: u32 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
}

/// Exit code when agentkernel itself could not run the command.
pub const EXIT_AGENTKERNEL_ERROR: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Receives a command's events as they happen; `Break` means the consumer went away and the
/// command must be killed. Every backend streams into one, every surface supplies one.
pub type Sink<'a> = dyn FnMut(ExecEvent) -> std::ops::ControlFlow<()> + 'a;

/// Receives everything an interactive session prints (asciicast recordings of `attach`).
pub type Recorder<'a> = dyn FnMut(&[u8]) + 'a;
