//! Persistent sandboxes across separate CLI processes.

mod common;
use common::*;

#[test]
fn lifecycle_across_processes_keeps_files() {
    let ak = Ak::new();
    ak.ok(&["create", "box1", "--no-network"]);
    assert_eq!(ak.status_of("box1").as_deref(), Some("stopped"));
    let out = ak.run(&["exec", "box1", "--", "true"]);
    assert_eq!(
        out.code, 125,
        "exec into a stopped sandbox must fail: {out:?}"
    );
    assert!(out.stderr.contains("agentkernel start box1"), "{out:?}");

    ak.ok(&["start", "box1"]);
    assert_eq!(ak.status_of("box1").as_deref(), Some("running"));
    ak.ok(&[
        "exec",
        "box1",
        "--",
        "sh",
        "-c",
        "echo persisted > /workspace/note; echo etc > /etc/added",
    ]);
    let out = ak.ok(&["exec", "box1", "--", "cat", "/workspace/note"]);
    assert_eq!(out.stdout, "persisted\n");
    let out = ak.ok(&["exec", "box1", "--", "hostname"]);
    assert_eq!(out.stdout, "box1\n");

    ak.ok(&["stop", "box1"]);
    assert_eq!(ak.status_of("box1").as_deref(), Some("stopped"));
    ak.ok(&["start", "box1"]);
    let out = ak.ok(&["exec", "box1", "--", "cat", "/workspace/note", "/etc/added"]);
    assert_eq!(
        out.stdout, "persisted\netc\n",
        "files must survive stop/start"
    );

    let out = ak.ok(&["sandbox", "list"]);
    assert!(
        out.stdout.contains("box1") && out.stdout.contains("running"),
        "{out:?}"
    );
    ak.ok(&["remove", "box1"]);
    assert!(ak.list_json().is_empty());
    assert!(!ak.home.path().join("sandboxes/box1").exists());
}

#[test]
fn exec_env_workdir_and_exit_codes() {
    let ak = Ak::new();
    ak.ok(&["create", "box2", "--no-network", "-e", "FROM_CREATE=c"]);
    ak.ok(&["start", "box2"]);
    let out = ak.run(&[
        "exec",
        "-e",
        "X=1",
        "-e",
        "Y=two",
        "box2",
        "--",
        "sh",
        "-c",
        "echo $X $Y $FROM_CREATE; exit 7",
    ]);
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(out.stdout, "1 two c\n");
    let out = ak.run(&["exec", "-w", "/tmp", "box2", "--", "pwd"]);
    assert_eq!(out.stdout, "/tmp\n", "{out:?}");
    let out = ak.run(&["exec", "-w", "/does/not/exist", "box2", "--", "pwd"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("/does/not/exist"), "{out:?}");
    let out = ak.run(&["exec", "box2", "--", "nonexistent-cmd"]);
    assert_eq!(out.code, 127, "{out:?}");
    // The running view exec reads is only a shortcut: a damaged one falls back to the state
    // database, never to a wrong sandbox.
    let view = ak.home.path().join("sandboxes/box2/running.json");
    assert!(view.exists(), "start leaves a running view");
    std::fs::write(&view, "{not json").expect("write");
    let out = ak.ok(&["exec", "box2", "--", "sh", "-c", "echo $FROM_CREATE"]);
    assert_eq!(out.stdout, "c\n");
    ak.ok(&["stop", "box2"]);
    assert!(!view.exists(), "stop removes the running view");
    ak.ok(&["remove", "box2"]);
}

#[test]
fn dead_sandbox_shows_as_stopped_and_restarts() {
    let ak = Ak::new();
    ak.ok(&["create", "box3", "--no-network"]);
    ak.ok(&["start", "box3"]);
    let pid = ak.pid_of("box3").expect("running sandbox has a pid");
    // Simulate a crash of the sandbox's init.
    // SAFETY: SIGKILL to the sandbox init we just started.
    unsafe { libc_kill(pid) };
    for _ in 0..50 {
        if ak.status_of("box3").as_deref() == Some("stopped") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(ak.status_of("box3").as_deref(), Some("stopped"));
    let out = ak.run(&["exec", "box3", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    ak.ok(&["start", "box3"]);
    assert_eq!(ak.status_of("box3").as_deref(), Some("running"));
    ak.ok(&["remove", "box3"]);
}

unsafe fn libc_kill(pid: u32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    );
}

#[test]
fn nothing_left_after_remove() {
    let ak = Ak::new();
    ak.ok(&["create", "box4"]);
    ak.ok(&["start", "box4"]);
    let pid = ak.pid_of("box4").expect("pid");
    ak.ok(&["exec", "box4", "--", "sh", "-c", "sleep 300 & echo started"]);
    let home = ak.home.path().to_str().expect("utf8").to_string();
    assert!(
        !cgroups_matching("box4-").is_empty(),
        "a running sandbox has cgroups"
    );
    ak.ok(&["remove", "box4"]);
    assert!(process_is_dead(pid), "init must be gone");
    assert_nothing_left(&home, "box4-", "sleep 300");
    // Nor its lock file: the state directory holds files for sandboxes that exist, not for
    // every name ever used (a soak of 10 minutes had left 13,225).
    let lock = ak.home.path().join("locks/box4.lock");
    assert!(!lock.exists(), "{} is left", lock.display());
}

/// Both ways of running a throwaway sandbox: with network (its command joins the sandbox from
/// outside, once the egress proxy serves it) and without (the sandbox's init starts the command).
#[test]
fn nothing_left_after_run() {
    for network in [&[][..], &["--no-network"][..]] {
        let ak = Ak::new();
        let home = ak.home.path().to_str().expect("utf8").to_string();
        let mut args = vec!["run"];
        args.extend_from_slice(network);
        args.extend_from_slice(&["--", "sh", "-c", "sleep 200 & true"]);
        ak.ok(&args);
        let name = last_run_sandbox(&ak);
        assert_nothing_left(&home, &name, "sleep 200");
    }
}

/// The sandbox a throwaway run used: its name (and so its cgroups') is random, and the audit
/// entry says which it was.
fn last_run_sandbox(ak: &Ak) -> String {
    let audit = ak.ok(&["audit", "list", "--json"]).stdout;
    let entry: serde_json::Value =
        serde_json::from_str(audit.lines().last().expect("an entry")).expect("json");
    let name = entry["sandbox"].as_str().expect("sandbox name").to_string();
    assert!(name.starts_with("run-"), "{entry}");
    name
}

/// SIGTERM to `run` reaches the command (its trap runs and sets the exit code), and the
/// sandbox is gone afterwards.
#[test]
fn signals_reach_the_command_of_a_run() {
    let ak = Ak::new();
    let home = ak.home.path().to_str().expect("utf8").to_string();
    let (mut child, mut lines) = ak.spawn_lines(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1.37; done",
    ]);
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    let pid = child.id() as i32;
    // SAFETY: kill(2) on the agentkernel process this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // A signal that never arrives must fail the test, not hang it: after 30 s the run is
    // killed, its output ends without the trap's line, and the assertion below fails. Through
    // a pidfd, so a recycled pid is never hit.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd");
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(30));
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    });
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().expect("wait");
    assert_eq!(rest, ["got-term"], "the command's trap did not run");
    assert_eq!(status.code(), Some(7), "{status:?}");
    assert_nothing_left(&home, &last_run_sandbox(&ak), "sleep 1.37");
}

/// The command's exit ends a run even when a process it started in the background holds its
/// output open; a timeout ends the command and everything it started.
#[test]
fn a_run_ends_with_its_command() {
    let ak = Ak::new();
    let home = ak.home.path().to_str().expect("utf8").to_string();
    let t = std::time::Instant::now();
    let out = ak.ok(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        // Its own duration: `nothing_left_after_remove` may leave a `sleep 300` for a moment
        // while both run, and the check looks at every process of the machine.
        "sleep 299 & echo started",
    ]);
    assert_eq!(out.stdout, "started\n");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "the background sleep held the run"
    );
    assert_nothing_left(&home, &last_run_sandbox(&ak), "sleep 299");
    let out = ak.run(&[
        "run",
        "--no-network",
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "sleep 301 & exec sleep 302",
    ]);
    assert_eq!(out.code, 124, "{out:?}");
    assert_nothing_left(&home, &last_run_sandbox(&ak), "sleep 301");
}

/// No cgroup of the sandbox, no mount under the state directory, no process left.
fn assert_nothing_left(home: &str, cgroup_prefix: &str, process_args: &str) {
    let groups = cgroups_matching(cgroup_prefix);
    assert!(groups.is_empty(), "cgroups left: {groups:?}");
    let mounts = mounts_mentioning(home);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    // A process the kernel is killing can still be listed for a moment on a loaded machine
    // (the micro-VM tests keep both cores busy with TCG guests while this runs beside them;
    // 2 s was once too short there): give it ten seconds — a survivor of a 200 s sleep is
    // still caught.
    let survivors = || -> Vec<String> {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "pid=,stat=,args="])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let (pid, stat) = (fields.next()?, fields.next()?);
                let args = fields.collect::<Vec<_>>().join(" ");
                // A sandbox's process lives in the sandbox's pid namespace: one in ours with the
                // same arguments is someone else's (a shell on the host ran `sleep 300` once).
                let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
                let ours = std::fs::read_link("/proc/self/ns/pid").ok();
                (!stat.starts_with('Z') && args == process_args && theirs != ours)
                    .then(|| pid.to_string())
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !survivors().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // What a survivor is, for whoever reads the failure: its state, namespaces, groups and
    // parent (a process of another test with the same arguments would show it).
    let described: Vec<String> = survivors()
        .iter()
        .map(|pid| {
            let read =
                |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
            let status: String = read("status")
                .lines()
                .filter(|l| ["State", "PPid", "NSpid"].iter().any(|k| l.starts_with(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap_or_default();
            format!(
                "pid {pid}: {status}, pid ns {}, cgroups {:?}",
                ns.display(),
                read("cgroup")
            )
        })
        .collect();
    assert!(
        described.is_empty(),
        "a sandbox process survived: {process_args}: {described:?}"
    );
}

#[test]
fn cp_both_ways_and_symlinks_stay_inside() {
    let ak = Ak::new();
    ak.ok(&["create", "box5", "--no-network"]);
    ak.ok(&["start", "box5"]);
    let host_file = ak.cwd.path().join("in.txt");
    std::fs::write(&host_file, "from host\n").expect("write");
    ak.ok(&[
        "cp",
        host_file.to_str().expect("utf8"),
        "box5:/workspace/in.txt",
    ]);
    let out = ak.ok(&["exec", "box5", "--", "cat", "/workspace/in.txt"]);
    assert_eq!(out.stdout, "from host\n");

    ak.ok(&[
        "exec",
        "box5",
        "--",
        "sh",
        "-c",
        "mkdir -p /workspace/d/sub && echo deep > /workspace/d/sub/f",
    ]);
    let out_dir = ak.cwd.path().join("out");
    ak.ok(&["cp", "box5:/workspace/d", out_dir.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("sub/f")).expect("copied"),
        "deep\n"
    );

    // A host file the sandbox must never be able to hand out.
    let secret = ak.cwd.path().join("host-secret");
    std::fs::write(&secret, "HOST SECRET\n").expect("write");
    let secret_s = secret.to_str().expect("utf8");
    ak.ok(&["exec", "box5", "--", "sh", "-c", &format!("ln -s {secret_s} /tmp/abs; ln -s ../../../../../../..{secret_s} /tmp/rel; ln -s /proc/1/root{secret_s} /tmp/magic")]);
    for link in ["abs", "rel", "magic"] {
        let dst = ak.cwd.path().join(format!("got-{link}"));
        let out = ak.run(&[
            "cp",
            &format!("box5:/tmp/{link}"),
            dst.to_str().expect("utf8"),
        ]);
        let got = std::fs::read_to_string(&dst).unwrap_or_default();
        assert!(
            !got.contains("HOST SECRET"),
            "cp followed /tmp/{link} out of the sandbox: {out:?}"
        );
        assert_eq!(
            out.code, 125,
            "a link to a path missing inside the sandbox must fail: {out:?}"
        );
    }
    // Writing through a link must not reach the host either.
    ak.ok(&[
        "exec",
        "box5",
        "--",
        "sh",
        "-c",
        &format!("ln -s {secret_s} /tmp/wlink"),
    ]);
    let _ = ak.run(&["cp", host_file.to_str().expect("utf8"), "box5:/tmp/wlink"]);
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "HOST SECRET\n",
        "cp wrote through a symlink to the host"
    );

    let out = ak.run(&["cp", "box5:/workspace/in.txt", "nosuch:/x"]);
    assert_eq!(out.code, 125, "{out:?}");
    ak.ok(&["remove", "box5"]);
}

#[test]
fn create_takes_its_name_from_the_project_config() {
    let ak = Ak::new();
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[sandbox]\nname = \"from-config\"\n[agent]\npreferred = \"claude\"\n",
    )
    .expect("write");
    let out = ak.ok(&["create", "--no-network"]);
    assert_eq!(out.stdout, "from-config\n");
    assert_eq!(ak.status_of("from-config").as_deref(), Some("stopped"));
    ak.ok(&["remove", "from-config"]);
    std::fs::write(
        ak.cwd.path().join("agentkernel.toml"),
        "[agent]\ncompatibility_mode = \"claude\"\n",
    )
    .expect("write");
    // An agent mode from the project's own file narrows the network, but mounting the project
    // read-write is more than the user's settings give: refused, saying how to ask for it.
    let out = ak.run(&["run", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("mounted at /workspace") && out.stderr.contains("only tighten"),
        "{out:?}"
    );
    let out = ak.ok(&["run", "--compatibility-mode", "claude", "--", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// A multithreaded program that boots a sandbox in-process without the boot helper is refused
/// with an error that says what to do, instead of cloning an init that may deadlock on a lock
/// another thread held (this test process has the harness's threads and one more of its own;
/// nothing in this file declares the helper).
#[test]
fn an_in_process_boot_in_a_multithreaded_process_is_refused() {
    use agentkernel_core::ExecRequest;
    use agentkernel_engine::backend::Controls;
    use agentkernel_engine::{Engine, RunOptions, SpecRequest};
    let ak = Ak::new();
    install_backends();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let engine = Engine::open(ak.home.path()).expect("open engine");
    let mut sink = |_| std::ops::ControlFlow::Continue(());
    let err = engine
        .run(
            &SpecRequest {
                image: Some("host".into()),
                no_network: true,
                cwd: ak.cwd.path().to_path_buf(),
                ..Default::default()
            },
            &RunOptions {
                name: Some("threads-run".into()),
                ..Default::default()
            },
            &ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            },
            &mut sink,
            Controls::default(),
        )
        .expect_err("a boot from a multithreaded process without the helper must be refused");
    let _ = stop_tx.send(());
    let _ = other.join();
    let msg = err.to_string();
    assert!(
        msg.contains("single-threaded") && msg.contains("use_boot_helper"),
        "unclear error: {msg}"
    );
    assert_eq!(err.exit_code(), 125);
    // Nothing was left: the CLI (single-threaded, booting directly) still runs.
    let out = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "echo",
        "fine",
    ]);
    assert_eq!(out.stdout, "fine\n");
}

/// An option `exec` does not know is refused before anything runs; after the sandbox name, the
/// command's first word starts the command and its hyphens are its own.
#[test]
fn exec_refuses_unknown_options_and_keeps_the_commands_hyphens() {
    let ak = Ak::new();
    ak.ok(&["create", "hyph", "--image", "host", "--no-network"]);
    ak.ok(&["start", "hyph"]);
    for (args, needle) in [
        (
            &["exec", "--bogus", "hyph", "true"][..],
            "unexpected argument '--bogus'",
        ),
        (
            &["exec", "--receipt", "r.json", "hyph", "true"],
            "unexpected argument '--receipt'",
        ),
    ] {
        let out = ak.run(args);
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {out:?}");
    }
    let out = ak.ok(&["exec", "hyph", "ls", "-la", "/"]);
    assert!(out.stdout.contains(".."), "{out:?}");
    let out = ak.ok(&["exec", "hyph", "sh", "-c", "echo \"$0\" -e", "-w"]);
    assert_eq!(out.stdout, "-w -e\n");
    let out = ak.run(&["exec", "hyph", "--", "--weird-prog"]);
    assert_eq!(out.code, 127, "{out:?}");
    let audit = ak.ok(&["audit", "list", "--json"]).stdout;
    assert!(
        !audit.contains("--bogus") && !audit.contains("r.json"),
        "a refused exec ran: {audit}"
    );
    ak.ok(&["remove", "hyph"]);
}

/// A `run` killed with SIGKILL at any point leaves nothing the next agentkernel command of any
/// kind (here `--version`) does not clean: its sandbox's processes end with it, and the empty
/// cgroups it could not remove go at once, not after `gc`'s grace period. Groups of runs that
/// are still going (another test's) are left alone: they hold their group.
#[test]
fn a_killed_run_leaves_nothing_after_the_next_command() {
    let ak = Ak::new();
    // The image is prepared first, so the kills land in the sandboxes' lifetimes.
    ak.ok(&["run", "--no-network", "--", "true"]);
    let before = cgroups_matching("run-");
    // A word no other test's command has, to find these runs' processes by.
    let marker = format!("killed-run-{}", std::process::id());
    let script = format!("sleep 60; echo {marker}");
    for delay_ms in [30u64, 120, 250, 400, 700] {
        let mut child = ak
            .cmd(&["run", "--no-network", "--", "sh", "-c", &script])
            .spawn()
            .expect("spawn run");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let made: Vec<_> = cgroups_matching("run-")
        .into_iter()
        .filter(|g| !before.contains(g))
        .collect();
    assert!(
        !made.is_empty(),
        "no kill landed after a sandbox's cgroup was made"
    );
    ak.ok(&["--version"]);
    for group in &made {
        if !group.exists() {
            continue;
        }
        // Still there: it must be another test's live run (processes in it).
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        assert!(
            !procs.trim().is_empty(),
            "{} was left after the next command",
            group.display()
        );
    }
    // No sandbox process of the killed runs is left (their `sleep 60`).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " "))
        .filter(|cmd| cmd.contains(&marker))
        .collect();
    assert!(
        leftover.is_empty(),
        "processes of the killed runs: {}",
        leftover.len()
    );
    assert!(ak.list_json().is_empty(), "{:?}", ak.list_json());
}

/// A `start` killed with SIGKILL while it boots takes its half-started sandbox along: the
/// init holds a lifeline to its starter until the sandbox is recorded, so no unrecorded init
/// is left holding the sandbox's disk. Every time, the sandbox is either running (the kill came
/// after it was recorded) or stopped and startable at once, and no process of an earlier
/// attempt survives.
#[test]
fn a_killed_start_leaves_a_startable_sandbox() {
    let ak = Ak::new();
    ak.ok(&["create", "halfway"]);
    // A first start and stop, so that the kills land in the boot rather than the image's
    // preparation; its duration spaces the kills over a whole start.
    let began = std::time::Instant::now();
    ak.ok(&["start", "halfway"]);
    let took = began.elapsed().as_millis() as u64;
    ak.ok(&["stop", "halfway"]);
    for delay_ms in (1..=12).map(|k| took * k / 10) {
        let mut child = ak.cmd(&["start", "halfway"]).spawn().expect("spawn start");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Whatever the kill interrupted, the sandbox starts (or already runs) and runs commands.
        ak.ok(&["start", "halfway"]);
        let out = ak.ok(&["exec", "halfway", "--", "echo", "usable"]);
        assert_eq!(out.stdout.trim(), "usable", "after a kill at {delay_ms} ms");
        // Exactly one group: the running sandbox's (an unrecorded init would keep another).
        // An init the kill ended may still be leaving (the kernel tears its namespaces down
        // after RCU grace periods, seconds on a loaded machine): its group goes at the first
        // command after that.
        let instances = || {
            let mut ids: Vec<String> = cgroups_matching("halfway-")
                .iter()
                .filter_map(|g| g.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while instances().len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            ak.ok(&["--version"]);
        }
        let described: Vec<String> = cgroups_matching("halfway-")
            .iter()
            .map(|g| {
                let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
                format!(
                    "{}: {}",
                    g.display(),
                    procs.split_whitespace().collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        assert_eq!(
            instances().len(),
            1,
            "after a kill at {delay_ms} ms: {described:#?}"
        );
        ak.ok(&["stop", "halfway"]);
    }
    ak.ok(&["remove", "halfway"]);
}
