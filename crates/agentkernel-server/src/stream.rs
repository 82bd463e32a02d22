//! Running an engine exec from async handlers: the engine's blocking call runs on a blocking
//! thread and its events either are collected (buffered answers) or leave as SSE events as the
//! command produces them. A client that goes away kills the command: the handler owns a
//! `CancelOnDrop` whose drop sends SIGKILL through the exec's signal pipe.

use crate::envelope::ApiError;
use crate::state::AppState;
use crate::types::{OutputEncoding, RunOutput};
use agentkernel_core::{ExecEvent, ExitStatus};
use agentkernel_engine::EngineError;
use agentkernel_engine::backend::Controls;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use rustix::fd::AsFd;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::Duration;

pub use agentkernel_engine::buffered::{Buffered, CancelOnDrop, ExecOp, timeout_message};

/// Runs `op` to completion and collects its output (each stream bounded by `limit` bytes, all
/// commands of the server by its output budget): the engine's `buffered`, shared with the MCP
/// tools. A command killed by the timeout is a 408; one that could not be found or executed is
/// an answer with exit code 127/126 and the reason on stderr, as a shell gives. The
/// reservation holds the output's share of the budget: keep it until the answer is sent.
pub async fn buffered(op: ExecOp, st: &AppState, timeout: Duration) -> Result<Buffered, ApiError> {
    use agentkernel_engine::buffered::BufferedError;
    let out = agentkernel_engine::buffered::buffered(
        op,
        st.limits.output_bytes,
        Some(st.output_budget.clone()),
    )
    .await
    .map_err(|e| match e {
        BufferedError::Engine(e) => ApiError::from(e),
        BufferedError::Internal(m) => ApiError::internal(m),
    })?;
    if out.status.timed_out {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            timeout_message(timeout),
        ));
    }
    Ok(out)
}

/// The answer of a buffered command. Its JSON is made straight from the collected bytes (text
/// that is valid UTF-8 is not copied first), the bytes are freed once it is made, and their
/// share of the output budget is held until the answer has been sent: the JSON is the same
/// bytes again.
pub fn answer(out: Buffered) -> Response {
    let view = RunOutput {
        output: String::from_utf8_lossy(out.output()),
        exit_code: out.status.code,
        stdout: String::from_utf8_lossy(&out.stdout),
        stderr: String::from_utf8_lossy(&out.stderr),
        truncated: out.truncated,
        oom_killed: out.status.oom_killed,
    };
    let text_bytes = view.output.len() + view.stdout.len() + view.stderr.len();
    let response = crate::envelope::large_ok(&view, text_bytes);
    drop(view);
    let Buffered { reservation, .. } = out;
    crate::limits::guard_body(response, reservation)
}

/// Text of output bytes: the same buffer when they are valid UTF-8 (no copy), else with
/// invalid bytes replaced.
pub fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

enum Msg {
    Event(ExecEvent),
    End(Result<ExitStatus, EngineError>),
}

/// Runs `op` and streams its events as SSE: `progress` (when given), `started`, `output` per
/// chunk as produced, then `done` or `error`. Dropping the stream (the client went away) kills
/// the command.
pub fn streamed(
    op: ExecOp,
    sandbox: Option<String>,
    progress: Option<(&'static str, String)>,
    timeout: Duration,
    encoding: OutputEncoding,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (guard, cancel) =
        CancelOnDrop::pair().map_err(|e| ApiError::internal(format!("create a pipe: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(64);
    tokio::task::spawn_blocking(move || {
        let events = tx.clone();
        let result = {
            // Not `blocking_send`: a backend may call the sink from inside a runtime of its
            // own (the container backends drive their engine's API on one), where tokio's
            // blocking calls panic. futures' executor blocks only this thread, wherever it is.
            let mut sink =
                |event: ExecEvent| match futures_executor::block_on(events.send(Msg::Event(event)))
                {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                };
            op(
                &mut sink,
                Controls {
                    signals: Some(cancel.as_fd()),
                    resized: None,
                },
            )
        };
        let _ = tx.blocking_send(Msg::End(result));
    });
    let first: Vec<Event> = progress
        .map(|(stage, message)| {
            json_event(
                "progress",
                serde_json::json!({"stage": stage, "message": message}),
            )
        })
        .into_iter()
        .collect();
    let state = StreamState {
        rx,
        guard,
        sandbox,
        stdout: Utf8Carry::default(),
        stderr: Utf8Carry::default(),
        pending: first.into(),
        ended: false,
        timeout,
        encoding,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok(event), st));
            }
            if st.ended {
                return None;
            }
            match st.rx.recv().await {
                Some(Msg::Event(e)) => st.translate(e),
                Some(Msg::End(result)) => {
                    st.ended = true;
                    st.guard.disarm();
                    st.finish(result);
                }
                None => {
                    st.ended = true;
                    st.pending.push_back(json_event(
                        "error",
                        serde_json::json!({"message": "the command's worker stopped unexpectedly"}),
                    ));
                }
            }
        }
    });
    // Comments every few seconds: a quiet command still notices a client that went away.
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(2))))
}

struct StreamState {
    rx: tokio::sync::mpsc::Receiver<Msg>,
    guard: CancelOnDrop,
    sandbox: Option<String>,
    stdout: Utf8Carry,
    stderr: Utf8Carry,
    pending: std::collections::VecDeque<Event>,
    ended: bool,
    timeout: Duration,
    encoding: OutputEncoding,
}

impl StreamState {
    fn translate(&mut self, event: ExecEvent) {
        match event {
            ExecEvent::Started { pid } => self.pending.push_back(json_event(
                "started",
                serde_json::json!({"sandbox": self.sandbox, "pid": pid}),
            )),
            ExecEvent::Stdout(d) => self.output("stdout", &d),
            ExecEvent::Stderr(d) => self.output("stderr", &d),
            ExecEvent::Exit(_) => {}
        }
    }

    fn output(&mut self, stream: &str, data: &[u8]) {
        let text = if self.encoding == OutputEncoding::Base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(data)
        } else if stream == "stdout" {
            self.stdout.push(data)
        } else {
            self.stderr.push(data)
        };
        self.push_output(stream, text);
    }

    fn push_output(&mut self, stream: &str, data: String) {
        if !data.is_empty() {
            self.pending.push_back(json_event(
                "output",
                serde_json::json!({"stream": stream, "data": data}),
            ));
        }
    }

    fn finish(&mut self, result: Result<ExitStatus, EngineError>) {
        let rest = self.stdout.flush();
        self.push_output("stdout", rest);
        let rest = self.stderr.flush();
        self.push_output("stderr", rest);
        let last = match result {
            Ok(status) if status.timed_out => json_event(
                "error",
                serde_json::json!({"message": timeout_message(self.timeout), "exit_code": status.code}),
            ),
            Ok(status) => json_event(
                "done",
                serde_json::json!({"exit_code": status.code, "oom_killed": status.oom_killed}),
            ),
            Err(e) if matches!(e.exit_code(), 126 | 127) => {
                self.output("stderr", format!("agentkernel: error: {e}\n").as_bytes());
                json_event("done", serde_json::json!({"exit_code": e.exit_code()}))
            }
            Err(e) => json_event(
                "error",
                serde_json::json!({"message": e.to_string(), "status": crate::envelope::status_of(&e).as_u16()}),
            ),
        };
        self.pending.push_back(last);
    }
}

fn json_event(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Turns chunks of bytes into text without splitting a UTF-8 character across events: an
/// incomplete character at the end of a chunk waits for the next one.
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let keep = incomplete_tail(&self.pending);
        let ready = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..ready]).into_owned();
        self.pending.drain(..ready);
        text
    }

    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of a UTF-8 sequence started but not finished at the end of `bytes`.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_arrive_whole() {
        let mut c = Utf8Carry::default();
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(c.push(b"a"), "a");
        assert_eq!(c.push(&euro[..1]), "");
        assert_eq!(c.push(&euro[1..2]), "");
        assert_eq!(c.push(&[euro[2], b'b']), "€b");
        assert_eq!(c.push(&[0xff, b'c']), "\u{fffd}c");
        assert_eq!(c.push(&euro[..2]), "");
        assert_eq!(c.flush(), "\u{fffd}");
    }
}
