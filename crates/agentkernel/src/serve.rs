//! `agentkernel serve`: the HTTP API on TCP.

use crate::cli::ServeArgs;
use agentkernel_engine::EngineError;
use agentkernel_server::{ApiKeys, AppState, Limits};
use std::net::{IpAddr, SocketAddr};

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 18888;

pub fn serve(args: ServeArgs) -> Result<i32, EngineError> {
    let cwd = crate::current_dir()?;
    let config = agentkernel_engine::resolve::load_config(&agentkernel_engine::SpecRequest {
        cwd: cwd.clone(),
        config: args.config.clone(),
        ..Default::default()
    })?;
    let host = args
        .host
        .clone()
        .or(config.server.host.clone())
        .unwrap_or_else(|| DEFAULT_HOST.to_string());
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
    let home = agentkernel_core::paths::agentkernel_home();
    // The server boots sandboxes from many threads: through the boot helper, this same
    // executable (`/proc/self/exe` is the running binary even if the file was replaced since).
    agentkernel_native::use_boot_helper(std::path::PathBuf::from("/proc/self/exe"));
    let mut state = AppState::new(home.clone(), keys.clone(), limits, cwd);
    let pool = if args.no_pool {
        None
    } else {
        let settings = agentkernel_engine::pool::PoolSettings::from_config(&config);
        Some(std::sync::Arc::new(
            agentkernel_engine::pool::WarmPool::start(&home, settings)?,
        ))
    };
    state.pool = pool.clone();
    let runtime = runtime()?;
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
        eprintln!("agentkernel: serving the HTTP API on http://{local} ({auth})");
        agentkernel_server::serve_tcp(
            listener,
            agentkernel_server::router(state),
            shutdown_signal(),
        )
        .await
        .map_err(|e| EngineError::Io {
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
        limits.request_timeout = agentkernel_core::duration::parse_duration(t)?;
    }
    if let Some(n) = args.max_concurrent {
        if n == 0 {
            return Err(input("--max-concurrent must be at least 1".into()));
        }
        limits.max_concurrent = n;
    }
    if let Some(mb) = args.max_body_mb {
        if mb == 0 {
            return Err(input("--max-body-mb must be at least 1".into()));
        }
        limits.body_bytes = (mb as usize) * 1024 * 1024;
    }
    Ok(limits)
}

pub fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
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
