//! The micro-VM backend beyond the conformance suite (which runs every backend's promises on
//! `-B microvm` too): what happens when its VMM dies or the process owning a throwaway VM is
//! killed, what `doctor` says about the accelerator, and the refusals of what a guest cannot
//! enforce yet. Guests run under TCG here (this machine's /dev/kvm boots no stock kernel).

mod common;
use common::*;
use std::time::{Duration, Instant};

/// QEMU processes whose command line mentions this test's state directory.
fn vmms_of(ak: &Ak) -> Vec<u32> {
    let home = ak.home.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("read_dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("qemu-system-x86_64") && cmd.contains(&home) && !process_is_dead(*pid)
        })
        .collect()
}

/// Runtime directories of VMs left under the state directory.
fn runtime_dirs(ak: &Ak) -> Vec<String> {
    std::fs::read_dir(ak.home.path().join("vm"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.path().is_dir() && e.file_name() != "images" && e.file_name() != "templates"
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const VM: &[&str] = &["-B", "microvm", "--image", "busybox:latest", "--no-network"];

/// A VMM killed from outside: the sandbox shows stopped, starts again with its files (the
/// writable disk survives), and after `remove` and `gc` nothing of it is left: no QEMU, no
/// runtime directory.
#[test]
fn a_killed_vmm_shows_stopped_restarts_with_its_files_and_gc_leaves_nothing() {
    let ak = Ak::new();
    let mut args = vec!["create", "k"];
    args.extend_from_slice(VM);
    ak.ok(&args);
    ak.ok(&["start", "k"]);
    ak.ok(&[
        "exec",
        "k",
        "--",
        "sh",
        "-c",
        "echo kept > /workspace/f; sync",
    ]);
    let pid = ak.pid_of("k").expect("a running VM has its VMM's pid");
    assert_eq!(vmms_of(&ak), vec![pid], "the recorded pid is the VMM");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    wait_until("the VMM dies", Duration::from_secs(10), || {
        process_is_dead(pid)
    });
    assert_eq!(ak.status_of("k").as_deref(), Some("stopped"));
    let out = ak.run(&["exec", "k", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    ak.ok(&["start", "k"]);
    let out = ak.ok(&["exec", "k", "--", "cat", "/workspace/f"]);
    assert_eq!(out.stdout, "kept\n");
    ak.ok(&["remove", "k"]);
    ak.ok(&["gc"]);
    assert!(vmms_of(&ak).is_empty(), "{:?}", vmms_of(&ak));
    assert!(runtime_dirs(&ak).is_empty(), "{:?}", runtime_dirs(&ak));
}

/// A throwaway VM ends with the process that owns it, even when that process is killed with
/// SIGKILL and can clean nothing up (its lifeline port closes); the next command leaves
/// nothing of it.
#[test]
fn a_killed_run_takes_its_vm_with_it() {
    let ak = Ak::new();
    let mut args = vec!["run"];
    args.extend_from_slice(VM);
    args.extend_from_slice(&["--", "sh", "-c", "echo started; sleep 300"]);
    let (mut child, mut lines) = ak.spawn_lines(&args);
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "started");
    let vmms = vmms_of(&ak);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    child.kill().expect("kill");
    let _ = child.wait();
    wait_until(
        "the orphaned VM powers itself off",
        Duration::from_secs(20),
        || process_is_dead(vmms[0]),
    );
    // The run marked its VM as its own: the next command of any kind finds the owner dead
    // and removes what it left, without waiting for `gc`.
    ak.ok(&["--version"]);
    assert!(runtime_dirs(&ak).is_empty(), "{:?}", runtime_dirs(&ak));
}

/// `doctor` names the micro-VM backend's accelerator and why it was chosen: a probe boots the
/// kernel under /dev/kvm once, and TCG is used where that fails.
#[test]
fn doctor_says_which_accelerator_and_why() {
    let ak = Ak::new();
    let out = ak.run(&["doctor"]);
    let line = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .find(|l| l.contains("backend microvm"))
        .unwrap_or_else(|| panic!("doctor lists microvm: {out:?}"))
        .to_string();
    assert!(
        line.contains("TCG") || line.contains("KVM: the guest kernel was seen to boot"),
        "{line}"
    );
    if std::path::Path::new("/dev/kvm").exists() && line.contains("TCG") {
        assert!(
            line.contains("/dev/kvm"),
            "says why /dev/kvm is not used: {line}"
        );
    }
}

/// What a guest cannot enforce yet is refused (125) naming what to use: a network, host
/// mounts (the permissive profile), the host image, published ports.
#[test]
fn what_a_guest_cannot_enforce_is_refused_with_what_to_use() {
    let ak = Ak::new();
    for (extra, says) in [
        (&["--image", "busybox:latest"][..], "--no-network"),
        (
            &[
                "--image",
                "busybox:latest",
                "--no-network",
                "-p",
                "permissive",
            ][..],
            "host directory mounts",
        ),
        (&["--image", "host", "--no-network"][..], "registry image"),
        (
            &["--image", "busybox:latest", "--no-network", "-P", "8080:80"][..],
            "cannot publish ports",
        ),
    ] {
        let mut args = vec!["run", "-B", "microvm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        let out = ak.run(&args);
        assert_eq!(out.code, 125, "{extra:?}: {out:?}");
        assert!(out.stderr.contains(says), "{extra:?}: {out:?}");
        // `create` refuses it too, rather than making a sandbox no `start` can start.
        let mut args = vec!["create", "never", "-B", "microvm"];
        args.extend_from_slice(extra);
        let out = ak.run(&args);
        assert_eq!(out.code, 125, "create {extra:?}: {out:?}");
        assert!(out.stderr.contains(says), "create {extra:?}: {out:?}");
        assert!(ak.list_json().is_empty(), "create {extra:?} made a sandbox");
    }
    assert!(vmms_of(&ak).is_empty());
    assert!(runtime_dirs(&ak).is_empty(), "{:?}", runtime_dirs(&ak));
}

/// Throwaway VMs start as clones of one saved template, and clones share nothing: a file one
/// writes is absent from the next, each has its own hostname, the host's time, and random
/// numbers of its own (the template's pool is reseeded in each).
#[test]
fn clones_are_independent() {
    let ak = Ak::new();
    let script = "ls /tmp /workspace; echo secret > /tmp/mine; echo secret > /workspace/mine; \
                  hostname; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo";
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut args = vec!["run"];
        args.extend_from_slice(VM);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = ak.ok(&args);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert!(
            !out.stdout.contains("mine"),
            "a clone saw another's file: {out:?}"
        );
        let hostname = lines[lines.len() - 3].to_string();
        let time: u64 = lines[lines.len() - 2].parse().expect("date +%s");
        let random = lines[lines.len() - 1].to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("now")
            .as_secs();
        assert!(
            now.abs_diff(time) <= 30,
            "the clone's clock is the host's: {time} vs {now}"
        );
        assert_eq!(random.len(), 32, "{out:?}");
        seen.push((hostname, random));
    }
    let templates = std::fs::read_dir(ak.home.path().join("vm/templates"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(templates, 1, "the three runs came from one template");
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            assert_ne!(seen[i].0, seen[j].0, "hostnames: {seen:?}");
            assert_ne!(seen[i].1, seen[j].1, "random numbers: {seen:?}");
        }
    }
}

/// The daemon's warm pool holds micro-VMs (clones of the template) for `run -B microvm`: each
/// serves one run and is then destroyed, and `daemon stop` leaves no VM behind.
#[test]
fn the_warm_pool_serves_runs_from_clones_each_used_once() {
    let ak = Ak::new();
    let cfg = ak.cwd.path().join("daemon.toml");
    std::fs::write(&cfg, "[daemon]\nmin_warm = 0\nmax_warm = 3\n").expect("write");
    let out = ak.ok(&[
        "daemon",
        "start",
        "--background",
        "-c",
        cfg.to_str().expect("utf8"),
    ]);
    assert!(out.stdout.contains("daemon started"), "{out:?}");
    let status = || -> serde_json::Value {
        let out = ak.run(&["daemon", "status", "--json"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status: {e}: {out:?}"))
    };
    let pool = |st: &serde_json::Value| -> Option<serde_json::Value> {
        st["pool"]["pools"]
            .as_array()?
            .iter()
            .find(|p| p["backend"] == "microvm")
            .cloned()
    };
    ak.ok(&[
        "daemon",
        "prewarm",
        "-B",
        "microvm",
        "--image",
        "busybox:latest",
        "--no-network",
        "--count",
        "2",
    ]);
    wait_until("two warm micro-VMs", Duration::from_secs(60), || {
        pool(&status()).and_then(|p| p["warm"].as_u64()) == Some(2)
    });
    let mut args = vec!["run"];
    args.extend_from_slice(VM);
    args.extend_from_slice(&["--", "sh", "-c", "ls /tmp; echo mine > /tmp/mine; hostname"]);
    let mut hostnames = Vec::new();
    for _ in 0..3 {
        let out = ak.ok(&args);
        assert!(
            !out.stdout.contains("mine"),
            "a warm VM was used twice: {out:?}"
        );
        hostnames.push(out.stdout.trim().to_string());
    }
    let p = pool(&status()).expect("the microvm pool");
    assert!(p["runs_warm"].as_u64().unwrap_or(0) >= 2, "{p:#}");
    hostnames.sort();
    hostnames.dedup();
    assert_eq!(hostnames.len(), 3, "{hostnames:?}");
    ak.ok(&["daemon", "stop"]);
    wait_until("no VM after daemon stop", Duration::from_secs(20), || {
        vmms_of(&ak).is_empty()
    });
}

/// What a micro-VM start caches (the image's disk, the template) goes with the image: after
/// `images rm` and `images prune` (which removes its layers), `gc` removes both.
#[test]
fn gc_removes_disks_and_templates_of_removed_images() {
    let ak = Ak::new();
    let mut args = vec!["run"];
    args.extend_from_slice(VM);
    args.extend_from_slice(&["--", "true"]);
    ak.ok(&args);
    let count = |dir: &str, ext: Option<&str>| {
        std::fs::read_dir(ak.home.path().join("vm").join(dir))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| ext.is_none_or(|x| e.file_name().to_string_lossy().ends_with(x)))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(count("images", Some(".ext4")), 1);
    assert_eq!(count("templates", None), 1);
    ak.ok(&["gc"]);
    assert_eq!(
        count("images", Some(".ext4")),
        1,
        "kept while the image is there"
    );
    assert_eq!(
        count("templates", None),
        1,
        "kept while its files are unchanged"
    );
    ak.ok(&["images", "rm", "busybox:latest"]);
    ak.ok(&["images", "prune"]);
    let out = ak.ok(&["gc"]);
    assert_eq!(count("images", Some(".ext4")), 0, "{out:?}");
    assert_eq!(count("templates", None), 0, "{out:?}");
}

/// A `start` killed with SIGKILL while its VM boots leaves a sandbox that starts again: the VM's
/// owner lock stays held until the engine has recorded the sandbox, so the next start knows a
/// VM of that sandbox whose lock is free for a leftover and ends it (it held the sandbox's
/// disk: every later `start` failed with QEMU's "Failed to get \"write\" lock").
#[test]
fn a_killed_start_leaves_a_startable_sandbox() {
    let ak = Ak::new();
    let mut create = vec!["create", "halfway"];
    create.extend_from_slice(VM);
    ak.ok(&create);
    let began = std::time::Instant::now();
    ak.ok(&["start", "halfway"]);
    let took = began.elapsed();
    ak.ok(&["stop", "halfway"]);
    for k in [3u32, 6, 9] {
        let mut child = ak.cmd(&["start", "halfway"]).spawn().expect("spawn start");
        std::thread::sleep(took * k / 10);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        ak.ok(&["start", "halfway"]);
        let out = ak.ok(&["exec", "halfway", "--", "echo", "usable"]);
        assert_eq!(
            out.stdout.trim(),
            "usable",
            "after a kill at {k}/10 of a start"
        );
        assert_eq!(
            vmms_of(&ak).len(),
            1,
            "after a kill at {k}/10: {:?}",
            vmms_of(&ak)
        );
        ak.ok(&["stop", "halfway"]);
    }
    ak.ok(&["remove", "halfway"]);
    assert!(vmms_of(&ak).is_empty(), "{:?}", vmms_of(&ak));
}
