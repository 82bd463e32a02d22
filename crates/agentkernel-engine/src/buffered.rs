//! Running one command (`run` or `exec`) for a surface that answers once it has finished (the
//! buffered HTTP endpoints, the MCP tools): the engine's blocking call runs on a blocking
//! thread, its output is collected (each stream bounded), and a caller that goes away kills
//! the command: the future owns a `CancelOnDrop` whose drop sends SIGKILL through the exec's
//! signal pipe.

use crate::backend::Controls;
use crate::{EngineError, Sink};
use agentkernel_core::{ExecEvent, ExitStatus};
use rustix::fd::{AsFd, OwnedFd};
use std::ops::ControlFlow;

/// An engine operation that runs one command: `run` or `exec`.
pub type ExecOp =
    Box<dyn FnOnce(&mut Sink<'_>, Controls<'_>) -> Result<ExitStatus, EngineError> + Send>;

/// Kills the command when dropped, unless disarmed.
pub struct CancelOnDrop {
    write: Option<OwnedFd>,
}

impl CancelOnDrop {
    /// The guard and the read end to give the exec as its signal pipe.
    pub fn pair() -> std::io::Result<(CancelOnDrop, OwnedFd)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((CancelOnDrop { write: Some(write) }, read))
    }

    pub fn disarm(&mut self) {
        self.write = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(fd) = self.write.take() {
            let _ = rustix::io::write(&fd, &[libc::SIGKILL as u8]);
        }
    }
}

/// What a finished command wrote and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Buffered {
    /// stdout and stderr interleaved as produced.
    pub output: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Some output was dropped: a stream went over the limit.
    pub truncated: bool,
    pub status: ExitStatus,
}

impl Buffered {
    fn new() -> Buffered {
        Buffered::default()
    }

    fn push(&mut self, event: &ExecEvent, limit: usize) {
        let (data, stream) = match event {
            ExecEvent::Stdout(d) => (d, &mut self.stdout),
            ExecEvent::Stderr(d) => (d, &mut self.stderr),
            _ => return,
        };
        for buf in [stream, &mut self.output] {
            let room = limit.saturating_sub(buf.len());
            if data.len() > room {
                self.truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

/// Why a buffered command has no answer.
#[derive(Debug, thiserror::Error)]
pub enum BufferedError {
    /// The engine refused or failed (bad input, unknown sandbox, backend failure).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The pipe or the blocking thread failed: agentkernel's own fault.
    #[error("{0}")]
    Internal(String),
}

/// Runs `op` to completion and collects its output (each stream bounded by `limit` bytes).
/// A command killed by its timeout comes back with `status.timed_out` set; one that could not
/// be found or executed comes back with exit code 127/126 and the reason on stderr, as a shell
/// gives. Dropping the future before it is done kills the command.
pub async fn buffered(op: ExecOp, limit: usize) -> Result<Buffered, BufferedError> {
    let (mut guard, cancel) =
        CancelOnDrop::pair().map_err(|e| BufferedError::Internal(format!("create a pipe: {e}")))?;
    let task = tokio::task::spawn_blocking(move || {
        let mut collected = Buffered::new();
        let result = {
            let mut sink = |event: ExecEvent| {
                collected.push(&event, limit);
                ControlFlow::Continue(())
            };
            op(
                &mut sink,
                Controls {
                    signals: Some(cancel.as_fd()),
                    resized: None,
                },
            )
        };
        (result, collected)
    });
    let (result, mut collected) = task
        .await
        .map_err(|e| BufferedError::Internal(format!("the command's worker failed: {e}")))?;
    guard.disarm();
    match result {
        Ok(status) => {
            collected.status = status;
            Ok(collected)
        }
        Err(e) if matches!(e.exit_code(), 126 | 127) => {
            let message = format!("agentkernel: error: {e}\n");
            collected.stderr.extend_from_slice(message.as_bytes());
            collected.output.extend_from_slice(message.as_bytes());
            collected.status = ExitStatus {
                code: e.exit_code(),
                ..ExitStatus::default()
            };
            Ok(collected)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a surface says about a command its timeout killed.
pub fn timeout_message(timeout: std::time::Duration) -> String {
    format!(
        "the command did not finish within {:.1}s and was killed: set timeout_ms for longer commands, or start it detached",
        timeout.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_output_is_bounded() {
        let mut c = Buffered::new();
        c.push(&ExecEvent::Stdout(b"abc".to_vec()), 4);
        c.push(&ExecEvent::Stderr(b"xyz".to_vec()), 4);
        assert_eq!(c.stdout, b"abc");
        assert_eq!(c.stderr, b"xyz");
        assert_eq!(c.output, b"abcx");
        assert!(c.truncated);
    }
}
