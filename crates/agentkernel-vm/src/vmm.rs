//! One running VMM (QEMU) and its runtime directory: started detached (`-daemonize`, so it
//! outlives the CLI process that started it and is found again from its pid file), driven over
//! QMP, and ended with a QMP `quit` or, when it does not answer, a kill.
//!
//! The runtime directory `<state>/vm/<16 hex>/` (short: unix socket paths have 108 bytes)
//! holds QMP's socket, one socket per virtio-serial port ([`PORTS`] for requests, one lifeline
//! port), the serial console's log, QEMU's own stderr and its pid file. An `owner.lock` flock is
//! held while a VM starts (the store does not know it yet), which is how `gc` tells a VM in
//! use from a leftover.

use crate::VmError;
use crate::qemu::{Console, MicroVm, SerialPort};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Request ports per VM: this many commands or file operations can run at once, from any
/// number of host processes; more wait for a port.
pub const PORTS: usize = 8;
/// The guest's name of request port `i` is `ak.<i>`; the lifeline port is this one.
pub const LIFELINE_PORT: &str = "ak.life";

/// The files of one VM on the host.
#[derive(Clone, Debug)]
pub struct RuntimeDir {
    pub dir: PathBuf,
}

impl RuntimeDir {
    /// The directory of instance `instance` under the state directory `home`.
    pub fn of(home: &Path, instance: &str) -> RuntimeDir {
        let digest = sha2::Sha256::digest(instance.as_bytes());
        RuntimeDir {
            dir: home.join("vm").join(hex::encode(&digest[..8])),
        }
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn port(&self, i: usize) -> PathBuf {
        self.dir.join(format!("port{i}.sock"))
    }
    pub fn port_lock(&self, i: usize) -> PathBuf {
        self.dir.join(format!("port{i}.lock"))
    }
    pub fn lifeline(&self) -> PathBuf {
        self.dir.join("life.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("vmm.pid")
    }
    pub fn owner_lock(&self) -> PathBuf {
        self.dir.join("owner.lock")
    }
    /// Present for a throwaway sandbox's VM.
    pub fn ephemeral_marker(&self) -> PathBuf {
        self.dir.join("ephemeral")
    }
    /// The instance this directory belongs to (written at launch), for `gc`.
    pub fn instance_file(&self) -> PathBuf {
        self.dir.join("instance")
    }

    /// Adds this directory's sockets and console to `vm`.
    pub fn wire(&self, vm: &mut MicroVm) {
        vm.serial_ports = (0..PORTS)
            .map(|i| SerialPort {
                name: format!("ak.{i}"),
                socket: self.port(i),
            })
            .collect();
        vm.serial_ports.push(SerialPort {
            name: LIFELINE_PORT.to_string(),
            socket: self.lifeline(),
        });
        vm.qmp = Some(self.qmp());
        vm.console = Console::File(self.console());
    }

    /// The last lines of the guest's console and of QEMU's stderr, for an error message.
    pub fn tail(&self) -> String {
        let mut out = String::new();
        for (what, path) in [("QEMU", self.vmm_log()), ("guest console", self.console())] {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(15);
                if from < lines.len() {
                    out.push_str(&format!("\n--- {what} ({}):\n", path.display()));
                    out.push_str(&lines[from..].join("\n"));
                }
            }
        }
        out
    }
}

/// A running VMM: its pid and the start time that makes the pid unambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vmm {
    pub pid: u32,
    pub start_time: u64,
}

/// Starts `vm` detached (QEMU `-daemonize`); returns once QEMU is set up (its sockets listen),
/// which is before the guest has booted.
pub fn launch(vm: &MicroVm, rt: &RuntimeDir) -> Result<Vmm, VmError> {
    if !vm.kernel.is_file() {
        return Err(VmError::KernelMissing(vm.kernel.clone()));
    }
    let log = std::fs::File::create(rt.vmm_log()).map_err(|source| VmError::Io {
        what: format!("create {}", rt.vmm_log().display()),
        source,
    })?;
    let log_err = log.try_clone().map_err(|source| VmError::Io {
        what: "duplicate the VMM log".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new(&vm.qemu);
    cmd.args(vm.args())
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(rt.pid_file())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let status = cmd.status().map_err(|e| vm.spawn_error(e))?;
    if !status.success() {
        return Err(VmError::Launch(format!(
            "QEMU exited with {status}{}",
            rt.tail()
        )));
    }
    read_pid(rt).ok_or_else(|| VmError::Launch(format!("QEMU left no pid file{}", rt.tail())))
}

/// The VMM of `rt` from its pid file, if it is still running.
pub fn read_pid(rt: &RuntimeDir) -> Option<Vmm> {
    let pid: u32 = std::fs::read_to_string(rt.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let start_time = agentkernel_sys::proc::start_time(pid)?;
    Some(Vmm { pid, start_time })
}

impl Vmm {
    pub fn is_alive(&self) -> bool {
        agentkernel_sys::proc::is_alive(self.pid, self.start_time)
    }

    /// Ends the VMM: a QMP `quit` (QEMU flushes its disks and exits), then a kill if it is
    /// still there after `grace`.
    pub fn end(&self, rt: &RuntimeDir, grace: Duration) {
        if !self.is_alive() {
            return;
        }
        if grace > Duration::ZERO
            && let Ok(mut qmp) = Qmp::connect(&rt.qmp(), grace)
        {
            let _ = qmp.execute("quit", None);
        }
        let deadline = Instant::now() + grace;
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// SIGKILL, only while the pid is still this VMM.
    pub fn kill(&self) {
        if self.is_alive()
            && let Some(pid) = agentkernel_sys::signal::pid(self.pid)
        {
            agentkernel_sys::signal::signal_process(pid, libc_sigkill());
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

/// A QMP client: the greeting, capabilities negotiation, then one command at a time.
/// Hand-written rather than the `qapi` crate: four messages of JSON lines, and the crate's
/// generated schema (every QEMU command) would outweigh this backend.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, VmError> {
        let qmp_err = |e: std::io::Error| VmError::Qmp(format!("{}: {e}", path.display()));
        let stream = UnixStream::connect(path).map_err(qmp_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(qmp_err)?;
        let writer = stream.try_clone().map_err(qmp_err)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command`; its `return` value, or its `error` as an error. Events are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| VmError::Qmp(format!("send {command}: {e}")))?;
        loop {
            let reply = self.read()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(VmError::Qmp(format!("{command}: {err}")));
            }
        }
    }

    fn read(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| VmError::Qmp(format!("read: {e}")))?;
        if n == 0 {
            return Err(VmError::Qmp("QEMU closed the monitor".into()));
        }
        serde_json::from_str(&line).map_err(|e| VmError::Qmp(format!("{e}: {line}")))
    }
}
