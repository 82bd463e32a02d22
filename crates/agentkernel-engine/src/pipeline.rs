//! `pipeline FILE.toml`: ordered steps, each in a sandbox of its own, with files flowing from
//! one step to the next.
//!
//! ```toml
//! input = "./src"            # optional: a host directory, the first step's input
//! output = "./results"       # optional: a host directory that receives the last output
//!
//! [[steps]]
//! name = "generate"
//! image = "python:3.12-alpine"
//! command = "python3 gen.py > /out/data.csv"
//! output = "/out"
//!
//! [[steps]]
//! name = "count"
//! image = "busybox"
//! command = ["sh", "-c", "wc -l < /in/data.csv > /out/count"]
//! input = "/in"
//! output = "/out"
//! ```
//!
//! A step's `output` directory (inside its sandbox) is copied out when the step succeeds and
//! copied in as the next step's `input` directory; a string command runs with `sh -c`. The
//! pipeline stops at the first step that fails, with that step's exit code. Host paths are
//! relative to the pipeline file: the file is the local user's (the CLI is its only surface).
//! Each step's sandbox is removed when the step ends, whatever happened.

use crate::error::{EngineError, Result};
use crate::{Engine, SpecRequest};
use agentkernel_core::backend::Controls;
use agentkernel_core::exec::Sink;
use agentkernel_core::{CoreError, ExecRequest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Host directory copied in as the first step's input.
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// Host directory the last step's output is copied into.
    #[serde(default)]
    pub output: Option<PathBuf>,
    #[serde(alias = "step")]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub image: String,
    pub command: Command,
    /// Directory inside the sandbox that receives the previous step's output.
    #[serde(default)]
    pub input: Option<String>,
    /// Directory inside the sandbox whose files go to the next step.
    #[serde(default)]
    pub output: Option<String>,
}

/// A shell line (`sh -c`) or an argv.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(line) => vec!["sh".into(), "-c".into(), line.clone()],
            Command::Argv(argv) => argv.clone(),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Shell(line) => f.write_str(&line.replace('\n', "\\n").replace('\t', "\\t")),
            Command::Argv(argv) => write!(f, "{argv:?}"),
        }
    }
}

fn invalid(file: &Path, why: impl std::fmt::Display) -> EngineError {
    CoreError::InvalidArgument(format!("{}: {why}", file.display())).into()
}

impl Pipeline {
    /// Reads and checks a pipeline file; host paths in it become absolute (relative to the
    /// file's directory).
    pub fn load(file: &Path) -> Result<Pipeline> {
        let text = std::fs::read_to_string(file).map_err(|e| EngineError::Io {
            context: format!("read the pipeline {}", file.display()),
            source: e,
        })?;
        let mut pipeline: Pipeline = toml::from_str(&text).map_err(|e| {
            invalid(
                file,
                format!("{e}: a pipeline is [[steps]] tables with name, image, command and optional input/output"),
            )
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        for host in [&mut pipeline.input, &mut pipeline.output]
            .into_iter()
            .flatten()
        {
            *host = base.join(&*host);
        }
        pipeline.check(file)?;
        Ok(pipeline)
    }

    fn check(&self, file: &Path) -> Result<()> {
        if self.steps.is_empty() {
            return Err(invalid(file, "no steps: add a [[steps]] table"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = |why: String| invalid(file, format!("step {} ({}): {why}", i + 1, step.name));
            agentkernel_core::name::validate_name(&step.name).map_err(|e| at(e.to_string()))?;
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(at("another step has this name: name each step once".into()));
            }
            if step
                .command
                .argv()
                .first()
                .is_none_or(|w| w.trim().is_empty())
            {
                return Err(at("the command is empty".into()));
            }
            for dir in [&step.input, &step.output].into_iter().flatten() {
                if !dir.starts_with('/') || dir == "/" || dir.split('/').any(|c| c == "..") {
                    return Err(at(format!(
                        "{dir:?} is not a directory inside the sandbox: give an absolute path such as /data"
                    )));
                }
            }
            let fed = if i == 0 {
                self.input.is_some()
            } else {
                self.steps[i - 1].output.is_some()
            };
            if step.input.is_some() && !fed {
                return Err(at(if i == 0 {
                    "it has an input but the pipeline has none: set `input = \"HOST DIR\"` at the top of the file".into()
                } else {
                    "it has an input but the step before has no output: give that step `output`"
                        .into()
                }));
            }
        }
        if let Some(input) = &self.input
            && !input.is_dir()
        {
            return Err(invalid(
                file,
                format!("input {} is not a directory", input.display()),
            ));
        }
        if let Some(output) = &self.output
            && std::fs::read_dir(output).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(invalid(
                file,
                format!(
                    "output {} exists and is not empty: the pipeline does not overwrite files; remove it or choose another output",
                    output.display()
                ),
            ));
        }
        if let Some(output) = &self.output
            && output.symlink_metadata().is_ok_and(|m| !m.is_dir())
        {
            return Err(invalid(
                file,
                format!(
                    "output {} exists and is not a directory: choose another output",
                    output.display()
                ),
            ));
        }
        if self.output.is_some() && self.steps.last().is_some_and(|s| s.output.is_none()) {
            return Err(invalid(
                file,
                "the pipeline has an output but its last step has none: give the last step `output`",
            ));
        }
        Ok(())
    }
}

/// What happens to the steps, for the surface to show.
#[derive(Debug)]
pub enum StepEvent<'a> {
    Started {
        index: usize,
        step: &'a Step,
    },
    Finished {
        index: usize,
        step: &'a Step,
        code: i32,
        took: Duration,
    },
}

impl Engine {
    /// Runs the steps in order, streaming each command's output to `sink`; returns the exit
    /// code of the first step that failed, or 0. `base` gives what every step shares (backend,
    /// profile, network); each step sets the image and the command.
    pub fn run_pipeline(
        &self,
        pipeline: &Pipeline,
        base: &SpecRequest,
        on_step: &mut dyn FnMut(StepEvent<'_>),
        sink: &mut Sink<'_>,
    ) -> Result<i32> {
        let stage = Stage::make(self.home())?;
        let mut carried: Option<PathBuf> = pipeline.input.clone();
        let last = pipeline.steps.len() - 1;
        for (index, step) in pipeline.steps.iter().enumerate() {
            on_step(StepEvent::Started { index, step });
            let began = Instant::now();
            // The last step's output goes straight to the pipeline's output, if it has one.
            let received = match &pipeline.output {
                Some(host) if index == last => {
                    // Empty (checked at load): removed so the copy makes it with the files.
                    let _ = std::fs::remove_dir(host);
                    host.clone()
                }
                _ => stage.path().join(format!("{index}")),
            };
            let code = self.run_step(step, base, carried.as_deref(), &received, sink)?;
            on_step(StepEvent::Finished {
                index,
                step,
                code,
                took: began.elapsed(),
            });
            if code != 0 {
                return Ok(code);
            }
            carried = step.output.as_ref().map(|_| received);
        }
        Ok(0)
    }

    /// One step: a sandbox made and started, the input copied in, the command run, the output
    /// copied out to `received`; the sandbox is removed however it ends.
    fn run_step(
        &self,
        step: &Step,
        base: &SpecRequest,
        input: Option<&Path>,
        received: &Path,
        sink: &mut Sink<'_>,
    ) -> Result<i32> {
        let mut req = base.clone();
        req.image = Some(step.image.clone());
        req.command = step.command.argv();
        let info = self.create(&req, None, Some(Duration::from_secs(3600)))?;
        let result = (|| -> Result<i32> {
            self.start(&info.name)?;
            if let (Some(inside), Some(host)) = (&step.input, input) {
                self.copy(
                    &host.display().to_string(),
                    &format!("{}:{inside}", info.name),
                )?;
            }
            if let Some(out) = &step.output {
                // The output directory exists before the command writes into it.
                let status = self.exec(
                    &info.name,
                    &ExecRequest {
                        argv: vec!["mkdir".into(), "-p".into(), out.clone()],
                        ..Default::default()
                    },
                    &mut |_| std::ops::ControlFlow::Continue(()),
                    Controls::default(),
                )?;
                if status.code != 0 {
                    return Err(CoreError::InvalidArgument(format!(
                        "step {}: could not make its output directory {out} (mkdir exited {}): choose a writable path",
                        step.name, status.code
                    ))
                    .into());
                }
            }
            let status = self.exec(
                &info.name,
                &ExecRequest {
                    argv: step.command.argv(),
                    ..Default::default()
                },
                sink,
                Controls::default(),
            )?;
            if status.code == 0
                && let Some(out) = &step.output
            {
                self.copy(
                    &format!("{}:{out}", info.name),
                    &received.display().to_string(),
                )?;
            }
            Ok(status.code)
        })();
        let removed = self.remove(&info.name);
        let code = result?;
        removed?;
        Ok(code)
    }
}

/// The directory where outputs wait between steps, under the state directory (private, and on
/// the filesystem the sandboxes' files are on); removed with everything in it when dropped.
struct Stage(PathBuf);

impl Stage {
    fn make(home: &Path) -> Result<Stage> {
        let unique = format!(
            "pipeline-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let dir = home.join("tmp").join(unique);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::Io {
            context: format!("make the staging directory {}", dir.display()),
            source: e,
        })?;
        Ok(Stage(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
