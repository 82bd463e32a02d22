//! The guest agent (`agentkernel-guest`) as PID 1 of a real micro-VM: one boot under TCG, then
//! the protocol on two virtio-serial ports.
//!
//! The VM: the kernel of `scripts/build-kernel.sh` (or `AGENTKERNEL_KERNEL`); an initramfs
//! holding only `/dev/console` and the agent as `/init` (`AGENTKERNEL_GUEST`, or built here
//! with cargo into the workspace's target directory — static, as `scripts/env.sh` builds every
//! binary); a root image made with `mkfs.ext4 -d` from a directory holding Debian's static
//! busybox (`busybox-static`) and its applet links; ports `ak.0` and `ak.1` on unix sockets.
//!
//! What it checks: stdout and stderr stay apart and the exit code arrives; a missing command is
//! `NotFound`; files written read back and no path or planted symlink reaches the agent's own
//! `/init`; stdin; a timeout; a TTY; execs at once on one port and on two; a host that leaves
//! mid-exec gets its exec killed and the port serves the next host; the idle VM does not spin;
//! a policy is enforced; `Shutdown` ends QEMU by itself.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentkernel_proto::{
    Bytes, ErrorKind, ExecEvent, ExecRequest, FrameReader, FrameWriter, GuestError, GuestMessage,
    GuestPolicy, HostMessage, Limits, NetworkMode, PROTOCOL_VERSION, PtySize, RequestId,
};
use agentkernel_vm::host;
use agentkernel_vm::initramfs::Initramfs;
use agentkernel_vm::qemu::{Console, Drive, MicroVm, SerialPort};

/// Far above a TCG boot (~1.5 s): only a hung guest reaches it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Clock ticks per second in /proc/PID/stat (USER_HZ: 100 on x86_64).
const USER_HZ: f64 = 100.0;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("AGENTKERNEL_KERNEL") {
        return PathBuf::from(k);
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-kernel.sh"))
        .output()
        .expect("running scripts/build-kernel.sh");
    assert!(
        out.status.success(),
        "scripts/build-kernel.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).expect("from_utf8");
    PathBuf::from(
        path.lines()
            .last()
            .expect("build-kernel.sh printed no path"),
    )
}

fn host_triple() -> String {
    if let Ok(t) = std::env::var("HOST_TARGET")
        && !t.is_empty()
    {
        return t;
    }
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// The agent binary: `AGENTKERNEL_GUEST`, or `cargo build -p agentkernel-guest` (static).
fn guest_binary() -> Vec<u8> {
    let path = if let Some(p) = std::env::var_os("AGENTKERNEL_GUEST") {
        PathBuf::from(p)
    } else {
        let triple = host_triple();
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        if !flags.contains("crt-static") {
            flags.push_str(" -C target-feature=+crt-static");
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "agentkernel-guest", "--target", &triple])
            .env("RUSTFLAGS", flags)
            .current_dir(repo_root())
            .status()
            .expect("running cargo build -p agentkernel-guest");
        assert!(status.success(), "cargo build -p agentkernel-guest failed");
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target_dir.join(triple).join("debug/agentkernel-guest")
    };
    let bin = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        !bin.windows(12).any(|w| w == b"/lib64/ld-li"),
        "{} is dynamically linked; build it with scripts/env.sh's RUSTFLAGS (+crt-static)",
        path.display()
    );
    bin
}

/// A root directory with busybox and its applets, as an ext4 image.
fn root_image(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "root", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copying /bin/busybox (apt-get install busybox-static)");
    for applet in [
        "sh", "echo", "cat", "ls", "sleep", "true", "false", "id", "env", "pwd", "tty", "kill",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("write");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("write");
    // A planted link to the agent's own path: it must resolve inside the sandbox.
    std::os::unix::fs::symlink("/init", root.join("escape")).expect("symlink");
    let image = dir.join("root.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("64M")
        .output()
        .expect("running mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Prints the guest's serial console when the test fails.
struct ConsoleOnPanic(PathBuf);

impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- guest serial console ---\n{log}--- end ---");
        }
    }
}

/// QEMU, killed if the test ends before it does.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One host connection to a port.
struct Client {
    r: FrameReader<UnixStream>,
    w: FrameWriter<UnixStream>,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to {}: {e}", socket.display()),
            }
        };
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("set_read_timeout");
        Client {
            r: FrameReader::new(stream.try_clone().expect("try_clone")),
            w: FrameWriter::new(stream),
        }
    }

    fn send(&mut self, m: &HostMessage) {
        self.w.write_message(m).expect("write_message");
    }

    fn recv(&mut self) -> GuestMessage {
        self.r
            .read_message()
            .expect("reading the guest's answer")
            .expect("the guest closed the channel")
    }

    /// Hello → Ready; returns the kernel release.
    fn hello(&mut self) -> String {
        self.send(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
        });
        match self.recv() {
            GuestMessage::Ready { version, kernel } => {
                assert_eq!(version, PROTOCOL_VERSION);
                kernel
            }
            other => panic!("expected Ready first, got {other:?}"),
        }
    }

    /// Runs the execs given and collects each one's result.
    fn run_all(&mut self, execs: Vec<(u64, ExecRequest)>) -> HashMap<u64, Outcome> {
        let mut left: Vec<u64> = execs.iter().map(|(id, _)| *id).collect();
        for (id, request) in execs {
            self.send(&HostMessage::Exec {
                id: RequestId(id),
                request,
            });
        }
        let mut results: HashMap<u64, Outcome> = HashMap::new();
        while !left.is_empty() {
            let (id, done) = match self.recv() {
                GuestMessage::Exec { id, event } => {
                    let o = results.entry(id.0).or_default();
                    match event {
                        ExecEvent::Started { pid } => {
                            o.pid = Some(pid);
                            (id.0, false)
                        }
                        ExecEvent::Stdout(b) => {
                            o.stdout.extend(b.0);
                            (id.0, false)
                        }
                        ExecEvent::Stderr(b) => {
                            o.stderr.extend(b.0);
                            (id.0, false)
                        }
                        ExecEvent::Exit {
                            code,
                            signal,
                            timed_out,
                            ..
                        } => {
                            o.exit = Some((code, signal, timed_out));
                            (id.0, true)
                        }
                    }
                }
                GuestMessage::Error {
                    id: Some(id),
                    error,
                } => {
                    results.entry(id.0).or_default().error = Some(error);
                    (id.0, true)
                }
                other => panic!("unexpected message {other:?}"),
            };
            if done {
                left.retain(|l| *l != id);
            }
        }
        results
    }

    fn run(&mut self, id: u64, request: ExecRequest) -> Outcome {
        self.run_all(vec![(id, request)])
            .remove(&id)
            .expect("an outcome")
    }

    /// Sends a request answered by one message and returns that message.
    fn ask(&mut self, m: HostMessage) -> GuestMessage {
        self.send(&m);
        self.recv()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<(Option<i32>, Option<i32>, bool)>,
    error: Option<GuestError>,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn cmd(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![],
        workdir: None,
        user: None,
        tty: None,
        stdin: false,
        timeout_ms: None,
    }
}

fn sh(script: &str) -> ExecRequest {
    cmd(&["sh", "-c", script])
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which ends with the last ')'); utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn guest_agent_serves_the_protocol_in_a_micro_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = root_image(dir.path());
    let mut cpio = Initramfs::new();
    cpio.dir("dev", 0o755).expect("dir");
    cpio.char_dev("dev/console", 0o600, 5, 1).expect("char_dev");
    cpio.file("init", 0o755, &guest_binary()).expect("file");
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, cpio.finish()).expect("write");

    let console = dir.path().join("console.log");
    let _show = ConsoleOnPanic(console.clone());
    let sockets: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("ak{i}.sock")))
        .collect();
    let mut vm = MicroVm::new(kernel());
    vm.initrd = Some(initrd);
    vm.tsc_khz = Some(host::tsc_khz().expect("tsc_khz"));
    vm.cmdline_extra = vec!["quiet".into()];
    vm.drives = vec![Drive {
        path: image,
        read_only: true,
    }];
    vm.serial_ports = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| SerialPort {
            name: format!("ak.{i}"),
            socket: s.clone(),
        })
        .collect();
    vm.console = Console::File(console.clone());
    let qemu_err = std::fs::File::create(dir.path().join("qemu.stderr")).expect("create");
    let started = Instant::now();
    let mut qemu = Vm(vm
        .command()
        .stdout(Stdio::null())
        .stderr(qemu_err)
        .spawn()
        .expect("starting qemu-system-x86_64"));
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();

    // Hello → Ready.
    let mut c0 = Client::connect(&sockets[0]);
    let kernel = c0.hello();
    eprintln!(
        "Ready after {:.2} s, kernel {kernel}",
        started.elapsed().as_secs_f64()
    );
    assert!(kernel.starts_with("6.1."), "{kernel}");

    // stdout and stderr apart, exit code.
    let o = c0.run(1, sh("echo out; echo err >&2; exit 3"));
    assert!(o.error.is_none(), "{o:?}\n{}", console_text());
    assert!(o.pid.is_some(), "{o:?}");
    assert_eq!(o.stdout(), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert_eq!(o.exit, Some((Some(3), None, false)));

    // The command runs chrooted in the sandbox's root, in /workspace, with the default env.
    let o = c0.run(2, sh("pwd; ls /; echo $PATH $HOME"));
    let text = o.stdout();
    assert!(text.starts_with("/workspace\n"), "{text}");
    assert!(text.contains("busybox") || text.contains("bin"), "{text}");
    assert!(!text.contains("init") && !text.contains("run"), "{text}");
    assert!(
        text.contains("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /root"),
        "{text}"
    );

    // A missing command is NotFound.
    let o = c0.run(3, cmd(&["no-such-command"]));
    let e = o.error.expect("an error for a missing command");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    // A file without the x bit is NotExecutable.
    let o = c0.run(4, cmd(&["/etc/passwd"]));
    assert_eq!(
        o.error.expect("not executable").kind,
        ErrorKind::NotExecutable
    );

    // Files: written, read back, never outside the root.
    let m = c0.ask(HostMessage::WriteFile {
        id: RequestId(10),
        path: "/workspace/a/b.txt".into(),
        data: Bytes(b"written by the host\n".to_vec()),
        mode: 0o640,
        create_dirs: true,
    });
    assert_eq!(m, GuestMessage::Done { id: RequestId(10) });
    let m = c0.ask(HostMessage::ReadFile {
        id: RequestId(11),
        path: "/workspace/a/b.txt".into(),
    });
    assert_eq!(
        m,
        GuestMessage::FileData {
            id: RequestId(11),
            data: Bytes(b"written by the host\n".to_vec())
        }
    );
    let o = c0.run(12, cmd(&["cat", "a/b.txt"]));
    assert_eq!(o.stdout(), "written by the host\n");
    for (id, path) in [
        (13, "/../../init"),
        (14, "/escape"),
        (15, "/workspace/../../init"),
    ] {
        match c0.ask(HostMessage::ReadFile {
            id: RequestId(id),
            path: path.into(),
        }) {
            GuestMessage::Error { error, .. } => {
                assert_eq!(error.kind, ErrorKind::NotFound, "{path}: {error:?}")
            }
            other => panic!("{path} read something: {other:?}"),
        }
    }
    match c0.ask(HostMessage::ReadFile {
        id: RequestId(16),
        path: "/workspace".into(),
    }) {
        GuestMessage::Error { error, .. } => assert_eq!(error.kind, ErrorKind::InvalidInput),
        other => panic!("reading a directory: {other:?}"),
    }
    match c0.ask(HostMessage::ListDir {
        id: RequestId(17),
        path: "/workspace/a".into(),
    }) {
        GuestMessage::DirListing { entries, .. } => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].name, "b.txt");
            assert_eq!(entries[0].mode, 0o640);
        }
        other => panic!("listing: {other:?}"),
    }
    let m = c0.ask(HostMessage::Remove {
        id: RequestId(18),
        path: "/workspace/a".into(),
        recursive: true,
    });
    assert_eq!(m, GuestMessage::Done { id: RequestId(18) });

    // stdin.
    let mut req = cmd(&["cat"]);
    req.stdin = true;
    c0.send(&HostMessage::Exec {
        id: RequestId(20),
        request: req,
    });
    c0.send(&HostMessage::Stdin {
        id: RequestId(20),
        data: Bytes(b"through stdin\n".to_vec()),
    });
    c0.send(&HostMessage::StdinClose { id: RequestId(20) });
    let mut cat = Outcome::default();
    loop {
        match c0.recv() {
            GuestMessage::Exec { event, .. } => match event {
                ExecEvent::Stdout(b) => cat.stdout.extend(b.0),
                ExecEvent::Exit {
                    code,
                    signal,
                    timed_out,
                    ..
                } => {
                    cat.exit = Some((code, signal, timed_out));
                    break;
                }
                _ => {}
            },
            other => panic!("cat: {other:?}"),
        }
    }
    assert_eq!(cat.stdout(), "through stdin\n");
    assert_eq!(cat.exit, Some((Some(0), None, false)));

    // A timeout kills the command.
    let mut req = cmd(&["sleep", "100"]);
    req.timeout_ms = Some(500);
    let t = Instant::now();
    let o = c0.run(21, req);
    assert_eq!(o.exit, Some((None, Some(9), true)), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A terminal.
    let mut req = cmd(&["tty"]);
    req.tty = Some(PtySize {
        rows: 30,
        cols: 100,
    });
    let o = c0.run(22, req);
    assert!(o.stdout().starts_with("/dev/pts/"), "{:?}", o.stdout());
    assert_eq!(o.exit, Some((Some(0), None, false)));

    // Two execs at once on one port, and one on each of two ports.
    let t = Instant::now();
    let r = c0.run_all(vec![
        (30, sh("sleep 2; echo a")),
        (31, sh("sleep 2; echo b")),
    ]);
    assert_eq!(r[&30].stdout(), "a\n");
    assert_eq!(r[&31].stdout(), "b\n");
    let one_port = t.elapsed();
    assert!(one_port < Duration::from_millis(3500), "{one_port:?}");

    let mut c1 = Client::connect(&sockets[1]);
    c1.hello();
    let t = Instant::now();
    let other = std::thread::spawn(move || {
        let o = c1.run(40, sh("sleep 2; echo port1"));
        (c1, o)
    });
    let o0 = c0.run(41, sh("sleep 2; echo port0"));
    let (c1, o1) = other.join().expect("port 1 thread");
    let two_ports = t.elapsed();
    assert_eq!(o0.stdout(), "port0\n");
    assert_eq!(o1.stdout(), "port1\n");
    assert!(two_ports < Duration::from_millis(3500), "{two_ports:?}");

    // A host that leaves mid-exec: its exec is killed, and the port serves the next host.
    let mut c1 = c1;
    c1.send(&HostMessage::Exec {
        id: RequestId(50),
        request: cmd(&["sleep", "100"]),
    });
    let pid = match c1.recv() {
        GuestMessage::Exec {
            event: ExecEvent::Started { pid },
            ..
        } => pid,
        other => panic!("expected Started, got {other:?}"),
    };
    drop(c1);
    let mut c1 = Client::connect(&sockets[1]);
    c1.hello();
    let mut killed = false;
    for i in 0..20 {
        let o = c1.run(51 + i, sh(&format!("kill -0 {pid} 2>/dev/null")));
        if o.exit == Some((Some(1), None, false)) {
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed, "the exec of the host that left still runs");

    // No host on either port: the agent waits for SIGIO, it does not spin.
    drop(c1);
    drop(c0);
    std::thread::sleep(Duration::from_millis(300));
    let ticks = cpu_ticks(qemu.0.id());
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let hz = USER_HZ;
    let busy = (cpu_ticks(qemu.0.id()) - ticks) as f64 / hz / t.elapsed().as_secs_f64();
    eprintln!(
        "QEMU's CPU use with no host connected: {:.1}% of a core",
        busy * 100.0
    );
    assert!(
        busy < 0.5,
        "QEMU used {:.0}% of a core while idle",
        busy * 100.0
    );

    // The port's thread sleeps in sigtimedwait; the host connecting wakes it at once (without
    // the SIGIO it would wake only at its 5 s cap).
    let t = Instant::now();
    let mut c0 = Client::connect(&sockets[0]);
    c0.hello();
    let reconnect = t.elapsed();
    eprintln!(
        "Ready {:.1} ms after connecting to an idle port",
        reconnect.as_secs_f64() * 1000.0
    );
    assert!(reconnect < Duration::from_secs(2), "{reconnect:?}");

    // Policy: refused fields, then limits, capabilities and no-new-privs on later execs.
    let policy = |network| GuestPolicy {
        network,
        read_only_root: false,
        limits: Limits {
            memory_mib: Some(128),
            pids: Some(64),
            cpus: None,
        },
        capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
        no_new_privileges: true,
        seccomp: Some(agentkernel_proto::SeccompMode::DenyList),
    };
    match c0.ask(HostMessage::SetPolicy {
        id: RequestId(60),
        policy: policy(NetworkMode::Full),
    }) {
        GuestMessage::Error { error, .. } => assert_eq!(error.kind, ErrorKind::Unsupported),
        other => panic!("network full: {other:?}"),
    }
    let mut ro = policy(NetworkMode::None);
    ro.read_only_root = true;
    match c0.ask(HostMessage::SetPolicy {
        id: RequestId(61),
        policy: ro,
    }) {
        GuestMessage::Error { error, .. } => assert_eq!(error.kind, ErrorKind::InvalidInput),
        other => panic!("read-only root: {other:?}"),
    }
    assert_eq!(
        c0.ask(HostMessage::SetPolicy {
            id: RequestId(62),
            policy: policy(NetworkMode::None),
        }),
        GuestMessage::Done { id: RequestId(62) },
        "{}",
        console_text()
    );
    let o = c0.run(63, cmd(&["cat", "/proc/self/status", "/proc/self/cgroup"]));
    let status = o.stdout();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000400"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000400"), "{status}");
    assert!(status.contains("0::/sandbox"), "{status}");

    // Shutdown: QEMU exits by itself.
    c0.send(&HostMessage::Shutdown);
    let t = Instant::now();
    let exit = loop {
        if let Some(s) = qemu.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "QEMU still runs 10 s after Shutdown\n{}",
            console_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = console_text();
    assert!(exit.success(), "QEMU exited with {exit}\n{log}");
    assert!(!log.contains("Kernel panic"), "{log}");
    assert!(
        !log.contains("agentkernel-guest"),
        "the agent complained:\n{log}"
    );
    eprintln!(
        "shutdown took {:.2} s; the whole VM {:.2} s",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
