//! `agentkernel receipt verify|replay`: parses, calls the engine's receipt module
//! (`agentkernel_engine::receipt`) and renders what it found. Exit codes: 0 valid / all
//! matched, 1 not valid / something differed, 125 could not do it.

use crate::cli::{ReceiptCommand, ReceiptReplayArgs, ReceiptVerifyArgs};
use crate::{current_dir, engine, signals};
use agentkernel_engine::backend::Controls;
use agentkernel_engine::receipt::{self, OutputDigest, Receipt, Run, Verification};
use agentkernel_engine::{EngineError, RunOptions};
use std::io::Write as _;

/// Exit code of a receipt that is not valid, or of a replay that differed.
const EXIT_MISMATCH: i32 = 1;

pub fn command(cmd: ReceiptCommand) -> Result<i32, EngineError> {
    match cmd {
        ReceiptCommand::Verify(a) => verify(a),
        ReceiptCommand::Replay(a) => replay(a),
    }
}

fn verify(args: ReceiptVerifyArgs) -> Result<i32, EngineError> {
    let engine = engine()?;
    let bytes = receipt::read(&args.file)?;
    let v = receipt::verify(&bytes, engine.home());
    if args.json {
        let mut value =
            serde_json::to_value(&v).map_err(|e| receipt::ReceiptError::Encode(e.to_string()))?;
        value["signed_by_this_installation"] = v.signed_here().into();
        println!("{value:#}");
    } else {
        print_verification(&v);
    }
    Ok(if v.valid { 0 } else { EXIT_MISMATCH })
}

fn key_note(v: &Verification) -> String {
    match (&v.key_id, &v.local_key_id) {
        (Some(k), Some(l)) if k == l => format!("signed by this installation's key {k}"),
        (Some(k), Some(l)) => format!("signed by key {k}, not this installation's key {l}"),
        (Some(k), None) => {
            format!("signed by key {k}; this installation has no receipt key yet")
        }
        (None, _) => "signer unknown".to_string(),
    }
}

fn print_verification(v: &Verification) {
    if v.valid {
        println!("valid: {}", key_note(v));
        if let Some(r) = &v.receipt {
            println!("command: {}", r.argv.join(" "));
            println!("image: {} ({})", r.image, r.image_digest);
            println!("backend: {}", r.backend);
            println!("exit code: {}", r.exit_code);
            println!("ran: {} to {}", r.started_at, r.ended_at);
        }
    } else {
        println!("not valid:");
        for p in &v.problems {
            println!("  - {p}");
        }
        if v.key_id.is_some() {
            println!("({})", key_note(v));
        }
    }
}

fn replay(args: ReceiptReplayArgs) -> Result<i32, EngineError> {
    let engine = engine()?;
    let bytes = receipt::read(&args.file)?;
    let v = receipt::verify(&bytes, engine.home());
    let recorded = match (v.valid, &v.receipt) {
        (true, Some(r)) => r.clone(),
        _ => {
            eprintln!(
                "agentkernel: not replaying {}: it is not a valid receipt:",
                args.file.display()
            );
            for p in &v.problems {
                eprintln!("  - {p}");
            }
            return Ok(EXIT_MISMATCH);
        }
    };
    if !v.signed_here() {
        eprintln!("agentkernel: note: {}", key_note(&v));
    }
    let plan = receipt::replay_plan(&recorded, &current_dir()?, &|k| std::env::var(k).ok())?;
    for name in &plan.missing_env {
        eprintln!(
            "agentkernel: {name} is not set here: the replay runs without it (receipts record names, never values)"
        );
    }
    eprintln!(
        "agentkernel: replaying `{}` on {} with image {}",
        recorded.argv.join(" "),
        recorded.backend,
        plan.image
    );
    let signals =
        signals::SignalPipe::register(&signals::FORWARDED, true).map_err(|e| EngineError::Io {
            context: "install signal handlers".into(),
            source: e,
        })?;
    let controls = Controls {
        signals: Some(signals.fd()),
        resized: None,
    };
    let mut output = OutputDigest::default();
    let started_at = receipt::now();
    let outcome = {
        let show = args.show_output;
        let mut sink = |event: agentkernel_core::ExecEvent| {
            output.observe(&event);
            if show
                && let agentkernel_core::ExecEvent::Stdout(d)
                | agentkernel_core::ExecEvent::Stderr(d) = &event
            {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(d).and_then(|()| e.flush());
            }
            std::ops::ControlFlow::Continue(())
        };
        engine.run(
            &plan.request,
            &RunOptions::default(),
            &plan.exec,
            &mut sink,
            controls,
        )?
    };
    let replayed = Receipt::of_run(Run {
        request: &plan.request,
        exec: &plan.exec,
        outcome: &outcome,
        started_at,
        ended_at: receipt::now(),
        output,
    })?;
    let comparisons = receipt::compare(&recorded, &replayed);
    for c in &comparisons {
        match (c.matched, c.field) {
            (true, "exit code") => println!("{}: matched ({})", c.field, c.recorded),
            (true, _) => println!("{}: matched", c.field),
            (false, _) => println!(
                "{}: differs (recorded {}, replay {})",
                c.field, c.recorded, c.replayed
            ),
        }
    }
    Ok(if comparisons.iter().all(|c| c.matched) {
        0
    } else {
        EXIT_MISMATCH
    })
}
