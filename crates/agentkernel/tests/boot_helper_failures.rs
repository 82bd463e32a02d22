//! A boot helper that cannot be started gives a clear error and leaves nothing behind: no
//! process, no cgroup, no mount. (`use_boot_helper` holds for the whole process: every test of
//! this file uses the same missing executable.)

mod common;
use agentkernel_core::ExecRequest;
use agentkernel_engine::backend::Controls;
use agentkernel_engine::{Engine, RunOptions, SpecRequest};
use common::*;
use std::ops::ControlFlow;

const MISSING: &str = "/nonexistent/agentkernel-boot-helper";

/// The tests of this file check that this process has no child left, so they must not overlap
/// when a runner puts them in one process (`cargo test`; nextest runs each in its own).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn host_request(ak: &Ak) -> SpecRequest {
    SpecRequest {
        image: Some("host".into()),
        no_network: true,
        cwd: ak.cwd.path().to_path_buf(),
        ..Default::default()
    }
}

/// Processes whose parent is this test process.
fn own_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 2..].split(' ').nth(1).map(|p| p == me))
                    .unwrap_or(false)
            })
        })
        .collect()
}

fn assert_nothing_left(ak: &Ak, prefix: &str) {
    assert_eq!(own_children(), Vec::<u32>::new(), "processes left behind");
    assert_eq!(cgroups_matching(prefix), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        mounts_mentioning(&ak.home.path().display().to_string()),
        Vec::<String>::new()
    );
}

#[test]
fn run_with_a_missing_helper_fails_cleanly() {
    let _serial = one_at_a_time();
    let ak = Ak::new();
    install_backends();
    agentkernel_native::use_boot_helper(MISSING.into());
    let engine = Engine::open(ak.home.path()).expect("open engine");
    let mut sink = |_| ControlFlow::Continue(());
    let err = engine
        .run(
            &host_request(&ak),
            &RunOptions {
                name: Some("bhf-run".into()),
                ..Default::default()
            },
            &ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            },
            &mut sink,
            Controls {
                signals: None,
                resized: None,
            },
        )
        .expect_err("a missing boot helper must fail the run");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot start the boot helper") && msg.contains(MISSING),
        "unclear error: {msg}"
    );
    assert_nothing_left(&ak, "bhf-run");
}

#[test]
fn start_with_a_missing_helper_fails_cleanly() {
    let _serial = one_at_a_time();
    let ak = Ak::new();
    install_backends();
    agentkernel_native::use_boot_helper(MISSING.into());
    let engine = Engine::open(ak.home.path()).expect("open engine");
    engine
        .create(&host_request(&ak), Some("bhf-keep"), None)
        .expect("create");
    let msg = engine
        .start("bhf-keep")
        .expect_err("a missing boot helper must fail the start")
        .to_string();
    assert!(
        msg.contains("cannot start the boot helper") && msg.contains(MISSING),
        "unclear error: {msg}"
    );
    assert_eq!(ak.status_of("bhf-keep").as_deref(), Some("stopped"));
    assert_nothing_left(&ak, "bhf-keep");
    // The sandbox is intact: the CLI (which boots directly) starts it and runs in it.
    ak.ok(&["start", "bhf-keep"]);
    let out = ak.ok(&["exec", "bhf-keep", "--", "echo", "fine"]);
    assert_eq!(out.stdout, "fine\n");
    ak.ok(&["remove", "bhf-keep"]);
}
