//! `benchmark`: how fast each backend is on this machine, measured the way a user meets it —
//! a throwaway `run` of `true` from request to exit code (sandbox made, command run, sandbox
//! removed), and an `exec` of `true` into a running sandbox.
//!
//! Every backend runs the same image and the same command, one at a time, after one untimed
//! run that prepares the image (a pull, an unpack, a container engine's load), so the figures
//! compare starting sandboxes, not downloads. The daemon's warm pool is not used: it would
//! measure the pool, not the backend.

use crate::backend::Controls;
use crate::{Engine, RunOptions, SpecRequest};
use agentkernel_core::{BackendKind, ExecRequest};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Median and spread of one operation's timings, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub p95_ms: f64,
    pub runs: usize,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Timing {
        samples.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Timing {
            median_ms: ms(at(0.5)),
            min_ms: ms(samples[0]),
            p95_ms: ms(at(0.95)),
            runs: samples.len(),
        }
    }
}

/// One backend's result: its timings, or why it was not measured.
#[derive(Debug, Clone, Serialize)]
pub struct BackendResult {
    pub backend: String,
    pub run: Option<Timing>,
    pub exec: Option<Timing>,
    /// Why there are no timings: the backend cannot run here, or an operation failed.
    pub skipped: Option<String>,
}

impl Engine {
    /// Measures `run` and `exec` of `true` on `backend`, `runs` times each, in sandboxes of
    /// `base` (its image, profile and network) on that backend.
    pub fn benchmark(
        &self,
        backend: BackendKind,
        base: &SpecRequest,
        runs: usize,
    ) -> BackendResult {
        let skipped = |why: String| BackendResult {
            backend: backend.to_string(),
            run: None,
            exec: None,
            skipped: Some(why),
        };
        match crate::backend::backend_for(backend, self.home()) {
            Ok(b) => {
                let ready = b.readiness();
                if !ready.usable {
                    return skipped(ready.reason);
                }
            }
            Err(e) => return skipped(e.to_string()),
        }
        let mut req = base.clone();
        req.backend = Some(backend.to_string());
        req.command = vec!["true".into()];
        match self.measure(&req, runs) {
            Ok((run, exec)) => BackendResult {
                backend: backend.to_string(),
                run: Some(run),
                exec: Some(exec),
                skipped: None,
            },
            Err(e) => skipped(e.to_string()),
        }
    }

    fn measure(&self, req: &SpecRequest, runs: usize) -> crate::Result<(Timing, Timing)> {
        let exec = ExecRequest {
            argv: req.command.clone(),
            ..Default::default()
        };
        let mut quiet = |_| std::ops::ControlFlow::Continue(());
        let mut run_once = || -> crate::Result<Duration> {
            let began = Instant::now();
            let outcome = self.run(
                req,
                &RunOptions::default(),
                &exec,
                &mut quiet,
                Controls::default(),
            )?;
            let took = began.elapsed();
            expect_success(outcome.status.code)?;
            Ok(took)
        };
        // Untimed: prepares the image for this backend.
        run_once()?;
        let run = (0..runs)
            .map(|_| run_once())
            .collect::<crate::Result<Vec<_>>>()?;
        let info = self.create(req, None, Some(Duration::from_secs(600)))?;
        let execs = (|| -> crate::Result<Vec<Duration>> {
            self.start(&info.name)?;
            let mut once = || -> crate::Result<Duration> {
                let began = Instant::now();
                let status = self.exec(&info.name, &exec, &mut quiet, Controls::default())?;
                let took = began.elapsed();
                expect_success(status.code)?;
                Ok(took)
            };
            once()?;
            (0..runs).map(|_| once()).collect()
        })();
        let removed = self.remove(&info.name);
        let execs = execs?;
        removed?;
        Ok((Timing::of(run), Timing::of(execs)))
    }
}

fn expect_success(code: i32) -> crate::Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(agentkernel_core::CoreError::InvalidArgument(format!(
        "`true` exited {code} in the benchmark's sandbox: the image needs a `true` command (busybox and Debian images have one)"
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_order_statistics() {
        let t = Timing::of(
            [5, 1, 3, 2, 4]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        );
        assert_eq!(
            (t.min_ms, t.median_ms, t.p95_ms, t.runs),
            (1.0, 3.0, 5.0, 5)
        );
    }
}
