//! Detached commands (`exec -d`, and the engine API the HTTP endpoints call): they outlive the
//! process that started them, report their real pid, status, exit code and bounded output, and
//! end with their sandbox.

mod common;
use agentkernel_core::ExecRequest;
use agentkernel_engine::detached::{
    DetachedCommand, DetachedStatus, LogStream, OUTPUT_CAP, TRUNCATION_MARKER,
};
use agentkernel_engine::{Engine, EngineError};
use common::*;
use std::time::{Duration, Instant};

/// An engine on the test's state directory whose supervisor is the agentkernel binary (this
/// test binary is not one).
fn engine(ak: &Ak) -> Engine {
    install_backends();
    Engine::open(ak.home.path())
        .expect("open engine")
        .with_supervisor_exe(bin())
}

/// A started sandbox on the host image, without network (quick to start).
fn sandbox(ak: &Ak, name: &str) {
    ak.ok(&["create", name, "--image", "host", "--no-network"]);
    ak.ok(&["start", name]);
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Waits (at most 20 s) until the command is no longer running.
fn wait_done(engine: &Engine, name: &str, id: &str) -> DetachedCommand {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = engine.detached_get(name, id).expect("get");
        if c.status != DetachedStatus::Running {
            return c;
        }
        assert!(Instant::now() < deadline, "still running after 20 s: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a host process has exactly these arguments.
fn process_with_args(args: &str) -> bool {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .any(|l| l.trim() == args)
}

fn record_dir(ak: &Ak, name: &str, id: &str) -> std::path::PathBuf {
    ak.home
        .path()
        .join("sandboxes")
        .join(name)
        .join("detached")
        .join(id)
}

fn is_not_found(e: &EngineError, id: &str) -> bool {
    matches!(e, EngineError::DetachedNotFound { id: i, .. } if i == id)
}

#[test]
fn cli_exec_detach_returns_and_the_command_outlives_it() {
    let ak = Ak::new();
    sandbox(&ak, "dt1");
    let out = ak.ok(&[
        "exec",
        "-d",
        "dt1",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; sleep 2; exit 3",
    ]);
    // The CLI process has exited (output() waited for it); the command has not.
    let id = out.stdout.trim().to_string();
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "exec -d prints the id and nothing else: {out:?}"
    );
    let engine = engine(&ak);
    let c = engine.detached_get("dt1", &id).expect("get");
    assert_eq!(c.status, DetachedStatus::Running, "{c:?}");
    assert!(
        !process_is_dead(c.pid),
        "the command must run on after the CLI exited"
    );
    assert_eq!(
        c.command,
        ["sh", "-c", "echo out; echo err >&2; sleep 2; exit 3"]
    );
    let done = wait_done(&engine, "dt1", &id);
    assert_eq!(done.status, DetachedStatus::Failed, "{done:?}");
    assert_eq!(done.exit_code, Some(3));
    let logs = engine.detached_logs("dt1", &id, None).expect("logs");
    assert_eq!(logs.stdout.as_deref(), Some("out\n"));
    assert_eq!(logs.stderr.as_deref(), Some("err\n"));

    // The end is audited as a command_executed of that detached command.
    let audit = ak
        .ok(&["audit", "list", "--json", "--sandbox", "dt1"])
        .stdout;
    let entry = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "command_executed" && e["detached"] == id.as_str())
        .unwrap_or_else(|| panic!("no command_executed for {id} in:\n{audit}"));
    assert_eq!(entry["exit_code"], 3, "{entry}");
    ak.ok(&["remove", "dt1"]);
}

#[test]
fn status_exit_codes_logs_and_list_through_the_engine() {
    let ak = Ak::new();
    sandbox(&ak, "dt2");
    let engine = engine(&ak);
    let failing = engine
        .exec_detached(
            "dt2",
            &request(&["sh", "-c", "echo out; echo err >&2; sleep 2; exit 3"]),
        )
        .expect("exec_detached");
    assert_eq!(failing.status, DetachedStatus::Running, "{failing:?}");
    assert_eq!(failing.sandbox, "dt2");
    assert_eq!(failing.exit_code, None);
    assert!(failing.pid > 1, "{failing:?}");
    assert!(
        !process_is_dead(failing.pid),
        "the pid is the live command's"
    );
    // The host pid: its command line is the command's.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", failing.pid)).expect("cmdline");
    assert!(
        cmdline.starts_with(b"sh\0-c\0echo out"),
        "pid {} is not the command: {:?}",
        failing.pid,
        String::from_utf8_lossy(&cmdline)
    );
    chrono::DateTime::parse_from_rfc3339(&failing.started_at).expect("started_at is RFC 3339");
    let json = serde_json::to_value(&failing).expect("json");
    assert_eq!(json["status"], "running");
    assert!(json.get("exit_code").is_none(), "{json}");

    let mut req = request(&["sh", "-c", "echo \"$GREETING from $(pwd)\""]);
    req.env = vec![("GREETING".into(), "hello".into())];
    req.workdir = Some("/tmp".into());
    let ok = engine.exec_detached("dt2", &req).expect("exec_detached");
    let ok = wait_done(&engine, "dt2", &ok.id);
    assert_eq!(ok.status, DetachedStatus::Completed, "{ok:?}");
    assert_eq!(ok.exit_code, Some(0));
    let logs = engine
        .detached_logs("dt2", &ok.id, Some(LogStream::Stdout))
        .expect("logs");
    assert_eq!(logs.stdout.as_deref(), Some("hello from /tmp\n"));
    assert_eq!(logs.stderr, None, "only the stream asked for");
    let json = serde_json::to_value(&ok).expect("json");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["exit_code"], 0);

    let done = wait_done(&engine, "dt2", &failing.id);
    assert_eq!(
        (done.status, done.exit_code),
        (DetachedStatus::Failed, Some(3))
    );
    let logs = engine
        .detached_logs("dt2", &failing.id, Some(LogStream::Stderr))
        .expect("logs");
    assert_eq!(
        (logs.stdout.as_deref(), logs.stderr.as_deref()),
        (None, Some("err\n"))
    );
    let logs = engine
        .detached_logs("dt2", &failing.id, None)
        .expect("logs");
    assert_eq!(
        (logs.stdout.as_deref(), logs.stderr.as_deref()),
        (Some("out\n"), Some("err\n"))
    );

    let list = engine.detached_list("dt2").expect("list");
    let ids: Vec<&str> = list.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [failing.id.as_str(), ok.id.as_str()], "oldest first");
    // The request's environment is not kept on disk.
    assert!(!record_dir(&ak, "dt2", &ok.id).join("request.json").exists());
    ak.ok(&["remove", "dt2"]);
}

#[test]
fn kill_ends_the_command_and_its_group() {
    let ak = Ak::new();
    sandbox(&ak, "dt3");
    let engine = engine(&ak);
    let c = engine
        .exec_detached(
            "dt3",
            &request(&["sh", "-c", "sleep 1013 & exec sleep 1000"]),
        )
        .expect("exec_detached");
    // The background child is in the command's process group.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_with_args("sleep 1013") {
        assert!(
            Instant::now() < deadline,
            "the background sleep never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = engine.detached_kill("dt3", &c.id).expect("kill");
    assert_eq!(killed.status, DetachedStatus::Failed, "{killed:?}");
    assert_eq!(killed.exit_code, Some(137));
    assert!(
        process_is_dead(c.pid),
        "the command is gone when kill returns"
    );
    assert!(
        !process_with_args("sleep 1013"),
        "its process group went with it"
    );
    // Killing it again changes nothing.
    let again = engine.detached_kill("dt3", &c.id).expect("kill again");
    assert_eq!(
        (again.status, again.exit_code),
        (killed.status, killed.exit_code)
    );
    ak.ok(&["remove", "dt3"]);
}

#[test]
fn output_beyond_the_cap_is_not_kept() {
    let ak = Ak::new();
    sandbox(&ak, "dt4");
    let engine = engine(&ak);
    let size = OUTPUT_CAP + 2 * 1024 * 1024;
    let c = engine
        .exec_detached(
            "dt4",
            &request(&["sh", "-c", &format!("yes | head -c {size}; echo small >&2")]),
        )
        .expect("exec_detached");
    let done = wait_done(&engine, "dt4", &c.id);
    assert_eq!(done.status, DetachedStatus::Completed, "{done:?}");
    let dir = record_dir(&ak, "dt4", &c.id);
    let on_disk = std::fs::metadata(dir.join("stdout")).expect("stdout").len();
    assert_eq!(
        on_disk,
        OUTPUT_CAP + TRUNCATION_MARKER.len() as u64,
        "the first {OUTPUT_CAP} bytes and the marker"
    );
    let logs = engine.detached_logs("dt4", &c.id, None).expect("logs");
    let stdout = logs.stdout.expect("stdout");
    assert!(
        logs.stdout_truncated && !logs.stderr_truncated,
        "{:?}",
        logs.stderr
    );
    assert!(stdout.starts_with("y\ny\n"));
    assert!(stdout.ends_with(std::str::from_utf8(TRUNCATION_MARKER).expect("utf8")));
    assert_eq!(logs.stderr.as_deref(), Some("small\n"));
    let json = serde_json::to_value(
        engine
            .detached_logs("dt4", &c.id, Some(LogStream::Stderr))
            .expect("logs"),
    )
    .expect("json");
    assert_eq!(json, serde_json::json!({"stderr": "small\n"}));
    ak.ok(&["remove", "dt4"]);
}

#[test]
fn bad_and_unknown_ids_are_not_found() {
    let ak = Ak::new();
    sandbox(&ak, "dt5");
    let engine = engine(&ak);
    // A real record beside the sandbox's directory that `../` would reach.
    let c = engine
        .exec_detached("dt5", &request(&["true"]))
        .expect("exec_detached");
    wait_done(&engine, "dt5", &c.id);
    for id in [
        "../x",
        "..",
        &format!("../detached/{}", c.id),
        &format!("{}/../{}", c.id, c.id),
        "000000000000",
        "",
        &c.id.to_uppercase(),
    ] {
        let e = engine.detached_get("dt5", id).expect_err(id);
        assert!(is_not_found(&e, id), "{id:?}: {e}");
        assert!(
            e.to_string().contains("exec -d"),
            "the message says where ids come from: {e}"
        );
        let e = engine.detached_logs("dt5", id, None).expect_err(id);
        assert!(is_not_found(&e, id), "{id:?}: {e}");
        let e = engine.detached_kill("dt5", id).expect_err(id);
        assert!(is_not_found(&e, id), "{id:?}: {e}");
    }
    assert!(matches!(
        engine.detached_get("ghost", &c.id),
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        engine.detached_list("ghost"),
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        "both".parse::<LogStream>(),
        Err(EngineError::BadLogStream(_))
    ));
    ak.ok(&["remove", "dt5"]);
}

#[test]
fn commands_that_cannot_start_are_errors_and_leave_nothing() {
    let ak = Ak::new();
    sandbox(&ak, "dt6");
    let out = ak.run(&["exec", "-d", "dt6", "--", "no-such-command-anywhere"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no id for a command that did not start: {out:?}"
    );
    let out = ak.run(&["exec", "-d", "dt6", "--", "/etc/passwd"]);
    assert_eq!(out.code, 126, "{out:?}");
    let out = ak.run(&["exec", "-d", "-w", "/no/such/dir", "dt6", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("/no/such/dir"), "{out:?}");
    let out = ak.run(&["exec", "-d", "ghost", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("no sandbox named \"ghost\""), "{out:?}");
    let engine = engine(&ak);
    assert!(engine.detached_list("dt6").expect("list").is_empty());
    let records = ak.home.path().join("sandboxes/dt6/detached");
    let left: Vec<_> = std::fs::read_dir(&records)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "records left by failed starts: {left:?}");
    // A shell's own "not found" is a command that ran and failed.
    let c = engine
        .exec_detached("dt6", &request(&["sh", "-c", "no-such-command-anywhere"]))
        .expect("exec_detached");
    let done = wait_done(&engine, "dt6", &c.id);
    assert_eq!(
        (done.status, done.exit_code),
        (DetachedStatus::Failed, Some(127))
    );

    ak.ok(&["stop", "dt6"]);
    let e = engine
        .exec_detached("dt6", &request(&["true"]))
        .expect_err("stopped sandbox");
    assert!(matches!(e, EngineError::NotRunning(_)), "{e}");
    let out = ak.run(&["exec", "-d", "dt6", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("agentkernel start dt6"), "{out:?}");
    ak.ok(&["remove", "dt6"]);
}

#[test]
fn stop_fails_running_commands_and_remove_deletes_the_records() {
    let ak = Ak::new();
    sandbox(&ak, "dt7");
    let engine = engine(&ak);
    let c = engine
        .exec_detached("dt7", &request(&["sleep", "1007"]))
        .expect("exec_detached");
    assert_eq!(c.status, DetachedStatus::Running);
    ak.ok(&["stop", "dt7"]);
    // Right when stop returns, not eventually.
    let after = engine.detached_get("dt7", &c.id).expect("get");
    assert_eq!(after.status, DetachedStatus::Failed, "{after:?}");
    assert_eq!(after.exit_code, Some(137), "killed with the sandbox");
    assert!(process_is_dead(c.pid));
    // The record survives stop/start.
    ak.ok(&["start", "dt7"]);
    assert_eq!(engine.detached_list("dt7").expect("list").len(), 1);
    let running = engine
        .exec_detached("dt7", &request(&["sleep", "1008"]))
        .expect("exec_detached");
    let dir = ak.home.path().join("sandboxes/dt7/detached");
    assert!(dir.join(&running.id).exists());
    ak.ok(&["remove", "dt7"]);
    assert!(!dir.exists(), "remove deletes the detached records");
    assert!(process_is_dead(running.pid));
    assert!(!process_with_args("sleep 1008"));
    assert!(matches!(
        engine.detached_list("dt7"),
        Err(EngineError::NotFound(_))
    ));
}

#[test]
fn a_supervisor_that_dies_leaves_a_failed_command_without_exit_code() {
    let ak = Ak::new();
    sandbox(&ak, "dt8");
    let engine = engine(&ak);
    let supervisor_of = |id: &str| -> u32 {
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(record_dir(&ak, "dt8", id).join("command.json")).expect("record"),
        )
        .expect("json");
        meta["supervisor_pid"].as_u64().expect("supervisor_pid") as u32
    };
    let kill = |pid: u32| {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::Signal::KILL,
        );
    };
    let wait_dead = |pid: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_is_dead(pid) {
            assert!(Instant::now() < deadline, "{pid} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // The supervisor dies, then the command: nobody recorded how it ended.
    let a = engine
        .exec_detached("dt8", &request(&["sleep", "1018"]))
        .expect("exec_detached");
    let sup = supervisor_of(&a.id);
    assert_ne!(sup, std::process::id(), "the supervisor is its own process");
    kill(sup);
    wait_dead(sup);
    assert_eq!(
        engine.detached_get("dt8", &a.id).expect("get").status,
        DetachedStatus::Running,
        "the command still runs without its supervisor"
    );
    kill(a.pid);
    wait_dead(a.pid);
    let a = engine.detached_get("dt8", &a.id).expect("get");
    assert_eq!((a.status, a.exit_code), (DetachedStatus::Failed, None));

    // The supervisor dies, then the command is killed through the engine: that kill is
    // recorded.
    let b = engine
        .exec_detached("dt8", &request(&["sleep", "1028"]))
        .expect("exec_detached");
    let sup = supervisor_of(&b.id);
    kill(sup);
    wait_dead(sup);
    let b = engine.detached_kill("dt8", &b.id).expect("kill");
    assert_eq!((b.status, b.exit_code), (DetachedStatus::Failed, Some(137)));
    ak.ok(&["remove", "dt8"]);
}
