//! Hidden roles of the binary. Some work must happen in a fresh process of its own: a
//! multithreaded server cannot fork and go on running Rust code in the child, and a detached
//! command must outlive the server that started it. Those processes are this same executable,
//! re-executed with a role name as its first argument (never shown in `--help`).

/// Runs the role named by the first argument, if it names one; returns its exit code.
pub fn dispatch() -> Option<i32> {
    let role = std::env::args_os().nth(1)?;
    match role.to_str()? {
        agentkernel_engine::detached::SUPERVISOR_ROLE => Some(
            agentkernel_engine::detached::supervisor_main(std::env::args_os().skip(2)),
        ),
        agentkernel_engine::egress::PROXY_ROLE => Some(agentkernel_engine::egress::proxy_main(
            std::env::args_os().skip(2),
        )),
        agentkernel_native::BOOT_HELPER_ROLE => Some(agentkernel_native::boot_helper_main()),
        // Inside the containers of the docker, podman and gvisor backends.
        agentkernel_docker::init::INIT_ROLE => Some(agentkernel_docker::init::init_main()),
        agentkernel_docker::init::RUN_ROLE => Some(agentkernel_docker::init::run_main(
            std::env::args_os().skip(2),
        )),
        agentkernel_docker::init::SIGNAL_ROLE => Some(agentkernel_docker::init::signal_main(
            std::env::args_os().skip(2),
        )),
        agentkernel_docker::RM_ROLE => {
            Some(agentkernel_docker::rm_main(std::env::args_os().skip(2)))
        }
        _ => None,
    }
}
