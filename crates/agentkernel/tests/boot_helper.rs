//! Booting through the boot helper, as the multithreaded HTTP server does: this test process
//! (many threads) calls the engine directly after `use_boot_helper`, so every sandbox init is
//! cloned by a fresh `agentkernel __boot-helper` process.
//!
//! `use_boot_helper` holds for the whole process: the tests of this file all use the real
//! agentkernel binary (failing helpers are in `boot_helper_failures.rs`).

mod common;
use agentkernel_core::{ExecEvent, ExecRequest};
use agentkernel_engine::backend::Controls;
use agentkernel_engine::{Engine, RunOptions, SpecRequest};
use common::*;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn use_helper() {
    install_backends();
    agentkernel_native::use_boot_helper(bin().into());
}

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

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn no_controls() -> Controls<'static> {
    Controls {
        signals: None,
        resized: None,
    }
}

/// Processes whose parent is this test process (zombies included), with their state.
fn own_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 2..].split(' ');
        let state = fields.next().unwrap_or("?").to_string();
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            found.push((pid, state));
        }
    }
    found
}

/// Whether the init of the sandbox that command `pid` runs in (the PID 1 of its pid
/// namespace) is a child of this process.
fn init_is_own_child(pid: u32) -> bool {
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let Some(sandbox_ns) = ns(pid) else {
        return false;
    };
    own_children()
        .iter()
        .any(|(child, _)| *child != pid && ns(*child).as_ref() == Some(&sandbox_ns))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// 4 threads each run 5 throwaway sandboxes at once while 2 more threads churn the allocator:
/// every command gives its own output, uid and exit code, every init is this process's child, and afterwards this process has no child
/// left (every helper waited for, every ephemeral init reaped), no cgroup and no mount.
#[test]
fn ephemeral_runs_from_many_threads_at_once() {
    let _serial = one_at_a_time();
    let ak = Ak::new();
    use_helper();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut kept: Vec<Vec<u8>> = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    kept.push(vec![n as u8; 1 + (n * 7919) % 65536]);
                    if kept.len() > 256 {
                        kept.drain(..128);
                    }
                    n += 1;
                }
            });
        }
        let runners: Vec<_> = (0..4)
            .map(|t| {
                let ak = &ak;
                s.spawn(move || {
                    let engine = Engine::open(ak.home.path()).expect("open engine");
                    for i in 0..5 {
                        let name = format!("bhe-{t}-{i}");
                        // Odd threads use the restrictive profile: the command also switches to
                        // an unprivileged uid between clone and exec.
                        let (profile, uid) = if t % 2 == 1 {
                            (Some("restrictive".to_string()), 65534)
                        } else {
                            (None, 0)
                        };
                        // The sleep keeps the command alive while the sink looks at it.
                        let script = format!(
                            "echo out-{t}-{i}; hostname; id -u; echo err-{t} >&2; sleep 0.2; exit {}",
                            10 + t * 5 + i
                        );
                        let exec = request(&["sh", "-c", &script]);
                        let (mut out, mut err) = (Vec::new(), Vec::new());
                        let mut init_is_ours = None;
                        let mut sink = |e: ExecEvent| {
                            match e {
                                ExecEvent::Started { pid } => {
                                    init_is_ours = Some(init_is_own_child(pid));
                                }
                                ExecEvent::Stdout(d) => out.extend(d),
                                ExecEvent::Stderr(d) => err.extend(d),
                                _ => {}
                            }
                            ControlFlow::Continue(())
                        };
                        let outcome = engine
                            .run(
                                &SpecRequest {
                                    profile,
                                    ..host_request(ak)
                                },
                                &RunOptions {
                                    name: Some(name.clone()),
                                    ..Default::default()
                                },
                                &exec,
                                &mut sink,
                                no_controls(),
                            )
                            .unwrap_or_else(|e| panic!("run {name}: {e}"));
                        assert_eq!(outcome.status.code, 10 + t * 5 + i, "{name}");
                        assert_eq!(
                            String::from_utf8_lossy(&out),
                            format!("out-{t}-{i}\n{name}\n{uid}\n"),
                            "{name}"
                        );
                        assert_eq!(String::from_utf8_lossy(&err), format!("err-{t}\n"));
                        assert_eq!(
                            init_is_ours,
                            Some(true),
                            "{name}: the ephemeral init must be the caller's child (CLONE_PARENT)"
                        );
                    }
                })
            })
            .collect();
        let results: Vec<_> = runners.into_iter().map(|r| r.join()).collect();
        stop.store(true, Ordering::Relaxed);
        for result in results {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    });
    assert_eq!(own_children(), Vec::new(), "children left behind");
    assert_eq!(cgroups_matching("bhe-"), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        mounts_mentioning(&ak.home.path().display().to_string()),
        Vec::<String>::new()
    );
}

/// A persistent sandbox started through the helper is not this process's child (the helper
/// exited and its init went to the host's PID 1), and a later CLI process finds it, runs a
/// command in it and stops it.
#[test]
fn persistent_sandbox_started_through_the_helper_serves_later_cli_processes() {
    let _serial = one_at_a_time();
    let ak = Ak::new();
    use_helper();
    let name = "bhp-keep";
    std::thread::scope(|s| {
        s.spawn(|| {
            let engine = Engine::open(ak.home.path()).expect("open engine");
            engine
                .create(&host_request(&ak), Some(name), None)
                .expect("create");
            assert!(engine.start(name).expect("start"), "was not started");
        })
        .join()
        .expect("start thread");
    });
    let pid = ak.pid_of(name).expect("the sandbox has an init");
    assert_eq!(ak.status_of(name).as_deref(), Some("running"));
    assert_ne!(
        parent_of(pid),
        Some(std::process::id()),
        "a detached init must not be the caller's child"
    );
    assert_eq!(own_children(), Vec::new(), "children left behind");

    let out = ak.ok(&["exec", name, "--", "sh", "-c", "hostname; echo from-cli"]);
    assert_eq!(out.stdout, format!("{name}\nfrom-cli\n"));
    ak.ok(&["stop", name]);
    assert_eq!(ak.status_of(name).as_deref(), Some("stopped"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_is_dead(pid) {
        assert!(Instant::now() < deadline, "the init {pid} survived stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    ak.ok(&["remove", name]);
    assert_eq!(own_children(), Vec::new(), "children left behind");
}

/// Dropping a throwaway sandbox's handle ends the sandbox: its lifeline is an `OwnedFd` that
/// `Started` owns (it was a bare number, leaked when a handle was dropped, and closed by number
/// by whoever stopped it, twice if asked twice).
#[test]
fn a_dropped_handle_ends_its_throwaway_sandbox() {
    use agentkernel_core::policy::{NetworkMode, Policy};
    use agentkernel_core::{BackendKind, ImageRef, Profile, SandboxSpec};
    use agentkernel_engine::backend::{Persistence, Started, backend_for};
    let _serial = one_at_a_time();
    let ak = Ak::new();
    use_helper();
    let home = ak.home.path();
    let backend = backend_for(BackendKind::Native, home).expect("the native backend");
    let images = agentkernel_image::ImageStore::new(home.join("images"));
    let rootfs = backend
        .resolve_image(&ImageRef::Host, &images)
        .expect("the host image");
    let mut policy = Policy::for_profile(Profile::Moderate);
    policy.network = NetworkMode::None;
    let spec = SandboxSpec {
        name: "bh-drop".into(),
        image: ImageRef::Host,
        backend: BackendKind::Native,
        policy,
        env: Vec::new(),
        workdir: "/workspace".into(),
        labels: Default::default(),
        description: None,
        secrets: Vec::new(),
        secret_files: Vec::new(),
        placeholder_secrets: false,
        layers: Vec::new(),
        ports: Vec::new(),
        project: None,
    };
    let started = backend
        .start(&spec, &rootfs, "bh-drop-1", Persistence::Ephemeral)
        .expect("start a throwaway sandbox");
    let runtime = started.runtime.clone();
    assert!(backend.is_running(&runtime), "the sandbox must run");
    drop(started);
    // The init exits when its lifeline closes; it is this process's child (cloned with
    // CLONE_PARENT by the helper), so it is reaped here.
    let pid = rustix::process::Pid::from_raw(runtime.pid as i32).expect("a real pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reaped = loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break false,
        }
    };
    assert!(
        reaped,
        "the init of a sandbox whose handle was dropped must exit"
    );
    assert!(!backend.is_running(&runtime));
    // What the kernel does not end with the init (its cgroups) is `stop`'s (or gc's) to remove.
    backend
        .stop(Started::found(runtime))
        .expect("stop what is left");
    assert!(own_children().is_empty(), "{:?}", own_children());
}
