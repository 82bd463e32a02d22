//! `agentkernel`: the command-line surface. It parses, calls the engine and renders; the engine
//! owns validation, policy, state and audit.

mod benchmark;
mod cli;
mod completions;
mod daemon;
mod daemon_client;
mod parallel;
mod pipeline;
mod plugin;
mod receipt;
mod render;
mod replay;
mod roles;
mod secret;
mod serve;
mod signals;
mod snapshots;
mod templates;

use agentkernel_core::duration::parse_duration;
use agentkernel_core::exec::EXIT_AGENTKERNEL_ERROR;
use agentkernel_core::{ExecRequest, ExitStatus};
use agentkernel_engine::backend::Controls;
use agentkernel_engine::{Engine, EngineError, RunOptions, SpecRequest};
use cli::{AuditCommand, Cli, Command, ImagesCommand, McpCommand, SandboxCommand, SandboxOpts};
use std::io::IsTerminal;

/// The backends this binary links: the engine (and the server and MCP tools above it) reach
/// them only through the registry installed here.
pub const BACKENDS: &[agentkernel_engine::backend::Registry] = &[
    agentkernel_native::REGISTRY,
    agentkernel_docker::REGISTRY,
    agentkernel_vm::REGISTRY,
];

fn main() {
    agentkernel_engine::backend::install(BACKENDS);
    if let Some(code) = roles::dispatch() {
        std::process::exit(code);
    }
    // What a killed agentkernel process left behind goes before anything else runs: native
    // sandboxes' groups, and the throwaway sandboxes of other backends that dead owners marked.
    let _ = agentkernel_native::sweep_ended_sandboxes();
    let _ = agentkernel_engine::owners::sweep(&agentkernel_core::paths::agentkernel_home());
    let cli = match Cli::parse_from_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_AGENTKERNEL_ERROR,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentkernel: error: {e}");
            signals::exit_code_after(e.exit_code())
        }
    };
    std::process::exit(code);
}

pub(crate) fn engine() -> Result<Engine, EngineError> {
    Engine::open(&agentkernel_core::paths::agentkernel_home())
}

fn dispatch(command: Command) -> Result<i32, EngineError> {
    match command {
        Command::Run(args) => run(*args),
        Command::Create(args) | Command::Sandbox(SandboxCommand::Create(args)) => create(*args),
        Command::Start(n) | Command::Sandbox(SandboxCommand::Start(n)) => {
            if !engine()?.start(&n.name)? {
                eprintln!("agentkernel: sandbox {} is already running", n.name);
            }
            Ok(0)
        }
        Command::Stop(n) | Command::Sandbox(SandboxCommand::Stop(n)) => {
            if !engine()?.stop(&n.name)? {
                eprintln!("agentkernel: sandbox {} was not running", n.name);
            }
            Ok(0)
        }
        Command::Remove(n) | Command::Sandbox(SandboxCommand::Remove(n)) => {
            engine()?.remove(&n.name)?;
            Ok(0)
        }
        Command::List(a) | Command::Sandbox(SandboxCommand::List(a)) => {
            let mut list = engine()?.list()?;
            if let Some(project) = &a.project {
                list.retain(|s| s.project.as_deref() == Some(project.as_str()));
            }
            render::sandboxes(&list, a.json);
            Ok(0)
        }
        Command::Gc(a) | Command::Sandbox(SandboxCommand::Gc(a)) => {
            let removed = engine()?.gc(a.dry_run)?;
            let verb = if a.dry_run { "would remove" } else { "removed" };
            for r in &removed {
                println!("{verb} {r}");
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            Ok(0)
        }
        Command::Sandbox(SandboxCommand::Policy(a)) => {
            let engine = engine()?;
            let change = agentkernel_engine::egress::NetworkChange {
                allow: a.allow,
                deny: a.deny,
            };
            let info = if change.is_empty() {
                engine.get(&a.name)?
            } else {
                engine.set_network_policy(&a.name, &change)?
            };
            render::network_policy(&info, a.json);
            Ok(0)
        }
        Command::Sandbox(SandboxCommand::Fork(a)) => snapshots::fork(a),
        Command::Sandbox(SandboxCommand::Export(a)) => snapshots::export(a),
        Command::Sandbox(SandboxCommand::Clean(a)) => snapshots::clean(a),
        Command::Sandbox(SandboxCommand::ExportConfig(n)) => templates::export_config(&n.name),
        Command::Sandbox(SandboxCommand::ImportConfig(a)) => templates::import_config(a),
        Command::Template(cmd) => templates::template(cmd),
        Command::Snapshot(cmd) => snapshots::snapshot(cmd),
        Command::Session(cmd) => snapshots::session(cmd),
        Command::Serve(args) => serve::serve(args),
        Command::Plugin(cmd) => Ok(plugin::command(cmd)),
        Command::Agents(a) => Ok(plugin::agents_command(a.json)),
        Command::Secret(cmd) => secret::command(cmd),
        Command::Daemon(cmd) => daemon::command(cmd),
        Command::Receipt(cmd) => receipt::command(cmd),
        Command::Mcp(McpCommand::Server) | Command::McpServer => mcp_server(),
        Command::Exec(args) => exec(args),
        Command::Attach(args) => attach(args),
        Command::Cp(args) => {
            engine()?.copy(&args.src, &args.dst)?;
            Ok(0)
        }
        Command::Images(ImagesCommand::Pull(a)) => {
            // Ctrl-C stops the pull cleanly: the download so far is kept for the next pull,
            // a half-unpacked layer is removed.
            signals::stop_image_preparation_on(&signals::FORWARDED).map_err(|e| {
                EngineError::Io {
                    context: "install signal handlers".into(),
                    source: e,
                }
            })?;
            let digest = engine()?.pull_image(&a.image, &current_dir()?, a.quiet)?;
            if !a.quiet {
                println!("{}: {digest}", a.image);
            }
            Ok(0)
        }
        Command::Completions(a) => Ok(completions::completions(&a)),
        Command::Man(a) => Ok(completions::man(&a)),
        Command::Replay(a) => replay::replay(&a),
        Command::Benchmark(a) => benchmark::benchmark(a),
        Command::Stats(a) => {
            // CPU use is a rate: measured over a second, as `docker stats` does.
            let stats = engine()?.stats(std::time::Duration::from_secs(1))?;
            render::stats(&stats, a.json);
            Ok(0)
        }
        Command::Parallel(a) => parallel::parallel(a),
        Command::Pipeline(a) => pipeline::pipeline(a),
        Command::Doctor(a) => {
            let report = engine()?.doctor(&current_dir()?);
            render::checks(&report.checks, a.json);
            // Non-zero when the default backend cannot run sandboxes.
            Ok(if report.ready { 0 } else { 1 })
        }
        Command::Setup(_) => {
            let engine = engine()?;
            for line in engine.setup()? {
                println!("{line}");
            }
            let report = engine.doctor(&current_dir()?);
            render::checks(&report.checks, false);
            Ok(if report.ready { 0 } else { 1 })
        }
        Command::Images(ImagesCommand::Rm(a)) => {
            engine()?.remove_image(&a.image)?;
            Ok(0)
        }
        Command::Images(ImagesCommand::Prune) => {
            let pruned = engine()?.prune_images()?;
            for r in &pruned.references {
                println!("removed {r}");
            }
            println!("freed {:.1} MB", pruned.bytes_freed as f64 / 1_000_000.0);
            Ok(0)
        }
        Command::Images(ImagesCommand::List(a)) => {
            render::images(&engine()?.list_images(a.all), a.json);
            Ok(0)
        }
        Command::Audit(AuditCommand::Path) => {
            println!("{}", engine()?.audit().path().display());
            Ok(0)
        }
        Command::Audit(AuditCommand::List(a)) => {
            let engine = engine()?;
            let entries = engine
                .audit()
                .entries(a.sandbox.as_deref(), a.last)
                .map_err(|e| EngineError::Io {
                    context: format!("read {}", engine.audit().path().display()),
                    source: e,
                })?;
            render::audit(&entries, a.json);
            Ok(0)
        }
    }
}

/// `agentkernel mcp server`: the MCP tools over stdio. The client is the local user who
/// started this process, so `cwd` from it is honoured.
fn mcp_server() -> Result<i32, EngineError> {
    let options =
        agentkernel_mcp::Options::new(agentkernel_core::paths::agentkernel_home(), current_dir()?);
    // Tools run on a multithreaded runtime and boot sandboxes from its blocking threads,
    // through the boot helper (`serve::runtime`).
    let runtime = serve::runtime()?;
    runtime
        .block_on(agentkernel_mcp::serve_stdio(options))
        .map_err(|e| EngineError::Io {
            context: "serve MCP on stdio".into(),
            source: e,
        })?;
    Ok(0)
}

pub(crate) fn current_dir() -> Result<std::path::PathBuf, EngineError> {
    std::env::current_dir().map_err(|e| EngineError::Io {
        context: "read the current directory".into(),
        source: e,
    })
}

pub(crate) fn spec_request(opts: SandboxOpts) -> Result<SpecRequest, EngineError> {
    let cwd = current_dir()?;
    Ok(SpecRequest {
        image: opts.image,
        profile: opts.profile,
        backend: opts.backend,
        config: opts.config,
        template: opts.template,
        no_network: opts.no_network,
        compat: opts.compatibility_mode,
        allow_hosts: opts.allow_host,
        deny_hosts: opts.deny_host,
        secrets: opts.secret,
        secret_files: opts.secret_file,
        placeholder_secrets: opts.placeholder_secrets,
        publish: opts.publish,
        volumes: opts.volume,
        env: opts.env,
        workdir: opts.workdir,
        memory_mb: opts.memory,
        vcpus: opts.vcpus,
        disk_mb: opts.disk,
        cwd,
        caller: agentkernel_engine::resolve::Caller::Local,
        ..Default::default()
    })
}

fn duration(text: Option<&str>) -> Result<Option<std::time::Duration>, EngineError> {
    Ok(text.map(parse_duration).transpose()?)
}

/// `KEY=VALUE`, or `KEY` alone for this process's value of KEY (left out when it has none),
/// as `docker exec -e KEY` does.
fn parse_env(list: &[String]) -> Result<Vec<(String, String)>, EngineError> {
    let mut env = Vec::new();
    for kv in list {
        if kv.contains('=') {
            env.push(agentkernel_core::spec::parse_env(kv)?);
        } else {
            agentkernel_core::spec::validate_env_var(kv, "")?;
            if let Ok(value) = std::env::var(kv) {
                env.push((kv.clone(), value));
            }
        }
    }
    Ok(env)
}

/// Stdin goes to the command when it is data (a pipe, a file or a socket), not when it is the
/// terminal (interactive use is what `attach` is for) or a device such as /dev/null, which has
/// nothing to give: the command then reads /dev/null of its own, with no relay thread.
fn forward_stdin() -> bool {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return false;
    }
    match rustix::fs::fstat(&stdin) {
        Ok(st) => !matches!(
            rustix::fs::FileType::from_raw_mode(st.st_mode),
            rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice
        ),
        Err(_) => false,
    }
}

fn run(args: cli::RunArgs) -> Result<i32, EngineError> {
    args.sandbox.refuse_unsupported()?;
    if args.command.is_empty() {
        return Err(EngineError::NoCommand);
    }
    let opts = RunOptions {
        keep: args.keep,
        ttl: duration(args.ttl.as_deref())?,
        branch: args.branch,
        name: None,
    };
    let exec = ExecRequest {
        argv: args.command,
        timeout: duration(args.timeout.as_deref())?,
        stdin: forward_stdin(),
        ..Default::default()
    };
    let mut req = spec_request(args.sandbox)?;
    req.command = exec.argv.clone();
    if args.receipt.is_some() {
        agentkernel_engine::receipt::check_recordable(&req, &opts)?;
    }
    let engine = engine()?;
    if let Some(applied) = engine.explain_config(&req)? {
        eprintln!("agentkernel: {applied}");
    }
    if args.verbose {
        let chosen = engine.explain_image(&req)?;
        eprintln!(
            "agentkernel: image {} (chosen by {})",
            chosen.image, chosen.rule
        );
    }
    // A throwaway sandbox without stdin can come from the daemon's warm pool, unless
    // --fast=false asks for a new one. The pools know no templates: a templated run is made
    // here. A run with --receipt is made here too: the receipt needs its output's hashes and
    // the spec it ran under. Nor ports: a published port is served by the process that runs
    // the sandbox, so `-P` never takes the pool (the reference asks for --fast=false; we skip
    // the pool).
    if !opts.keep
        && args.receipt.is_none()
        && !opts.branch
        && !exec.stdin
        && req.template.is_none()
        && req.publish.is_empty()
        && args.fast != Some(false)
        && let Some(code) = daemon::try_run(&req, &exec.argv, exec.timeout)?
    {
        return Ok(code);
    }
    let signals =
        signals::SignalPipe::register(&signals::FORWARDED, true).map_err(|e| EngineError::Io {
            context: "install signal handlers".into(),
            source: e,
        })?;
    let controls = Controls {
        signals: Some(signals.fd()),
        resized: None,
    };
    let mut output = agentkernel_engine::receipt::OutputDigest::default();
    let started_at = agentkernel_engine::receipt::now();
    let outcome = {
        let mut sink = |event: agentkernel_core::ExecEvent| {
            output.observe(&event);
            render::write_to_stdio(event)
        };
        engine.run(&req, &opts, &exec, &mut sink, controls)?
    };
    if let Some(path) = &args.receipt {
        let run = agentkernel_engine::receipt::Run {
            request: &req,
            exec: &exec,
            outcome: &outcome,
            started_at,
            ended_at: agentkernel_engine::receipt::now(),
            output,
        };
        agentkernel_engine::receipt::record(engine.home(), path, run)?;
    }
    if outcome.kept && args.keep {
        eprintln!(
            "agentkernel: kept sandbox {0}; remove it with `agentkernel remove {0}`",
            outcome.sandbox
        );
    }
    Ok(report_exit(&outcome.status, outcome.memory_limit_mb))
}

fn create(args: cli::CreateArgs) -> Result<i32, EngineError> {
    args.sandbox.refuse_unsupported()?;
    let ttl = duration(args.ttl.as_deref())?;
    let source = args
        .source_url
        .as_deref()
        .map(|url| agentkernel_core::source::Source::new(url, args.source_ref.as_deref()))
        .transpose()?;
    let mut req = spec_request(args.sandbox)?;
    let project = args
        .dir
        .as_deref()
        .map(|dir| use_project_dir(&mut req, dir))
        .transpose()?;
    let name = match (args.name, args.branch) {
        (Some(n), _) => Some(n),
        (None, true) => Some(agentkernel_engine::resolve::branch_name(&req.cwd)?),
        (None, false) => None,
    };
    let engine = engine()?;
    if let Some(applied) = engine.explain_config(&req)? {
        eprintln!("agentkernel: {applied}");
    }
    let info = engine.create(&req, name.as_deref(), ttl)?;
    if let Some(dir) = &project {
        // All or nothing: a sandbox whose files could not be copied is removed.
        if let Err(e) = engine.copy_project(&info.name, dir) {
            let _ = engine.remove(&info.name);
            return Err(e);
        }
    }
    if let Some(source) = &source {
        // The clone runs in the sandbox, started for it and stopped again, as `--dir` copies;
        // all or nothing: a sandbox whose clone failed is removed.
        let cloned = engine
            .start(&info.name)
            .and_then(|_| engine.clone_source(&info.name, source))
            .and_then(|()| engine.stop(&info.name).map(drop));
        if let Err(e) = cloned {
            let _ = engine.remove(&info.name);
            return Err(e);
        }
    }
    println!("{}", info.name);
    Ok(0)
}

/// `create --dir DIR`: DIR becomes the request's project (what permissive mounts at
/// /workspace, where ./agentkernel.toml and project files are looked up); paths the user gave
/// relative to where they stand (`--config`, a directory `--image`) keep meaning that.
fn use_project_dir(
    req: &mut SpecRequest,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, EngineError> {
    let project = req.cwd.join(dir).canonicalize().map_err(|e| {
        agentkernel_core::CoreError::InvalidArgument(format!(
            "--dir {}: {e}: give the path of an existing project directory",
            dir.display()
        ))
    })?;
    if !project.is_dir() {
        return Err(agentkernel_core::CoreError::InvalidArgument(format!(
            "--dir {}: not a directory: give the project's directory",
            dir.display()
        ))
        .into());
    }
    if let Some(config) = &req.config {
        req.config = Some(req.cwd.join(config));
    }
    if let Some(image) = &req.image
        && (image.starts_with("./") || image.starts_with("../") || image == ".")
    {
        req.image = Some(req.cwd.join(image).display().to_string());
    }
    if let Some(template) = &req.template
        && agentkernel_engine::template::is_file_reference(template)
    {
        req.template = Some(req.cwd.join(template).display().to_string());
    }
    // A relative volume (`./x:/x`) is the user's, taken from where they stand.
    for volume in &mut req.volumes {
        if volume.starts_with("./") || volume.starts_with("../") {
            *volume = format!("{}/{volume}", req.cwd.display());
        }
    }
    req.cwd = project.clone();
    Ok(project)
}

fn exec(args: cli::ExecArgs) -> Result<i32, EngineError> {
    if args.command.is_empty() {
        return Err(EngineError::NoCommand);
    }
    let req = ExecRequest {
        argv: args.command,
        env: parse_env(&args.env)?,
        workdir: args.workdir,
        timeout: duration(args.timeout.as_deref())?,
        stdin: !args.detach && forward_stdin(),
        tty: false,
    };
    let engine = engine()?;
    if args.detach {
        let started = engine.exec_detached(&args.name, &req)?;
        println!("{}", started.id);
        return Ok(0);
    }
    let signals =
        signals::SignalPipe::register(&signals::FORWARDED, false).map_err(|e| EngineError::Io {
            context: "install signal handlers".into(),
            source: e,
        })?;
    let mut sink = render::write_to_stdio;
    let status = engine.exec(
        &args.name,
        &req,
        &mut sink,
        Controls {
            signals: Some(signals.fd()),
            resized: None,
        },
    )?;
    // The limit is only looked up to explain an OOM kill: the common path stays one query.
    let limit = if status.oom_killed {
        engine.get(&args.name).map(|i| i.memory_mb).unwrap_or(0)
    } else {
        0
    };
    Ok(report_exit(&status, limit))
}

fn attach(args: cli::AttachArgs) -> Result<i32, EngineError> {
    let mut env = parse_env(&args.env)?;
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
        ));
    }
    let argv = if args.command.is_empty() {
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"
                .to_string(),
        ]
    } else {
        args.command
    };
    let req = ExecRequest {
        argv,
        env,
        tty: true,
        ..Default::default()
    };
    let engine = engine()?;
    let resize =
        signals::SignalPipe::register(&[libc::SIGWINCH], false).map_err(|e| EngineError::Io {
            context: "install signal handlers".into(),
            source: e,
        })?;
    let controls = Controls {
        signals: None,
        resized: Some(resize.fd()),
    };
    let status = if args.record {
        let mut rec =
            render::Recording::create(engine.home(), &args.name).map_err(|e| EngineError::Io {
                context: "create the recording".into(),
                source: e,
            })?;
        let mut write = |data: &[u8]| rec.output(data);
        let status = engine.attach(&args.name, &req, controls, Some(&mut write))?;
        eprintln!("agentkernel: recording saved to {}", rec.path().display());
        status
    } else {
        engine.attach(&args.name, &req, controls, None)?
    };
    Ok(status.code)
}

/// Explains abnormal endings on stderr and returns the exit code to use.
fn report_exit(status: &ExitStatus, memory_limit_mb: u64) -> i32 {
    if status.oom_killed {
        eprintln!("{}", oom_message(status, memory_limit_mb));
    } else if status.timed_out {
        eprintln!("agentkernel: the command timed out and was killed");
    }
    status.code
}

/// What the CLI says when the memory limit killed the command; when most of the memory was
/// files the sandbox wrote to filesystems kept in memory, it says so: a disk fill is not a
/// memory hog, and the way out differs.
pub(crate) fn oom_message(status: &ExitStatus, memory_limit_mb: u64) -> String {
    let limit = if memory_limit_mb > 0 {
        format!("sandbox limit {memory_limit_mb} MB")
    } else {
        "sandbox limit reached".to_string()
    };
    match status.files_in_memory_mb {
        Some(files) if files > 0 && files * 2 >= memory_limit_mb => format!(
            "agentkernel: the command was killed: out of memory ({limit}): {files} MB of it were files written in the sandbox, which keeps /tmp (and a run its whole root) in memory: write less there, write to a volume (-v), or raise --memory"
        ),
        _ => format!("agentkernel: the command was killed: out of memory ({limit})"),
    }
}
