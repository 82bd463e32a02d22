//! `parallel`: independent jobs, each a throwaway sandbox of its own, run at most `max_jobs`
//! at a time. Every job's output reaches the caller tagged with the job it came from, so the
//! surface can keep each job's output apart; the outcome of each job (its exit code, or why it
//! could not run) is reported as it finishes.
//!
//! A job is written `NAME:IMAGE:COMMAND`, where the image may carry a tag or a digest
//! (`lint:node:22-alpine:npx eslint .`, `t:busybox@sha256:…:true`). The command is a shell
//! line, run with `sh -c` as `docker run IMAGE sh -c …` would.

use crate::{Engine, RunOptions, SpecRequest};
use agentkernel_core::exec::EXIT_AGENTKERNEL_ERROR;
use agentkernel_core::{CoreError, ExecEvent, ExecRequest};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// One job of `parallel --job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub image: String,
    pub command: String,
}

impl std::str::FromStr for Job {
    type Err = CoreError;

    /// `NAME:IMAGE[:TAG|@sha256:DIGEST]:COMMAND`. The segment after the image is its tag when
    /// it looks like one (no spaces, at most 128 of `A-Za-z0-9_.-`) and another `:` follows;
    /// otherwise it starts the command.
    fn from_str(text: &str) -> Result<Job, CoreError> {
        let bad = |why: &str| {
            CoreError::InvalidArgument(format!(
                "--job {text:?}: {why}: write it as NAME:IMAGE:COMMAND, e.g. \"lint:node:22-alpine:npx eslint .\""
            ))
        };
        let (name, rest) = text.split_once(':').ok_or_else(|| bad("no image"))?;
        agentkernel_core::name::validate_name(name).map_err(|e| bad(&e.to_string()))?;
        let (image, rest) = rest.split_once(':').ok_or_else(|| bad("no command"))?;
        let (image, command) = match rest.split_once(':') {
            Some((tag, command)) if looks_like_tag(tag) => (format!("{image}:{tag}"), command),
            _ => (image.to_string(), rest),
        };
        if image.is_empty() {
            return Err(bad("the image is empty"));
        }
        if command.trim().is_empty() {
            return Err(bad("the command is empty"));
        }
        Ok(Job {
            name: name.to_string(),
            image,
            command: command.to_string(),
        })
    }
}

fn looks_like_tag(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 128
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What happens to the jobs, in the order it happens.
#[derive(Debug)]
pub enum JobEvent {
    /// Job `index` (of the list given) has begun.
    Started(usize),
    /// Output of job `index`; `stderr` tells the stream.
    Output {
        index: usize,
        stderr: bool,
        data: Vec<u8>,
    },
    /// Job `index` ended: its exit code (125 when agentkernel could not run it, with why).
    Finished {
        index: usize,
        code: i32,
        error: Option<String>,
        took: Duration,
    },
}

/// Refuses a job list the run would fail on: none, or two jobs of one name (their output
/// would be indistinguishable).
pub fn check_jobs(jobs: &[Job]) -> Result<(), CoreError> {
    if jobs.is_empty() {
        return Err(CoreError::InvalidArgument(
            "no jobs: give one or more --job NAME:IMAGE:COMMAND".into(),
        ));
    }
    for (i, job) in jobs.iter().enumerate() {
        if jobs[..i].iter().any(|j| j.name == job.name) {
            return Err(CoreError::InvalidArgument(format!(
                "two jobs are named {:?}: give each job its own name",
                job.name
            )));
        }
    }
    Ok(())
}

/// Runs every job, at most `max_jobs` at once, each in a throwaway sandbox made from `base`
/// with the job's image and command; events go to `events` as they happen. Each worker
/// thread opens its own engine on `home` (an engine is one thread's). A process that boots
/// native sandboxes from several threads must have set up the boot helper first.
pub fn run_jobs(
    home: &Path,
    base: &SpecRequest,
    jobs: &[Job],
    max_jobs: usize,
    events: &Sender<JobEvent>,
) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..max_jobs.clamp(1, jobs.len().max(1)) {
            let events = events.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(index) else { break };
                    let _ = events.send(JobEvent::Started(index));
                    let began = Instant::now();
                    let (code, error) = match run_job(home, base, job, index, &events) {
                        Ok(code) => (code, None),
                        Err(e) => (e.exit_code(), Some(e.to_string())),
                    };
                    let _ = events.send(JobEvent::Finished {
                        index,
                        code,
                        error,
                        took: began.elapsed(),
                    });
                }
            });
        }
    });
}

fn run_job(
    home: &Path,
    base: &SpecRequest,
    job: &Job,
    index: usize,
    events: &Sender<JobEvent>,
) -> crate::Result<i32> {
    let engine = Engine::open(home)?;
    let argv = vec!["sh".to_string(), "-c".to_string(), job.command.clone()];
    let mut req = base.clone();
    req.image = Some(job.image.clone());
    req.command = argv.clone();
    let exec = ExecRequest {
        argv,
        ..Default::default()
    };
    let mut sink = |event: ExecEvent| {
        let (stderr, data) = match event {
            ExecEvent::Stdout(data) => (false, data),
            ExecEvent::Stderr(data) => (true, data),
            _ => return std::ops::ControlFlow::Continue(()),
        };
        let _ = events.send(JobEvent::Output {
            index,
            stderr,
            data: data.to_vec(),
        });
        std::ops::ControlFlow::Continue(())
    };
    let outcome = engine.run(
        &req,
        &RunOptions::default(),
        &exec,
        &mut sink,
        crate::backend::Controls::default(),
    )?;
    Ok(outcome.status.code)
}

/// The exit code of a whole set of jobs: the worst job's (the highest code; 0 when all
/// passed).
pub fn worst_code(codes: impl IntoIterator<Item = i32>) -> i32 {
    codes.into_iter().max().unwrap_or(EXIT_AGENTKERNEL_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> Job {
        text.parse().expect("a valid job")
    }

    #[test]
    fn jobs_parse_with_and_without_tags() {
        assert_eq!(
            job("lint:node:22-alpine:npx eslint ."),
            Job {
                name: "lint".into(),
                image: "node:22-alpine".into(),
                command: "npx eslint .".into()
            }
        );
        let j = job("t:busybox:echo a:b");
        assert_eq!(
            (j.image.as_str(), j.command.as_str()),
            ("busybox", "echo a:b")
        );
        let j = job("t:busybox:latest:echo hi");
        assert_eq!(
            (j.image.as_str(), j.command.as_str()),
            ("busybox:latest", "echo hi")
        );
        let j = job("t:busybox@sha256:abc123:true");
        assert_eq!(j.image, "busybox@sha256:abc123");
        assert_eq!(j.command, "true");
    }

    #[test]
    fn bad_jobs_say_how_to_write_one() {
        for text in [
            "lint",
            "lint:node",
            "lint:node:  ",
            ":node:true",
            "a b:node:true",
        ] {
            let e = text.parse::<Job>().expect_err(text).to_string();
            assert!(e.contains("NAME:IMAGE:COMMAND"), "{text}: {e}");
        }
        let twice = [job("a:busybox:true"), job("a:busybox:false")];
        assert!(check_jobs(&twice).is_err());
        assert!(check_jobs(&[]).is_err());
    }

    #[test]
    fn the_worst_code_wins() {
        assert_eq!(worst_code([0, 0]), 0);
        assert_eq!(worst_code([0, 3, 1]), 3);
        assert_eq!(worst_code([2, 125]), 125);
    }
}
