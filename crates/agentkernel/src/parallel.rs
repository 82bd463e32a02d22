//! `parallel --job NAME:IMAGE:COMMAND …`: renders the engine's job runner
//! (`agentkernel_engine::parallel`). Each job's output lines are printed whole with its name in
//! front (stdout to stdout, stderr to stderr), and also kept raw in `--output-dir`
//! (`NAME.stdout`, `NAME.stderr`) when given. On a terminal a live status line per job sits
//! below the output; at the end a table gives each job's exit code and time. The exit code is
//! the worst job's.

use agentkernel_core::CoreError;
use agentkernel_engine::EngineError;
use agentkernel_engine::parallel::{self, Job, JobEvent};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ParallelArgs {
    /// A job: NAME:IMAGE:COMMAND (repeatable; the image may carry a tag, e.g.
    /// "lint:node:22-alpine:npx eslint ."; the command runs with `sh -c`)
    #[arg(long = "job", value_name = "NAME:IMAGE:COMMAND", required = true)]
    pub jobs: Vec<String>,
    /// Run at most this many jobs at once (default: the number of CPU cores)
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<usize>,
    /// Also write each job's output to DIR/NAME.stdout and DIR/NAME.stderr
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub each: EachSandbox,
}

/// One job's state as the renderer keeps it.
struct Running {
    job: Job,
    /// Output not yet ending in a newline, per stream.
    partial: [Vec<u8>; 2],
    files: Option<[std::fs::File; 2]>,
    bar: Option<indicatif::ProgressBar>,
    outcome: Option<(i32, Option<String>, Duration)>,
}

pub fn parallel(args: ParallelArgs) -> Result<i32, EngineError> {
    let jobs = args
        .jobs
        .iter()
        .map(|j| j.parse::<Job>())
        .collect::<Result<Vec<_>, _>>()?;
    parallel::check_jobs(&jobs)?;
    let max_jobs = match args.max_jobs {
        Some(0) => {
            return Err(CoreError::InvalidArgument("--max-jobs 0: give at least 1".into()).into());
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let files = match &args.output_dir {
        Some(dir) => Some(output_files(dir, &jobs)?),
        None => None,
    };
    let base = args.each.spec_request()?;
    let live = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::with_draw_target(if live {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let mut files = files.map(Vec::into_iter);
    let mut running: Vec<Running> = jobs
        .iter()
        .map(|job| Running {
            job: job.clone(),
            partial: [Vec::new(), Vec::new()],
            files: files.as_mut().and_then(Iterator::next),
            bar: live.then(|| {
                let bar = bars.add(indicatif::ProgressBar::new_spinner());
                bar.set_message(format!("{} waiting", job.name));
                bar
            }),
            outcome: None,
        })
        .collect();
    // Several threads boot sandboxes from now on: native boots go through the boot helper.
    agentkernel_native::use_boot_helper(PathBuf::from("/proc/self/exe"));
    let home = agentkernel_core::paths::agentkernel_home();
    let (events, received) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || parallel::run_jobs(&home, &base, &jobs, max_jobs, &events));
        for event in received {
            show(&bars, &mut running, event, live);
        }
    });
    bars.clear().ok();
    summary(&running);
    Ok(parallel::worst_code(
        running
            .iter()
            .map(|r| r.outcome.as_ref().map_or(125, |o| o.0)),
    ))
}

fn output_files(
    dir: &std::path::Path,
    jobs: &[Job],
) -> Result<Vec<[std::fs::File; 2]>, EngineError> {
    let io = |what: String| {
        move |e| EngineError::Io {
            context: what,
            source: e,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    jobs.iter()
        .map(|job| {
            let open = |stream: &str| {
                let path = dir.join(format!("{}.{stream}", job.name));
                std::fs::File::create(&path).map_err(io(format!("create {}", path.display())))
            };
            Ok([open("stdout")?, open("stderr")?])
        })
        .collect()
}

fn show(bars: &indicatif::MultiProgress, running: &mut [Running], event: JobEvent, live: bool) {
    match event {
        JobEvent::Started(i) => {
            let r = &running[i];
            match &r.bar {
                Some(bar) => {
                    bar.set_message(format!("{} running", r.job.name));
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                None => eprintln!("parallel: {} started ({})", r.job.name, r.job.image),
            }
        }
        JobEvent::Output {
            index,
            stderr,
            data,
        } => {
            let r = &mut running[index];
            let stream = usize::from(stderr);
            if let Some(files) = &mut r.files {
                let _ = files[stream].write_all(&data);
            }
            r.partial[stream].extend_from_slice(&data);
            let Some(end) = r.partial[stream].iter().rposition(|&b| b == b'\n') else {
                return;
            };
            let whole: Vec<u8> = r.partial[stream].drain(..=end).collect();
            print_lines(bars, &r.job.name, stderr, &whole);
        }
        JobEvent::Finished {
            index,
            code,
            error,
            took,
        } => {
            let r = &mut running[index];
            for stream in 0..2 {
                if !r.partial[stream].is_empty() {
                    let mut rest = std::mem::take(&mut r.partial[stream]);
                    rest.push(b'\n');
                    print_lines(bars, &r.job.name, stream == 1, &rest);
                }
            }
            if let Some(e) = &error {
                let line = format!("[{}] agentkernel: error: {e}\n", r.job.name);
                bars.suspend(|| eprint!("{line}"));
            }
            let mark = if code == 0 { "done" } else { "failed" };
            let text = format!(
                "{} {mark}: exit {code} in {:.1}s",
                r.job.name,
                took.as_secs_f64()
            );
            match &r.bar {
                Some(bar) => bar.finish_with_message(text),
                None if !live => eprintln!("parallel: {text}"),
                None => {}
            }
            r.outcome = Some((code, error, took));
        }
    }
}

/// Writes whole lines of one job, each with `[NAME] ` in front, to the stream they came on.
fn print_lines(bars: &indicatif::MultiProgress, name: &str, stderr: bool, lines: &[u8]) {
    let mut text = Vec::with_capacity(lines.len() + 16);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        text.extend_from_slice(format!("[{name}] ").as_bytes());
        text.extend_from_slice(line);
    }
    bars.suspend(|| {
        let _ = if stderr {
            std::io::stderr().lock().write_all(&text)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&text).and_then(|()| out.flush())
        };
    });
}

fn summary(running: &[Running]) {
    let width = running
        .iter()
        .map(|r| r.job.name.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!("{:<width$}  {:>4}  {:>8}  IMAGE", "JOB", "EXIT", "TIME");
    for r in running {
        let (code, time) = match &r.outcome {
            Some((code, _, took)) => (code.to_string(), format!("{:.1}s", took.as_secs_f64())),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<width$}  {code:>4}  {time:>8}  {}",
            r.job.name, r.job.image
        );
    }
}

/// What every sandbox of a `parallel` or `pipeline` run shares.
#[derive(Args, Debug)]
pub struct EachSandbox {
    /// Backend of every sandbox (default: as `run` chooses)
    #[arg(short = 'B', long)]
    pub backend: Option<String>,
    /// Security profile of every sandbox: permissive, moderate (default) or restrictive
    #[arg(short = 'p', long)]
    pub profile: Option<String>,
    /// Disable network access in every sandbox
    #[arg(long)]
    pub no_network: bool,
}

impl EachSandbox {
    /// The request each sandbox starts from; the runner sets its image and command.
    pub fn spec_request(self) -> Result<agentkernel_engine::SpecRequest, EngineError> {
        crate::spec_request(crate::cli::SandboxOpts {
            backend: self.backend,
            profile: self.profile,
            no_network: self.no_network,
            ..Default::default()
        })
    }
}
