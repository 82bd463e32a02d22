//! A running `agentkernel serve --port 0` for tests: started with a test's state, found by its
//! "serving" line, stopped with SIGTERM (and required to exit cleanly) when dropped.

use super::Ak;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub struct ServeProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Everything the server wrote on stderr, for failure messages.
    log: Arc<Mutex<String>>,
}

/// The `serve` command of `ak` with `extra` arguments, without any API key from the
/// environment the tests run in.
pub fn serve_cmd(ak: &Ak, extra: &[&str]) -> Command {
    let mut args = vec!["serve", "--port", "0"];
    args.extend_from_slice(extra);
    let mut cmd = ak.cmd(&args);
    cmd.env_remove("AGENTKERNEL_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl ServeProcess {
    /// Starts the server with the state of `ak` and waits for its "serving" line.
    pub fn start(ak: &Ak, extra: &[&str]) -> ServeProcess {
        ServeProcess::spawn(serve_cmd(ak, extra))
    }

    /// Starts `cmd` (a `serve_cmd`) and waits for its "serving" line.
    pub fn spawn(mut cmd: Command) -> ServeProcess {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd.spawn().expect("spawn agentkernel serve");
        let stderr = child.stderr.take().expect("serve's stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Drains stderr for the server's whole life, so it never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&format!("{line}\n"));
                    if line.contains("serving the HTTP API on http://") {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agentkernel {args:?} did not print its serving line; stderr:\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        };
        // "agentkernel: serving the HTTP API on http://127.0.0.1:PORT (...)"
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in the serving line {line:?}"));
        ServeProcess {
            child: Some(child),
            base: format!("http://{addr}"),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                _ => break None,
            }
        };
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let status = status.unwrap_or_else(|| {
                panic!(
                    "agentkernel serve did not exit within 20 s of SIGTERM; stderr:\n{}",
                    self.log()
                )
            });
            assert!(
                status.success(),
                "agentkernel serve exited with {status} after SIGTERM; stderr:\n{}",
                self.log()
            );
        }
    }
}
