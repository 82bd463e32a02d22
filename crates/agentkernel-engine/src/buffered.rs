//! Running one command (`run` or `exec`) for a surface that answers once it has finished (the
//! buffered HTTP endpoints, the MCP tools): the engine's blocking call runs on a blocking
//! thread, its output is collected (each stream bounded, and all commands of a server together
//! bounded by an [`OutputBudget`]), and a caller that goes away kills the command: the future
//! owns a `CancelOnDrop` whose drop sends SIGKILL through the exec's signal pipe.

use crate::backend::Controls;
use crate::{EngineError, Sink};
use agentkernel_core::{ExecEvent, ExitStatus};
use rustix::fd::{AsFd, OwnedFd};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Bytes of collected output that all the buffered commands of one server may hold at once.
/// Each command takes from it as its output arrives and gives back when its answer is gone
/// (its [`Reservation`] is dropped); output that finds the budget empty is dropped as output
/// over the per-stream limit is, and marks the answer `truncated`.
#[derive(Debug)]
pub struct OutputBudget {
    available: AtomicUsize,
    total: usize,
}

impl OutputBudget {
    pub fn new(total: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            available: AtomicUsize::new(total),
            total,
        })
    }

    /// Bytes not held by any command now.
    pub fn available(&self) -> usize {
        self.available.load(Ordering::Acquire)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes up to `want` bytes; returns how many were granted.
    fn take(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                granted = want.min(free);
                Some(free - granted)
            });
        granted
    }
}

/// Bytes taken from an [`OutputBudget`], given back when dropped. Without a budget it holds
/// nothing.
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<Arc<OutputBudget>>,
    bytes: usize,
}

impl Reservation {
    fn new(budget: Option<Arc<OutputBudget>>) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Up to `want` more bytes: all of them without a budget.
    fn take(&mut self, want: usize) -> usize {
        match &self.budget {
            None => want,
            Some(budget) => {
                let granted = budget.take(want);
                self.bytes += granted;
                granted
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.available.fetch_add(self.bytes, Ordering::AcqRel);
        }
    }
}

/// What a finished command wrote and how it ended.
#[derive(Debug, Default)]
pub struct Buffered {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// stdout and stderr interleaved as produced, once both have written. Until then the
    /// interleaving is just the one that wrote, and is not copied (see [`Buffered::output`]).
    interleaved: Option<Vec<u8>>,
    /// Some output was dropped: a stream went over the limit, or the server's budget was spent.
    pub truncated: bool,
    pub status: ExitStatus,
    /// The budget held by the collected bytes: keep it until they (or an answer made of them)
    /// are gone.
    pub reservation: Reservation,
    /// Per buffer (interleaved, stdout, stderr): the budget refused it once, so it keeps no
    /// more (what it kept stays a prefix of what the command wrote).
    starved: [bool; 3],
}

const INTERLEAVED: usize = 0;
const STDOUT: usize = 1;
const STDERR: usize = 2;

impl Buffered {
    fn new(budget: Option<Arc<OutputBudget>>) -> Buffered {
        Buffered {
            reservation: Reservation::new(budget),
            ..Buffered::default()
        }
    }

    /// stdout and stderr interleaved as produced.
    pub fn output(&self) -> &[u8] {
        match &self.interleaved {
            Some(both) => both,
            None if self.stderr.is_empty() => &self.stdout,
            None => &self.stderr,
        }
    }

    /// [`Buffered::output`], owned: the interleaved buffer, or the one stream that wrote
    /// (moved, not copied).
    pub fn into_output(self) -> Vec<u8> {
        match self.interleaved {
            Some(both) => both,
            None if self.stderr.is_empty() => self.stdout,
            None => self.stderr,
        }
    }

    fn push(&mut self, event: &ExecEvent, limit: usize) {
        match event {
            ExecEvent::Stdout(d) => self.keep(d, STDOUT, limit, true),
            ExecEvent::Stderr(d) => self.keep(d, STDERR, limit, true),
            _ => {}
        }
    }

    /// Keeps what fits of `data` in stream `slot` and in the interleaving (taking from the
    /// budget when `budgeted`).
    fn keep(&mut self, data: &[u8], slot: usize, limit: usize, budgeted: bool) {
        let other = if slot == STDOUT { STDERR } else { STDOUT };
        if self.interleaved.is_none() && !self.stream(other).is_empty() {
            // The second stream starts writing: the interleaving so far is all the first's.
            let so_far = self.stream(other).len();
            let granted = if budgeted {
                self.reservation.take(so_far)
            } else {
                so_far
            };
            if granted < so_far {
                self.starved[INTERLEAVED] = true;
                self.truncated = true;
            }
            self.starved[INTERLEAVED] |= self.starved[other];
            self.interleaved = Some(self.stream(other)[..granted].to_vec());
        }
        self.append(slot, data, limit, budgeted);
        if self.interleaved.is_some() {
            self.append(INTERLEAVED, data, limit, budgeted);
        }
    }

    fn stream(&self, slot: usize) -> &Vec<u8> {
        if slot == STDOUT {
            &self.stdout
        } else {
            &self.stderr
        }
    }

    fn append(&mut self, slot: usize, data: &[u8], limit: usize, budgeted: bool) {
        let buf = match slot {
            STDOUT => &mut self.stdout,
            STDERR => &mut self.stderr,
            _ => self.interleaved.get_or_insert_with(Vec::new),
        };
        let room = limit.saturating_sub(buf.len());
        let wanted = data.len().min(room);
        let kept = match (self.starved[slot], budgeted) {
            (true, _) => 0,
            (false, true) => self.reservation.take(wanted),
            (false, false) => wanted,
        };
        if kept < wanted {
            self.starved[slot] = true;
        }
        if kept < data.len() {
            self.truncated = true;
        }
        buf.extend_from_slice(&data[..kept]);
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

/// Runs `op` to completion and collects its output (each stream bounded by `limit` bytes, and
/// by what `budget` has left). A command killed by its timeout comes back with
/// `status.timed_out` set; one that could not be found or executed comes back with exit code
/// 127/126 and the reason on stderr, as a shell gives. Dropping the future before it is done
/// kills the command.
pub async fn buffered(
    op: ExecOp,
    limit: usize,
    budget: Option<Arc<OutputBudget>>,
) -> Result<Buffered, BufferedError> {
    let (mut guard, cancel) =
        CancelOnDrop::pair().map_err(|e| BufferedError::Internal(format!("create a pipe: {e}")))?;
    let task = tokio::task::spawn_blocking(move || {
        let mut collected = Buffered::new(budget);
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
            // Always kept: it is the answer's reason, and small.
            collected.keep(message.as_bytes(), STDERR, usize::MAX, false);
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
        let mut c = Buffered::new(None);
        c.push(&ExecEvent::Stdout(b"abc".to_vec()), 4);
        c.push(&ExecEvent::Stderr(b"xyz".to_vec()), 4);
        assert_eq!(c.stdout, b"abc");
        assert_eq!(c.stderr, b"xyz");
        assert_eq!(c.output(), b"abcx");
        assert!(c.truncated);
    }

    #[test]
    fn one_stream_is_its_own_interleaving_without_a_copy() {
        let budget = OutputBudget::new(100);
        let mut c = Buffered::new(Some(budget.clone()));
        c.push(&ExecEvent::Stdout(b"ab".to_vec()), 100);
        c.push(&ExecEvent::Stdout(b"cd".to_vec()), 100);
        assert_eq!(c.output(), b"abcd");
        assert_eq!(budget.available(), 96, "the bytes are held once");
        c.push(&ExecEvent::Stderr(b"!".to_vec()), 100);
        c.push(&ExecEvent::Stdout(b"e".to_vec()), 100);
        assert_eq!(c.output(), b"abcd!e");
        assert_eq!(c.stdout, b"abcde");
        assert_eq!(c.stderr, b"!");
        assert!(!c.truncated);
        assert_eq!(c.into_output(), b"abcd!e");
        let mut only_err = Buffered::new(None);
        only_err.push(&ExecEvent::Stderr(b"oops".to_vec()), 100);
        assert_eq!(only_err.output(), b"oops");
        assert_eq!(only_err.into_output(), b"oops");
    }

    #[test]
    fn commands_share_the_budget_and_give_it_back() {
        let budget = OutputBudget::new(12);
        let mut first = Buffered::new(Some(budget.clone()));
        first.push(&ExecEvent::Stdout(b"abcd".to_vec()), 100);
        first.push(&ExecEvent::Stderr(b"ef".to_vec()), 100);
        // stdout, stderr and the interleaving (made when stderr began) hold 4 + 2 + 6.
        assert_eq!(budget.available(), 0);
        assert!(!first.truncated);
        assert_eq!(first.output(), b"abcdef");
        let mut second = Buffered::new(Some(budget.clone()));
        second.push(&ExecEvent::Stdout(b"xyz".to_vec()), 100);
        assert_eq!(second.stdout, b"");
        assert!(second.truncated);
        drop(first);
        assert_eq!(budget.available(), budget.total());
        // What was cut stays cut: the kept output is a prefix of what the command wrote.
        second.push(&ExecEvent::Stdout(b"123".to_vec()), 100);
        assert_eq!(second.stdout, b"");
        assert_eq!(second.output(), b"");
        drop(second);
        assert_eq!(budget.available(), budget.total());
    }
}
