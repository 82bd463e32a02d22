//! `agentkernel serve`: the HTTP API on TCP.

use crate::cli::ServeArgs;
use agentkernel_engine::EngineError;
use agentkernel_server::{AllowedHosts, ApiKeys, AppState, Limits};
use std::net::{IpAddr, SocketAddr};

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 18888;
/// Largest `--max-body-mb`: a request body is held in memory whole, and parsed.
const MAX_BODY_MB: u64 = 1024;
/// Largest `--max-output-mb`: a terabyte; beyond, the host's memory is the limit anyway.
const MAX_OUTPUT_MB: u64 = 1024 * 1024;

/// `[server]` and `[daemon]` in `./agentkernel.toml` are not read (a cloned repository must not
/// choose where the server listens or which keys it takes): say so rather than ignore them
/// silently.
pub fn warn_ignored_project_settings(cwd: &std::path::Path) {
    let path = cwd.join(agentkernel_core::config::PROJECT_CONFIG);
    let Ok(project) = agentkernel_core::config::Config::load(&path) else {
        return;
    };
    if project.server != Default::default() || project.daemon != Default::default() {
        eprintln!(
            "agentkernel: note: [server] and [daemon] in {} are not used: a project's config cannot set them; put them in ~/.agentkernel/config.toml or pass --config",
            path.display()
        );
    }
}

pub fn serve(args: ServeArgs) -> Result<i32, EngineError> {
    let cwd = crate::current_dir()?;
    let home = agentkernel_core::paths::agentkernel_home();
    let explicit = args.config.as_ref().map(|c| cwd.join(c));
    let config = agentkernel_engine::resolve::operator_config(&home, explicit.as_deref())?;
    warn_ignored_project_settings(&cwd);
    let host_given = args.host.clone().or(config.server.host.clone());
    let also_ipv6_loopback = host_given.is_none();
    let host = host_given.unwrap_or_else(|| DEFAULT_HOST.to_string());
    let port = args.port.or(config.server.port).unwrap_or(DEFAULT_PORT);
    let ip: IpAddr = host.parse().map_err(|_| {
        input(format!(
            "--host {host:?} is not an IP address: use e.g. 127.0.0.1 or 0.0.0.0"
        ))
    })?;
    let keys = ApiKeys::new(collect_keys(&args, config.server.api_keys.as_deref())?);
    if keys.is_empty() && !ip.is_loopback() && !args.insecure_no_auth {
        return Err(input(format!(
            "refusing to serve on {host} without an API key: anyone who can reach it could run commands. Give --api-key/--api-key-file (or AGENTKERNEL_API_KEY), bind 127.0.0.1, or pass --insecure-no-auth"
        )));
    }
    let limits = limits(&args)?;
    let hosts = AllowedHosts::new(
        args.allowed_host
            .iter()
            .chain(config.server.allowed_hosts.iter().flatten())
            .cloned(),
    )
    .map_err(|e| input(e.to_string()))?;
    let runtime = runtime()?;
    let mut state = AppState::new(home.clone(), keys.clone(), limits, cwd);
    state.hosts = Some(hosts);
    let pool = if args.no_pool {
        None
    } else {
        let settings = agentkernel_engine::pool::PoolSettings::from_config(&config);
        Some(std::sync::Arc::new(
            agentkernel_engine::pool::WarmPool::start(&home, settings)?,
        ))
    };
    state.pool = pool.clone();
    let mcp_sessions = state.shutdown.clone();
    let served = runtime.block_on(async move {
        let addr = SocketAddr::new(ip, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| EngineError::Io {
                context: format!(
                    "listen on {addr} (is another server using the port? pick one with --port)"
                ),
                source: e,
            })?;
        let local = listener.local_addr().map_err(|e| EngineError::Io {
            context: "read the listening address".into(),
            source: e,
        })?;
        let auth = if keys.is_empty() {
            "no authentication".to_string()
        } else {
            format!("{} API key(s)", keys.len())
        };
        // `localhost` is ::1 first on many hosts (and to Node's resolver, which the npm SDK's
        // default base URL goes through): by default, listen there too when the host has it.
        let ipv6 = if also_ipv6_loopback {
            let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), local.port());
            tokio::net::TcpListener::bind(v6).await.ok()
        } else {
            None
        };
        let also = if ipv6.is_some() {
            format!(" and http://[::1]:{}", local.port())
        } else {
            String::new()
        };
        eprintln!("agentkernel: serving the HTTP API on http://{local}{also} ({auth})");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            // Open MCP event streams end with the server rather than hold its shutdown.
            mcp_sessions.cancel();
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let app = agentkernel_server::router(state);
        let v4 = agentkernel_server::serve_tcp(listener, app.clone(), stopped(stop_rx.clone()));
        let served = match ipv6 {
            Some(l6) => {
                let (a, b) =
                    tokio::join!(v4, agentkernel_server::serve_tcp(l6, app, stopped(stop_rx)));
                a.and(b)
            }
            None => v4.await,
        };
        served.map_err(|e| EngineError::Io {
            context: "serve HTTP".into(),
            source: e,
        })
    });
    if let Some(pool) = pool {
        pool.shutdown();
    }
    served?;
    Ok(0)
}

/// Keys from `--api-key`, `--api-key-file` (one per line, `#` comments), `AGENTKERNEL_API_KEY`
/// and `[server] api_keys`; all are valid at once.
fn collect_keys(
    args: &ServeArgs,
    from_config: Option<&[String]>,
) -> Result<Vec<String>, EngineError> {
    let mut keys = args.api_key.clone();
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file).map_err(|e| EngineError::Io {
            context: format!("read --api-key-file {}", file.display()),
            source: e,
        })?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if let Ok(k) = std::env::var("AGENTKERNEL_API_KEY")
        && !k.trim().is_empty()
    {
        keys.push(k);
    }
    keys.extend(from_config.unwrap_or_default().iter().cloned());
    Ok(keys)
}

fn limits(args: &ServeArgs) -> Result<Limits, EngineError> {
    let mut limits = Limits::default();
    if let Some(t) = &args.timeout {
        limits.request_timeout =
            agentkernel_core::duration::parse_duration_at_most(t, agentkernel_server::MAX_TIMEOUT)
                .map_err(|e| input(format!("--timeout: {e}")))?;
        if limits.request_timeout.is_zero() {
            return Err(input("--timeout must be more than 0".into()));
        }
    }
    if let Some(n) = args.max_concurrent {
        if n == 0 {
            return Err(input("--max-concurrent must be at least 1".into()));
        }
        limits.max_concurrent = n;
    }
    if let Some(mb) = args.max_body_mb {
        if !(1..=MAX_BODY_MB).contains(&mb) {
            return Err(input(format!(
                "--max-body-mb must be 1 to {MAX_BODY_MB}: files larger than that are better copied in pieces"
            )));
        }
        limits.body_bytes = usize::try_from(mb * 1024 * 1024)
            .map_err(|_| input(format!("--max-body-mb {mb} does not fit this host")))?;
    }
    if let Some(mb) = args.max_output_mb {
        if !(1..=MAX_OUTPUT_MB).contains(&mb) {
            return Err(input(format!(
                "--max-output-mb must be 1 to {MAX_OUTPUT_MB}"
            )));
        }
        limits.output_budget_bytes = usize::try_from(mb * 1024 * 1024)
            .map_err(|_| input(format!("--max-output-mb {mb} does not fit this host")))?;
    }
    Ok(limits)
}

/// The multithreaded runtime of `serve`, `daemon` and `mcp server`: the one place this binary
/// becomes multithreaded, and so the one place it declares that sandbox inits are cloned by
/// the boot helper (this same executable; `/proc/self/exe` is the running binary even if the
/// file was replaced since) from now on. Call it before anything that boots a sandbox (warm
/// pools start booting at once); a boot without the helper in a multithreaded process is
/// refused (`BootError::Multithreaded`).
pub fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    agentkernel_native::use_boot_helper(std::path::PathBuf::from("/proc/self/exe"));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::Io {
            context: "start the server's runtime".into(),
            source: e,
        })
}

/// Resolves on SIGINT or SIGTERM: the server stops taking requests and finishes those running.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn input(message: String) -> EngineError {
    agentkernel_core::CoreError::Unsupported(message).into()
}
