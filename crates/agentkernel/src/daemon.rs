//! `agentkernel daemon start|stop|status|prewarm`, and `run` through the daemon.
//!
//! The daemon is `serve` on a Unix socket (`~/.agentkernel/daemon.sock`, mode 0600: only its
//! user) with warm pools: it trusts its callers' `cwd`, config and environment, which is why it
//! listens nowhere else. Without it every command works the same, only colder.

use crate::cli::{DaemonCommand, DaemonStartArgs, DaemonStatusArgs, PrewarmArgs};
use crate::daemon_client::{ClientError, DaemonClient, log_path, pid_path, socket_path};
use agentkernel_engine::pool::{PoolSettings, WarmPool};
use agentkernel_engine::{EngineError, SpecRequest, resolve};
use agentkernel_server::{AppState, DaemonInfo, Limits};
use hyper::Method;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `daemon start --background` waits for the daemon to answer.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long `daemon stop` waits after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(20);

pub fn command(cmd: DaemonCommand) -> Result<i32, EngineError> {
    let home = agentkernel_core::paths::agentkernel_home();
    match cmd {
        DaemonCommand::Start(args) if args.background => start_background(&home, &args),
        DaemonCommand::Start(args) => run_daemon(&home, &args),
        DaemonCommand::Stop => stop(&home),
        DaemonCommand::Status(args) => status(&home, &args),
        DaemonCommand::Prewarm(args) => prewarm(&home, &args),
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io { context, source }
}

fn input(message: String) -> EngineError {
    EngineError::Input(agentkernel_core::CoreError::Unsupported(message))
}

/// The running daemon's identity, if one answers on the socket.
fn running(home: &Path) -> Result<Option<(DaemonClient, serde_json::Value)>, EngineError> {
    if !socket_path(home).exists() {
        return Ok(None);
    }
    let client = DaemonClient::new(home).map_err(|e| input(e.to_string()))?;
    match client.call(Method::GET, "/daemon/status", None) {
        Ok(status) => Ok(Some((client, status))),
        Err(ClientError::Unavailable(_)) => Ok(None),
        Err(e) => Err(input(format!(
            "something answers on {} but not as the daemon: {e}",
            socket_path(home).display()
        ))),
    }
}

/// Serves in the foreground until SIGTERM or SIGINT.
fn run_daemon(home: &Path, args: &DaemonStartArgs) -> Result<i32, EngineError> {
    if let Some((_, status)) = running(home)? {
        return Err(input(format!(
            "the daemon is already running (pid {}): stop it with `agentkernel daemon stop`",
            status["pid"]
        )));
    }
    let cwd = crate::current_dir()?;
    let base = SpecRequest {
        cwd: cwd.clone(),
        config: args.config.clone(),
        caller: resolve::Caller::Local,
        ..Default::default()
    };
    let config = resolve::operator_config(home, args.config.as_deref())?;
    crate::serve::warn_ignored_project_settings(&cwd);
    std::fs::create_dir_all(home).map_err(io(format!("create {}", home.display())))?;
    let socket = socket_path(home);
    // Nothing answers on it (checked above): a previous daemon died without cleaning up.
    let _ = std::fs::remove_file(&socket);
    // Before the pool's threads: it declares that sandboxes are booted through the helper.
    let runtime = crate::serve::runtime()?;
    let settings = PoolSettings::from_config(&config);
    let pool = Arc::new(WarmPool::start(home, settings)?);
    let info = DaemonInfo {
        pid: std::process::id(),
        socket: socket.clone(),
        log: log_path(home),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut state = AppState::new(
        home.to_path_buf(),
        agentkernel_server::ApiKeys::new(Vec::new()),
        Limits {
            // `run` has no timeout unless asked for one; neither does the daemon.
            request_timeout: agentkernel_server::MAX_TIMEOUT,
            ..Limits::default()
        },
        cwd.clone(),
    );
    state.trust_client_paths = true;
    // No browser can connect to a Unix socket (and this one is the user's alone): the `Host`
    // and `Origin` checks are for TCP. The daemon's client names itself `Host: agentkernel`.
    state.hosts = None;
    state.pool = Some(pool.clone());
    state.daemon = Some(info);
    let served = runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(io(format!("listen on {}", socket.display())))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restrict {}", socket.display())))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(pid_path(home))
            .and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io("write the pid file"))?;
        eprintln!(
            "agentkernel: daemon {} serving on {} (warm pools: min {} per pool, max {} in all)",
            std::process::id(),
            socket.display(),
            settings.min_warm,
            settings.max_warm
        );
        // Resolving a pool's image may pull it: off the async threads, and without holding
        // up the socket.
        let (pool, config, base) = (pool.clone(), config.clone(), base.clone());
        std::thread::spawn(move || prewarm_configured(&pool, &config, &base));
        agentkernel_server::serve_unix(
            listener,
            agentkernel_server::router(state),
            crate::serve::shutdown_signal(),
        )
        .await
        .map_err(io("serve the daemon socket"))
    });
    eprintln!("agentkernel: daemon stopping: destroying warm sandboxes");
    pool.shutdown();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(pid_path(home));
    served?;
    Ok(0)
}

/// The pools the config asks for: the default one (as `run` in the daemon's directory would
/// resolve it) and one per `[daemon.agents.NAME]`. A pool that cannot be made is reported and
/// skipped; the daemon serves regardless.
fn prewarm_configured(
    pool: &WarmPool,
    config: &agentkernel_core::config::Config,
    base: &SpecRequest,
) {
    let mut wanted = vec![("default".to_string(), base.clone(), None)];
    for mode in config.daemon.agents.iter().flat_map(|a| a.keys()) {
        match agentkernel_engine::pool::mode_request(config, mode, base.clone()) {
            Ok((req, count)) => wanted.push((mode.clone(), req, count)),
            Err(e) => eprintln!("agentkernel: pool for {mode}: {e}"),
        }
    }
    for (name, req, count) in wanted {
        match pool.prewarm(&req, count) {
            Ok(p) => eprintln!(
                "agentkernel: pool {name}: {} {} ({}), keeping {} warm",
                p.backend, p.image, p.profile, p.target
            ),
            Err(e) => eprintln!("agentkernel: pool {name}: not prewarmed: {e}"),
        }
    }
}

fn start_background(home: &Path, args: &DaemonStartArgs) -> Result<i32, EngineError> {
    if let Some((_, status)) = running(home)? {
        return Err(input(format!(
            "the daemon is already running (pid {}): stop it with `agentkernel daemon stop`",
            status["pid"]
        )));
    }
    std::fs::create_dir_all(home).map_err(io(format!("create {}", home.display())))?;
    let log = log_path(home);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(io(format!("open {}", log.display())))?;
    let log_err = log_file.try_clone().map_err(io("duplicate the log"))?;
    let exe = std::env::current_exe().map_err(io("find the agentkernel executable"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["daemon", "start"]);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(absolute(c)?);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    // Its own session: the terminal's Ctrl-C and hangup do not reach it.
    // SAFETY: setsid is async-signal-safe; the CLI is single-threaded besides.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("start the daemon"))?;
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Some((_, status)) = running(home)? {
            println!(
                "agentkernel: daemon started (pid {}) on {}; log: {}",
                status["pid"],
                socket_path(home).display(),
                log.display()
            );
            return Ok(0);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(input(format!(
                "the daemon exited at start ({exit}): see {}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(input(format!(
                "the daemon did not answer within {} s: see {}",
                START_WAIT.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn absolute(p: &Path) -> Result<PathBuf, EngineError> {
    std::path::absolute(p).map_err(io(format!("resolve {}", p.display())))
}

fn stop(home: &Path) -> Result<i32, EngineError> {
    let pid = match running(home)? {
        Some((_, status)) => status["pid"]
            .as_u64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| input(format!("the daemon reported no pid: {status}")))?,
        // A daemon too busy to answer is still a daemon: its pid file says so.
        None => match daemon_from_pid_file(home) {
            Some(pid) => pid,
            None => {
                let _ = std::fs::remove_file(socket_path(home));
                let _ = std::fs::remove_file(pid_path(home));
                println!("agentkernel: the daemon is not running");
                return Ok(0);
            }
        },
    };
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| input(format!("the daemon reported pid {pid}")))?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_WAIT;
    while process_alive(pid) {
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            eprintln!(
                "agentkernel: the daemon did not stop within {} s: killed",
                STOP_WAIT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("agentkernel: daemon stopped");
    Ok(0)
}

/// The pid in the daemon's pid file, if that process is alive and is an agentkernel daemon
/// (not a recycled pid).
fn daemon_from_pid_file(home: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(home))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_daemon = args
        .windows(2)
        .any(|w| w == [b"daemon".as_slice(), b"start".as_slice()]);
    (is_daemon && process_alive(rustix::process::Pid::from_raw(pid)?)).then_some(pid)
}

/// Whether the process exists and is not a zombie (the daemon is not our child: once it has
/// exited, init reaps it, but not necessarily at once).
fn process_alive(pid: rustix::process::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn status(home: &Path, args: &DaemonStatusArgs) -> Result<i32, EngineError> {
    let Some((_, status)) = running(home)? else {
        if args.json {
            println!("{}", serde_json::json!({"running": false}));
        } else {
            println!("Daemon: not running (start it with `agentkernel daemon start`)");
        }
        return Ok(1);
    };
    if args.json {
        let mut status = status;
        status["running"] = true.into();
        println!("{status:#}");
        return Ok(0);
    }
    let pool = &status["pool"];
    println!(
        "Daemon: running (pid {}, since {})",
        status["pid"],
        status["started_at"].as_str().unwrap_or("?")
    );
    println!("Socket: {}", status["socket"].as_str().unwrap_or("?"));
    println!(
        "Pool: Warm: {}, In use: {}, Min/Max: {}/{}",
        pool["warm"], pool["in_use"], pool["min_warm"], pool["max_warm"]
    );
    for p in pool["pools"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {} {} {}{}: warm {}/{}, booting {}, in use {}, runs {} warm / {} cold{}",
            p["backend"].as_str().unwrap_or("?"),
            p["image"].as_str().unwrap_or("?"),
            p["profile"].as_str().unwrap_or("?"),
            if p["network"] == false {
                " no-network"
            } else {
                ""
            },
            p["warm"],
            p["target"],
            p["booting"],
            p["in_use"],
            p["runs_warm"],
            p["runs_cold"],
            if p["prewarmed"] == true {
                ", prewarmed"
            } else {
                ""
            },
        );
        if let Some(e) = p["last_error"].as_str() {
            line.push_str(&format!("\n    last boot failed: {e}"));
        }
        println!("{line}");
    }
    Ok(0)
}

fn prewarm(home: &Path, args: &PrewarmArgs) -> Result<i32, EngineError> {
    let Some((client, _)) = running(home)? else {
        return Err(input(
            "the daemon is not running: start it with `agentkernel daemon start --background`"
                .into(),
        ));
    };
    let cwd = crate::current_dir()?;
    let config = args.config.as_deref().map(absolute).transpose()?;
    let body = serde_json::json!({
        "mode": args.mode,
        "image": args.image,
        "profile": args.profile,
        "backend": args.backend,
        "no_network": args.no_network,
        "count": args.count,
        "cwd": cwd,
        "config": config,
    });
    let p = client
        .call(Method::POST, "/daemon/prewarm", Some(&body))
        .map_err(|e| input(e.to_string()))?;
    println!(
        "agentkernel: keeping {} warm: {} {} ({}{})",
        p["target"],
        p["backend"].as_str().unwrap_or("?"),
        p["image"].as_str().unwrap_or("?"),
        p["profile"].as_str().unwrap_or("?"),
        if p["network"] == false {
            ", no network"
        } else {
            ""
        },
    );
    Ok(0)
}

/// Runs `run`'s command through the daemon when one answers; `None` when there is none (the
/// caller then runs it itself). The daemon resolves the request against this process's
/// directory, config file and environment, so the result is the same either way.
pub fn try_run(
    req: &SpecRequest,
    argv: &[String],
    timeout: Option<Duration>,
) -> Result<Option<i32>, EngineError> {
    if std::env::var_os("AGENTKERNEL_NO_DAEMON").is_some_and(|v| v != "0") {
        return Ok(None);
    }
    // Secret files are written from this user's vault by the process that starts the
    // sandbox: such a run is done here.
    if !req.secret_files.is_empty() || req.placeholder_secrets {
        return Ok(None);
    }
    // Volumes are resolved against this process's directory and checked as this user's: a
    // run with them is done here too, never in a warm sandbox of the pool.
    if !req.volumes.is_empty() {
        return Ok(None);
    }
    let home = agentkernel_core::paths::agentkernel_home();
    if !socket_path(&home).exists() {
        return Ok(None);
    }
    let client = DaemonClient::new(&home).map_err(|e| input(e.to_string()))?;
    // The variables the daemon may pass into the sandbox on this CLI's behalf: what a profile
    // passes through, and those `-e NAME` names.
    let host_env: std::collections::BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            agentkernel_core::hostenv::passes_through(k)
                || agentkernel_core::policy::PASSTHROUGH_ENV.contains(&k.as_str())
                || req.env.iter().any(|named| named == k)
        })
        .collect();
    let config = req.config.as_deref().map(absolute).transpose()?;
    let body = serde_json::json!({
        "command": argv,
        "image": req.image,
        "profile": req.profile,
        "backend": req.backend,
        "no_network": req.no_network,
        "compatibility_mode": req.compat,
        "allow_hosts": req.allow_hosts,
        "deny_hosts": req.deny_hosts,
        "secrets": req.secrets,
        "env": req.env,
        "workdir": req.workdir,
        "memory_mb": req.memory_mb,
        "disk_mb": req.disk_mb,
        "vcpus": req.vcpus,
        "timeout_ms": timeout.map(|t| t.as_millis() as u64),
        "cwd": req.cwd,
        "config": config,
        "host_env": host_env,
        "output_encoding": "base64",
    });
    let mut outcome: Option<Result<i32, String>> = None;
    let streamed = client.stream("/run/stream", &body, |event, data| {
        let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        match event {
            "output" => write_output(&value),
            "done" => {
                if value["oom_killed"] == true {
                    eprintln!(
                        "agentkernel: the command was killed: out of memory (sandbox limit reached)"
                    );
                }
                outcome = Some(Ok(value["exit_code"]
                    .as_i64()
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(agentkernel_core::exec::EXIT_AGENTKERNEL_ERROR)));
            }
            "error" => {
                let message = value["message"].as_str().unwrap_or(data).to_string();
                outcome = Some(match value["exit_code"].as_i64() {
                    // A timeout: the command ran and was killed.
                    Some(code) => {
                        eprintln!("agentkernel: the command timed out and was killed");
                        Ok(i32::try_from(code).unwrap_or(124))
                    }
                    None => Err(message),
                });
            }
            _ => {}
        }
    });
    match streamed {
        // A stale socket: no daemon after all.
        Err(ClientError::Unavailable(_)) => Ok(None),
        Err(e) => Err(input(e.to_string())),
        Ok(()) => match outcome {
            Some(Ok(code)) => Ok(Some(code)),
            Some(Err(message)) => Err(input(message)),
            None => Err(input(
                "the daemon ended the stream without a result: see `agentkernel daemon status`"
                    .into(),
            )),
        },
    }
}

fn write_output(value: &serde_json::Value) {
    use base64::Engine as _;
    let Some(data) = value["data"].as_str() else {
        return;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return;
    };
    if value["stream"] == "stderr" {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&bytes);
        let _ = err.flush();
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&bytes);
        let _ = out.flush();
    }
}
