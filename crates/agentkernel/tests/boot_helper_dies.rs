//! A boot helper that dies without answering (here a script that reads the request, complains
//! and exits) gives an error carrying what it said, and leaves nothing behind.
//! (`use_boot_helper` holds for the whole process, hence a file of its own.)

mod common;
use agentkernel_core::ExecRequest;
use agentkernel_engine::backend::Controls;
use agentkernel_engine::{Engine, RunOptions, SpecRequest};
use common::*;
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_helper_that_dies_fails_the_run_cleanly() {
    let ak = Ak::new();
    let script = ak.cwd.path().join("dying-helper");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho 'helper fell over' >&2\nexit 3\n",
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    install_backends();
    agentkernel_native::use_boot_helper(script.clone());
    let engine = Engine::open(ak.home.path()).expect("open engine");
    let mut sink = |_| ControlFlow::Continue(());
    let err = engine
        .run(
            &SpecRequest {
                image: Some("host".into()),
                no_network: true,
                cwd: ak.cwd.path().to_path_buf(),
                ..Default::default()
            },
            &RunOptions {
                name: Some("bhd-run".into()),
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
        .expect_err("a dying boot helper must fail the run");
    let msg = err.to_string();
    assert!(
        msg.contains("boot helper failed") && msg.contains("helper fell over"),
        "unclear error: {msg}"
    );
    assert_eq!(
        cgroups_matching("bhd-run"),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        mounts_mentioning(&ak.home.path().display().to_string()),
        Vec::<String>::new()
    );
    let me = std::process::id().to_string();
    let children: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')')
                .is_some_and(|i| stat[i + 2..].split(' ').nth(1) == Some(me.as_str()))
        })
        .collect();
    assert_eq!(children, Vec::<String>::new(), "processes left behind");
}
