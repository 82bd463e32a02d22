//! The cgroup v2 device program (`devices::attach_v2`) on this machine's kernel: attached to a
//! cgroup2 directory the test makes, it keeps a process in that group from opening a real loop
//! device or making a device node, and lets it use the sandbox's own devices. The same process
//! in a group without the program opens the loop device, so the test fails without the filter.
//!
//! Needs root and a cgroup2 hierarchy (on a v1/v2 hybrid host such as the CI machine, the one
//! at /sys/fs/cgroup/unified: cgroup device programs attached there are enforced for its
//! members, though agentkernel uses the v1 devices controller on such a host).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(mountpoint))
        })
        .expect("no cgroup2 hierarchy is mounted: this test needs one (mount -t cgroup2)")
}

/// A loop device backed by a temporary file, detached on drop.
struct LoopDevice {
    path: String,
    _backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    fn new() -> LoopDevice {
        let mut backing = tempfile::NamedTempFile::new().expect("temp file");
        backing.write_all(&[0xAB; 4096]).expect("write");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.path())
            .output()
            .expect("losetup (util-linux) is needed");
        assert!(out.status.success(), "losetup: {out:?}");
        LoopDevice {
            path: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            _backing: backing,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

/// A cgroup2 directory made for the test, removed on drop.
struct TestGroup(PathBuf);

impl TestGroup {
    fn new(name: &str) -> TestGroup {
        let dir = cgroup2_root().join(format!("agentkernel-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("create a cgroup2 directory (needs root)");
        TestGroup(dir)
    }

    /// Runs `script` with sh in this group; returns its output.
    fn run(&self, script: &str) -> String {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .expect("cgroup.procs");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        // SAFETY: the hook only calls write(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run sh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Probes each device; prints one word per probe.
fn probe_script(loop_dev: &str, scratch: &Path) -> String {
    let node = scratch.join("node");
    format!(
        "head -c 1 {loop_dev} >/dev/null 2>&1 && echo loop-read || echo loop-read-denied; \
         printf x 2>/dev/null >{loop_dev} && echo loop-write || echo loop-write-denied; \
         mknod {node} c 1 3 2>/dev/null && echo mknod || echo mknod-denied; \
         head -c 1 /dev/zero | wc -c | tr -d ' '; \
         head -c 1 /dev/urandom | wc -c | tr -d ' '; \
         echo to-null >/dev/null && echo null-ok",
        node = node.display()
    )
}

#[test]
fn the_v2_device_program_denies_all_but_the_sandbox_devices() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it makes cgroups, loop devices and BPF programs"
    );
    let loop_dev = LoopDevice::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let script = probe_script(&loop_dev.path, scratch.path());

    // Without the program the probe reaches the device: the test can tell.
    let plain = TestGroup::new("plain");
    let out = plain.run(&script);
    assert!(
        out.starts_with("loop-read\nloop-write\nmknod\n"),
        "without the filter: {out}"
    );
    let _ = std::fs::remove_file(scratch.path().join("node"));

    // As agentkernel uses it: on a parent group, twice (the second time finds it there), and
    // the process in a group below it.
    let parent = TestGroup::new("parent");
    agentkernel_native::devices::attach_v2(&parent.0).expect("attach the device program");
    agentkernel_native::devices::attach_v2(&parent.0).expect("find the device program");
    let filtered = TestGroup(parent.0.join("sandbox"));
    std::fs::create_dir(&filtered.0).expect("create a child group");
    let out = filtered.run(&script);
    assert_eq!(
        out, "loop-read-denied\nloop-write-denied\nmknod-denied\n1\n1\nnull-ok\n",
        "with the filter"
    );
    assert!(!scratch.path().join("node").exists());
    drop(filtered);
    let names = agentkernel_native::devices::attached_programs(&parent.0).expect("query");
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("akdev_"), "{names:?}");
}
