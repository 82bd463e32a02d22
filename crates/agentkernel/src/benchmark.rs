//! `benchmark [--backends native,docker,…] [--runs N]`: renders the engine's measurement
//! (`agentkernel_engine::benchmark`) of `run` and `exec` on each backend as a table, or JSON.

use agentkernel_core::{BackendKind, CoreError};
use agentkernel_engine::EngineError;
use agentkernel_engine::benchmark::BackendResult;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchmarkArgs {
    /// Backends to measure, comma-separated (default: every backend this build has that can
    /// run here)
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub backends: Vec<String>,
    /// Timed runs of each operation (after one untimed run that prepares the image)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,
    /// The image every backend runs (it needs a `true` command)
    #[arg(short = 'i', long, default_value = "busybox:latest")]
    pub image: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn benchmark(args: BenchmarkArgs) -> Result<i32, EngineError> {
    if args.runs == 0 || args.runs > 1000 {
        return Err(
            CoreError::InvalidArgument(format!("--runs {}: give 1 to 1000", args.runs)).into(),
        );
    }
    let engine = crate::engine()?;
    let asked = !args.backends.is_empty();
    let kinds: Vec<BackendKind> = if asked {
        args.backends
            .iter()
            .map(|b| b.trim().parse::<BackendKind>())
            .collect::<Result<_, _>>()?
    } else {
        engine
            .backends()
            .backends
            .into_iter()
            .filter(|b| b.configured && b.usable)
            .filter_map(|b| b.backend.parse().ok())
            .collect()
    };
    let base = crate::spec_request(crate::cli::SandboxOpts {
        image: Some(args.image.clone()),
        no_network: true,
        ..Default::default()
    })?;
    let mut results = Vec::new();
    for kind in kinds {
        if !args.json {
            eprintln!("benchmark: {kind} ({} runs each)…", args.runs);
        }
        results.push(engine.benchmark(kind, &base, args.runs));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_else(|_| "[]".into())
        );
    } else {
        table(&results, &args.image);
    }
    // A backend the user named that could not be measured is a failure; one found by
    // auto-detection that failed is reported in the table.
    let failed = asked && results.iter().any(|r| r.skipped.is_some());
    Ok(if failed { 1 } else { 0 })
}

fn table(results: &[BackendResult], image: &str) {
    println!("run and exec of `true` in {image}, no network; milliseconds");
    println!(
        "{:<9} {:>10} {:>8} {:>8}   {:>11} {:>8} {:>8}",
        "BACKEND", "RUN median", "min", "p95", "EXEC median", "min", "p95"
    );
    for r in results {
        match (&r.run, &r.exec, &r.skipped) {
            (Some(run), Some(exec), _) => println!(
                "{:<9} {:>10.1} {:>8.1} {:>8.1}   {:>11.1} {:>8.1} {:>8.1}",
                r.backend,
                run.median_ms,
                run.min_ms,
                run.p95_ms,
                exec.median_ms,
                exec.min_ms,
                exec.p95_ms
            ),
            (_, _, why) => println!(
                "{:<9} not measured: {}",
                r.backend,
                why.as_deref().unwrap_or("no result")
            ),
        }
    }
}
