//! Hidden roles of the binary. Some work must happen in a fresh process of its own: a
//! multithreaded server cannot fork and go on running Rust code in the child, and a detached
//! command must outlive the server that started it. Those processes are this same executable,
//! re-executed with a role name as its first argument (never shown in `--help`).

/// Runs the role named by the first argument, if it names one; returns its exit code.
// The first roles land with the HTTP server; until then the match has only its fallback.
#[allow(clippy::match_single_binding)]
pub fn dispatch() -> Option<i32> {
    let role = std::env::args_os().nth(1)?;
    match role.to_str()? {
        _ => None,
    }
}
