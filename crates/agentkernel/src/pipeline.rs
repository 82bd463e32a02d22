//! `pipeline FILE.toml`: renders the engine's pipeline runner
//! (`agentkernel_engine::pipeline`): the plan with `--dry-run`; otherwise each step's output
//! as it comes, a line when a step starts and ends (marked up on a terminal, plain lines
//! otherwise), and the exit code of the step that failed.

use agentkernel_engine::EngineError;
use agentkernel_engine::pipeline::{Pipeline, StepEvent};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// The pipeline file: [[steps]] with name, image, command and optional input/output
    pub file: PathBuf,
    /// Print the steps and how files flow between them; run nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub each: crate::parallel::EachSandbox,
}

pub fn pipeline(args: PipelineArgs) -> Result<i32, EngineError> {
    let file = crate::current_dir()?.join(&args.file);
    let pipeline = Pipeline::load(&file)?;
    if args.dry_run {
        print_plan(&args.file, &pipeline);
        return Ok(0);
    }
    let base = args.each.spec_request()?;
    let terminal = std::io::stderr().is_terminal();
    let total = pipeline.steps.len();
    let mut on_step = |event: StepEvent<'_>| match event {
        StepEvent::Started { index, step } if terminal => eprintln!(
            "\x1b[1m▶ [{}/{total}] {}\x1b[0m ({}): {}",
            index + 1,
            step.name,
            step.image,
            step.command
        ),
        StepEvent::Started { index, step } => eprintln!(
            "pipeline: step {}/{total} {} ({}): {}",
            index + 1,
            step.name,
            step.image,
            step.command
        ),
        StepEvent::Finished {
            index,
            step,
            code,
            took,
        } => {
            let (mark, verdict) = match (code, terminal) {
                (0, true) => ("\x1b[32m✓\x1b[0m ", "passed".to_string()),
                (_, true) => ("\x1b[31m✗\x1b[0m ", format!("failed with exit code {code}")),
                (0, false) => ("pipeline: ", "passed".to_string()),
                (_, false) => ("pipeline: ", format!("failed with exit code {code}")),
            };
            let rest = if code != 0 && index + 1 < total {
                format!("; {} later step(s) not run", total - index - 1)
            } else {
                String::new()
            };
            eprintln!(
                "{mark}step {}/{total} {} {verdict} in {:.1}s{rest}",
                index + 1,
                step.name,
                took.as_secs_f64()
            );
        }
    };
    let engine = crate::engine()?;
    let mut sink = crate::render::write_to_stdio;
    engine.run_pipeline(&pipeline, &base, &mut on_step, &mut sink)
}

fn print_plan(file: &std::path::Path, pipeline: &Pipeline) {
    let total = pipeline.steps.len();
    println!(
        "pipeline {}: {total} step(s), stopping at the first that fails",
        file.display()
    );
    for (i, step) in pipeline.steps.iter().enumerate() {
        println!("{}. {} (image {})", i + 1, step.name, step.image);
        println!("   run:    {}", step.command);
        if let Some(inside) = &step.input {
            let from = match (i, &pipeline.input) {
                (0, Some(host)) => host.display().to_string(),
                _ => format!("the output of step {}", i),
            };
            println!("   input:  {from} -> {inside}");
        }
        if let Some(inside) = &step.output {
            let to = match (&pipeline.output, i + 1 == total) {
                (Some(host), true) => host.display().to_string(),
                (None, true) => "nowhere (the pipeline has no output)".to_string(),
                _ => match &pipeline.steps[i + 1].input {
                    Some(next) => format!("step {}'s {next}", i + 2),
                    None => format!("nowhere (step {} has no input)", i + 2),
                },
            };
            println!("   output: {inside} -> {to}");
        }
    }
}
