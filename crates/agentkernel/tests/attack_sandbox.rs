//! Attacks on the host through what a sandbox is given: device nodes and set-uid files its image
//! brings, what its init inherited from the process that started it, and the host's disk. Each
//! test performs the attack and asserts that it fails (native backend).

mod common;
use common::loopdev::LoopDevice;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of the busybox root in `parent`, as a directory image a local user could give.
fn dir_image(parent: &Path) -> PathBuf {
    let dir = parent.join("image");
    let status = Command::new("cp")
        .arg("-a")
        .arg(busybox_root())
        .arg(&dir)
        .status()
        .expect("cp");
    assert!(status.success());
    dir
}

fn mknod(path: &Path, file_type: rustix::fs::FileType, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        rustix::fs::Mode::from_raw_mode(0o666),
        dev,
    )
    .expect("mknod");
    // Usable by every uid: only nodev and the device cgroup stand in the way.
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o666)).expect("chmod");
}

fn kernel_log() -> String {
    let out = Command::new("dmesg").output().expect("dmesg");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory image holding the host's kernel log device (c 1:11) and a block device node of
/// a real loop device: in moderate (root) and restrictive (nobody) neither can be read or
/// written, and neither the device's file nor the kernel log changes.
#[test]
fn device_nodes_in_an_image_cannot_be_used() {
    let ak = Ak::new();
    let mut loop_dev = LoopDevice::new();
    let image = dir_image(ak.cwd.path());
    mknod(
        &image.join("kmsg"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 11),
    );
    mknod(
        &image.join("blk"),
        rustix::fs::FileType::BlockDevice,
        loop_dev.dev(),
    );
    let marker = format!("agentkernel-attack-{}", std::process::id());
    let probe = format!(
        "echo {marker} > /kmsg && echo kmsg-written; \
         head -c 16 /blk | od -An -tx1; \
         echo overwritten > /blk && echo blk-written; \
         ls -l /kmsg /blk >/dev/null && echo probed"
    );
    for profile in ["moderate", "restrictive"] {
        let out = ak.run(&[
            "run",
            "-p",
            profile,
            "--no-network",
            "--image",
            image.to_str().expect("utf8"),
            "--",
            "sh",
            "-c",
            &probe,
        ]);
        assert!(out.stdout.ends_with("probed\n"), "{profile}: {out:?}");
        assert!(
            !out.stdout.contains("written") && !out.stdout.contains("ab ab"),
            "{profile}: a device of the image was used: {out:?}"
        );
        let denials = out.stderr.matches("Permission denied").count()
            + out.stderr.matches("Operation not permitted").count();
        assert_eq!(denials, 3, "{profile}: {out:?}");
    }
    assert!(
        !kernel_log().contains(&marker),
        "a sandbox wrote into the host's kernel log"
    );
    assert_eq!(
        loop_dev.detach(),
        LoopDevice::contents(),
        "the loop device's file changed"
    );
}

/// Every mount a sandbox sees is nodev and nosuid but its own /dev and devpts (and the /proc
/// entries masked by binding its null device): the overlay root, the host image's binds, the
/// permissive project and home binds, /tmp, /dev/shm, /proc, /sys; and the disk of a
/// persistent sandbox. So a device node or set-uid file anywhere else is inert, whatever the
/// device cgroup says.
#[test]
fn every_mount_but_the_sandbox_dev_is_nodev_nosuid() {
    let ak = Ak::new();
    let home = tempfile::tempdir().expect("home");
    let script = "cat /proc/self/mountinfo";
    let masked_by_null = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/kallsyms",
    ];
    let check = |what: &str, out: &Out| {
        assert_eq!(out.code, 0, "{what}: {out:?}");
        let mut seen = Vec::new();
        for line in out.stdout.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (mountpoint, options) = (fields[4], fields[5]);
            seen.push(mountpoint.to_string());
            if ["/dev", "/dev/pts"].contains(&mountpoint) || masked_by_null.contains(&mountpoint) {
                continue;
            }
            let opts: Vec<&str> = options.split(',').collect();
            assert!(
                opts.contains(&"nodev") && opts.contains(&"nosuid"),
                "{what}: {mountpoint} is mounted {options}"
            );
        }
        seen
    };
    let mut cmd = ak.cmd(&[
        "run",
        "-p",
        "permissive",
        "--no-network",
        "--image",
        "host",
        "--",
        "sh",
        "-c",
        script,
    ]);
    cmd.env("HOME", home.path());
    let out: Out = cmd.output().expect("run").into();
    let seen = check("permissive run", &out);
    for expected in ["/", "/usr", "/workspace", "/tmp", "/dev/shm", "/proc"] {
        assert!(seen.iter().any(|m| m == expected), "{expected} in {seen:?}");
    }
    let home_str = home.path().to_str().expect("utf8");
    assert!(seen.iter().any(|m| m == home_str), "{home_str} in {seen:?}");

    ak.ok(&[
        "create",
        "disk",
        "--no-network",
        "-p",
        "restrictive",
        "--image",
        "host",
    ]);
    ak.ok(&["start", "disk"]);
    let out = ak.run(&["exec", "disk", "--", "sh", "-c", script]);
    check("persistent restrictive", &out);
}

/// The v1 device cgroup of a running sandbox (this host has the v1 devices controller) allows
/// exactly its own devices, read and write only (no mknod), and its commands are in it.
#[test]
fn the_device_cgroup_allows_only_the_sandbox_devices() {
    let ak = Ak::new();
    let root = Path::new("/sys/fs/cgroup/devices");
    assert!(
        root.join("devices.list").exists(),
        "this test reads the cgroup v1 devices controller at {}, which this host does not mount (a v2-only host is covered by agentkernel-native's device_filter test)",
        root.display()
    );
    ak.ok(&["create", "dev", "--no-network", "--image", "host"]);
    ak.ok(&["start", "dev"]);
    let groups: Vec<PathBuf> = cgroups_matching("dev-")
        .into_iter()
        .filter(|g| g.starts_with(root))
        .collect();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let list = std::fs::read_to_string(groups[0].join("devices.list")).expect("devices.list");
    assert_eq!(
        list,
        "c 1:3 rw\nc 1:5 rw\nc 1:7 rw\nc 1:8 rw\nc 1:9 rw\nc 5:0 rw\nc 5:2 rw\nc 136:* rw\n"
    );
    let out = ak.ok(&["exec", "dev", "--", "cat", "/proc/self/cgroup"]);
    assert!(
        out.stdout.lines().any(|l| l.ends_with(":devices:/")),
        "{out:?}"
    );
    let init = ak.pid_of("dev").expect("pid");
    let cgroup = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroup");
    let name = groups[0].file_name().expect("name").to_string_lossy();
    assert!(
        cgroup
            .lines()
            .any(|l| l.contains(":devices:") && l.ends_with(&*name)),
        "{cgroup}"
    );
}

/// What the allow-list and nodev leave: the sandbox's own null, zero, full, urandom, tty, ptmx
/// and ptys work, as root and as nobody.
#[test]
fn the_sandbox_devices_still_work() {
    let ak = Ak::new();
    let probe = r#"
import os, fcntl, termios
out = []
with open('/dev/null', 'r+b') as f:
    f.write(b'x'); out.append('null:' + repr(f.read(1)))
with open('/dev/zero', 'rb') as f:
    out.append('zero:' + f.read(2).hex())
with open('/dev/urandom', 'rb') as f:
    out.append('urandom:%d' % len(f.read(8)))
try:
    with open('/dev/full', 'wb', buffering=0) as f:
        f.write(b'x')
except OSError as e:
    out.append('full:' + os.strerror(e.errno))
m, s = os.openpty()
os.write(s, b'hi\n')
out.append('pty:' + repr(os.read(m, 16)))
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    fd = os.open('/dev/tty', os.O_RDWR)
    os.write(fd, b'tty\n')
    os._exit(0)
os.waitpid(pid, 0)
out.append('tty:' + repr(os.read(m, 16)))
print(' '.join(out))
"#;
    for profile in ["moderate", "restrictive"] {
        let out = ak.run(&[
            "run",
            "-p",
            profile,
            "--no-network",
            "--image",
            "host",
            "--",
            "python3",
            "-c",
            probe,
        ]);
        assert_eq!(
            out.stdout,
            "null:b'' zero:0000 urandom:8 full:No space left on device pty:b'hi\\r\\n' tty:b'tty\\r\\n'\n",
            "{profile}: {out:?}"
        );
    }
}

/// A static x86-64 or aarch64 program that exits with its effective uid (mod 256).
fn euid_program() -> Vec<u8> {
    let (machine, code): (u16, &[u8]) = if cfg!(target_arch = "x86_64") {
        // mov eax, 107 (geteuid); syscall; mov edi, eax; mov eax, 60 (exit); syscall
        (
            0x3e,
            &[
                0xb8, 0x6b, 0, 0, 0, 0x0f, 0x05, 0x89, 0xc7, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05,
            ],
        )
    } else if cfg!(target_arch = "aarch64") {
        // mov x8, 175 (geteuid); svc 0; mov x8, 93 (exit); svc 0
        (
            0xb7,
            &[
                0xe8, 0x15, 0x80, 0xd2, 0x01, 0, 0, 0xd4, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0, 0, 0xd4,
            ],
        )
    } else {
        panic!("this test has its probe program for x86-64 and aarch64 only")
    };
    let base: u64 = 0x40_0000;
    let header_len: u64 = 64 + 56;
    let total = header_len + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(base + header_len).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, base, base, total, total, 0x1000u64] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// A set-uid-root program in a directory image, run as nobody (restrictive): its effective
/// uid stays nobody's.
#[test]
fn setuid_programs_from_an_image_gain_no_privilege() {
    use std::os::unix::fs::PermissionsExt;
    let ak = Ak::new();
    let image = dir_image(ak.cwd.path());
    let prog = image.join("bin/euid");
    std::fs::write(&prog, euid_program()).expect("write");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).expect("setuid");
    // The probe itself works: outside any sandbox, run as nobody, it gets euid 0.
    let outside = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&prog)
        .status()
        .expect("setpriv (util-linux)");
    assert_eq!(
        outside.code(),
        Some(0),
        "the set-uid probe does not work here"
    );
    let out = ak.run(&[
        "run",
        "-p",
        "restrictive",
        "--image",
        image.to_str().expect("utf8"),
        "--",
        "/bin/euid",
    ]);
    assert_eq!(out.code, 65534 & 0xff, "euid inside: {out:?}");
}

/// A child process killed (and reaped) when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bytes of a process's /proc file, as root on the host sees them.
fn proc_file(pid: u32, file: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc"))
        .into_owned()
}

fn assert_init_is_clean(pid: u32, secrets: &[&str], what: &str) {
    let cmdline = proc_file(pid, "cmdline");
    let environ = proc_file(pid, "environ");
    for secret in secrets {
        assert!(
            !cmdline.contains(secret) && !environ.contains(secret),
            "{what}: the init {pid} shows {secret:?}: cmdline {cmdline:?} environ {environ:?}"
        );
    }
    assert!(
        cmdline.starts_with("agentkernel-init\0"),
        "{what}: {cmdline:?}"
    );
    assert!(environ.bytes().all(|b| b == 0), "{what}: {environ:?}");
}

/// A sandbox started by a CLI with a secret in its environment and on its command line: its
/// init's /proc cmdline and environ (read as root on the host, and cmdline inside) show
/// neither, for a throwaway run and a persistent sandbox, and the sandbox still works.
#[test]
fn the_init_keeps_nothing_of_the_cli() {
    let ak = Ak::new();
    let secret_env = format!("env-secret-{}", std::process::id());
    let secret_arg = format!("arg-secret-{}", std::process::id());
    let mut run = ak.cmd(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline; echo; echo ready; sleep 60",
        &secret_arg,
    ]);
    run.env("AK_TEST_SECRET", &secret_env)
        .stdout(std::process::Stdio::piped());
    let mut child = KillOnDrop(run.spawn().expect("spawn run"));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.0.stdout.take().expect("stdout"),
    ));
    let inside = lines.next().expect("a line").expect("read");
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    assert!(inside.starts_with("agentkernel-init "), "{inside:?}");
    assert!(!inside.contains(&secret_arg), "{inside:?}");
    let cli = child.0.id();
    let init: u32 = std::fs::read_to_string(format!("/proc/{cli}/task/{cli}/children"))
        .expect("children")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the run's init");
    assert_init_is_clean(init, &[&secret_env, &secret_arg], "run");
    drop(child);

    let mut create = ak.cmd(&["create", "p", "--no-network", "--image", "host"]);
    create.env("AK_TEST_SECRET", &secret_env);
    let out: Out = create.output().expect("create").into();
    assert_eq!(out.code, 0, "{out:?}");
    let mut start = ak.cmd(&["start", "p"]);
    start.env("AK_TEST_SECRET", &secret_env);
    let out: Out = start.output().expect("start").into();
    assert_eq!(out.code, 0, "{out:?}");
    let init = ak.pid_of("p").expect("pid");
    assert_init_is_clean(init, &[&secret_env, "start"], "persistent");
    let out = ak.ok(&[
        "exec",
        "p",
        "--",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline",
    ]);
    assert!(out.stdout.starts_with("agentkernel-init "), "{out:?}");
    ak.ok(&["stop", "p"]);
    assert!(process_is_dead(init));
}

/// The same for sandboxes a server (`serve --api-key`, with a secret in its environment)
/// starts through its boot helper: a persistent one and a throwaway run.
#[test]
fn the_init_keeps_nothing_of_the_server() {
    let ak = Ak::new();
    let key = format!("sk-serve-{}", std::process::id());
    let secret_env = format!("server-env-{}", std::process::id());
    let mut cmd = serve::serve_cmd(&ak, &["--no-pool", "--api-key", &key]);
    cmd.env("AK_TEST_SERVER_SECRET", &secret_env);
    let srv = serve::ServeProcess::spawn(cmd);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(90))
        .build()
        .expect("client");
    let post = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let resp = client
            .post(format!("{}{path}", srv.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .expect("request");
        let status = resp.status();
        let json: serde_json::Value = resp.json().expect("json");
        assert!(status.is_success(), "{path}: {status} {json}");
        json["data"].clone()
    };
    let info = post(
        "/sandboxes",
        serde_json::json!({"name": "s", "image": "host", "no_network": true}),
    );
    let init = info["pid"].as_u64().expect("pid") as u32;
    assert_init_is_clean(init, &[&key, &secret_env, "serve"], "server's sandbox");
    let out = post(
        "/sandboxes/s/exec",
        serde_json::json!({"command": ["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"]}),
    );
    assert!(
        out["stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("agentkernel-init ")),
        "{out}"
    );
    let run = post(
        "/run",
        serde_json::json!({"command": ["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"], "image": "host", "no_network": true}),
    );
    let stdout = run["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.starts_with("agentkernel-init ") && !stdout.contains(&key),
        "{run}"
    );
    post("/sandboxes/s/stop", serde_json::json!({}));
    assert!(process_is_dead(init));
}

/// Bytes allocated on the host under `dir`.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += meta.blocks() * 512;
        if meta.is_dir() {
            total += allocated(&entry.path());
        }
    }
    total
}

/// A persistent sandbox with `--disk 64` writing 100 MB: the write ends with ENOSPC, the host
/// holds no more than the 64 MB image for it, and what it wrote survives stop and start (and
/// `cp`). Removing it deletes the image.
#[test]
fn a_persistent_sandbox_cannot_write_past_its_disk_limit() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "full",
        "--no-network",
        "--disk",
        "64",
        "--image",
        "host",
    ]);
    ak.ok(&["start", "full"]);
    let out = ak.run(&[
        "exec",
        "full",
        "--",
        "sh",
        "-c",
        "echo kept > /kept; dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo rc=$?",
    ]);
    assert!(
        out.stdout.contains("No space left on device") && !out.stdout.contains("rc=0"),
        "{out:?}"
    );
    let dir = ak.home.path().join("sandboxes/full");
    let used = allocated(&dir);
    assert!(
        used <= 65 * 1024 * 1024,
        "the sandbox holds {used} bytes of the host's disk"
    );
    let host_file = ak.cwd.path().join("in.txt");
    std::fs::write(&host_file, "copied\n").expect("write");
    ak.ok(&["cp", host_file.to_str().expect("utf8"), "full:/copied.txt"]);
    ak.ok(&["stop", "full"]);
    ak.ok(&["start", "full"]);
    let out = ak.ok(&["exec", "full", "--", "cat", "/kept", "/copied.txt"]);
    assert_eq!(out.stdout, "kept\ncopied\n");
    ak.ok(&["remove", "full"]);
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// A sandbox made before disk images (its upper layer a host directory) keeps its files: they
/// are copied into its new image at its next start.
#[test]
fn an_older_sandbox_keeps_its_files() {
    let ak = Ak::new();
    ak.ok(&[
        "create",
        "old",
        "--no-network",
        "--disk",
        "64",
        "--image",
        "host",
    ]);
    let upper = ak.home.path().join("sandboxes/old/upper");
    std::fs::create_dir_all(upper.join("etc")).expect("mkdir");
    std::fs::write(upper.join("etc/written-before"), "old layer\n").expect("write");
    ak.ok(&["start", "old"]);
    let out = ak.ok(&["exec", "old", "--", "cat", "/etc/written-before"]);
    assert_eq!(out.stdout, "old layer\n");
    assert!(!upper.exists(), "the old upper directory is left");
}

/// A throwaway run with `--disk 64` writing 100 MB to its root, /tmp and /dev/shm: each write
/// ends with ENOSPC.
#[test]
fn a_run_cannot_write_past_its_disk_limit() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--no-network",
        "--disk",
        "64",
        "--",
        "sh",
        "-c",
        "for d in / /tmp /dev/shm; do dd if=/dev/zero of=$d/big bs=1M count=100 2>/dev/null; echo \"$d rc=$?\"; rm -f $d/big; done",
    ]);
    assert_eq!(out.stdout, "/ rc=1\n/tmp rc=1\n/dev/shm rc=1\n", "{out:?}");
}

/// A run keeps its root and /tmp in memory: filling them past the memory limit (the disk limit
/// being larger) ends in the OOM killer, and the message says it was files, not a memory hog,
/// and what to do. (Only where the init starts the command: with a network the OOM killer may
/// take the sandbox's init first, its filesystems go with it, and the plain message is given;
/// see docs/reliability.md.)
#[test]
fn a_disk_fill_past_the_memory_limit_says_it_was_files() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--memory",
        "64",
        "--no-network",
        "--",
        "sh",
        "-c",
        "exec dd if=/dev/zero of=/tmp/fill bs=1M count=200",
    ]);
    assert_eq!(out.code, 137, "{out:?}");
    assert!(
        out.stderr.contains("out of memory (sandbox limit 64 MB)")
            && out
                .stderr
                .contains("MB of it were files written in the sandbox"),
        "{out:?}"
    );
}

/// Masked paths (where a bind would show agentkernel's state directory) are empty and
/// read-only inside, even inside a read-write project mount, and the host's files under them
/// stay as they were. The path is put into the sandbox's stored spec, as the engine does.
#[test]
fn masked_paths_are_empty_and_read_only() {
    let ak = Ak::new();
    let state = ak.cwd.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("secret"), "state secret\n").expect("write");
    let mut create = ak.cmd(&[
        "create",
        "m",
        "-p",
        "permissive",
        "--no-network",
        "--image",
        "host",
    ]);
    let home = tempfile::tempdir().expect("home");
    create.env("HOME", home.path());
    let out: Out = create.output().expect("create").into();
    assert_eq!(out.code, 0, "{out:?}");
    {
        let store = agentkernel_engine::store::Store::open(ak.home.path()).expect("store");
        let mut spec = store.get("m").expect("get").expect("record").spec;
        spec.policy.masked_paths = vec![
            PathBuf::from("/workspace/state"),
            PathBuf::from("/workspace/not-there"),
        ];
        store.set_spec("m", &spec).expect("set spec");
    }
    ak.ok(&["start", "m"]);
    let out = ak.run(&[
        "exec",
        "m",
        "--",
        "sh",
        "-c",
        "ls -A /workspace/state; echo listed; cat /workspace/state/secret; \
         touch /workspace/state/x 2>&1; echo written >/workspace/state/secret; \
         test -e /workspace/not-there || echo absent; touch /workspace/ok && echo project-writable",
    ]);
    assert!(
        out.stdout.starts_with("listed\n")
            && out.stdout.contains("absent\n")
            && out.stdout.ends_with("project-writable\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("Read-only file system") && !out.stdout.contains("state secret"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("secret")).expect("read"),
        "state secret\n"
    );
    assert!(!state.join("x").exists());
    assert!(!ak.cwd.path().join("not-there").exists());
}
