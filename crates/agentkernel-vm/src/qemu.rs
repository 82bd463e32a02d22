//! QEMU's `-M microvm` machine: the command line for our guest kernel, and booting a guest to
//! its end while collecting its serial console.
//!
//! The command line follows what was measured on this project's CI machine (issue 18):
//! - `-M microvm,acpi=off`: with ACPI on, the tiny guest kernel loses its serial output without
//!   a word. Without ACPI the virtio-mmio devices reach the kernel on its command line, which
//!   QEMU writes itself (`virtio_mmio.device=…`).
//! - `reboot=t` on the kernel command line and `-no-reboot`: the guest has no ACPI to power off
//!   with, so it ends by rebooting (a triple fault), and QEMU exits instead of restarting it.
//!   `panic=-1` turns a panic into that same exit.
//! - Under TCG, `tsc_early_khz=<host kHz> tsc=reliable`: otherwise the guest calibrates its TSC
//!   against the emulated timer and some boots hang under CPU contention.
//! - `-accel tcg` unless a probe saw a guest boot under KVM: a `/dev/kvm` node proves nothing
//!   (here it is PVM, which boots no stock kernel). The probe is not written yet; callers
//!   choose [`Accel`] themselves.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::VmError;

/// How QEMU runs the guest's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow, but boots anywhere.
    Tcg,
    /// Hardware virtualization through `/dev/kvm`; only where a guest was seen to boot with it.
    Kvm,
}

/// One micro-VM to start: QEMU binary, kernel, initramfs, size and console.
#[derive(Clone, Debug)]
pub struct MicroVm {
    /// The QEMU binary; `qemu-system-x86_64` from `PATH` by default.
    pub qemu: PathBuf,
    /// The guest kernel, an ELF `vmlinux` with PVH entry.
    pub kernel: PathBuf,
    /// A newc cpio initramfs ([`crate::initramfs`]), if any.
    pub initrd: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// The TSC frequency the guest is told (`tsc_early_khz`); see [`crate::host::tsc_khz`].
    pub tsc_khz: Option<u64>,
    /// More kernel command line arguments, after ours.
    pub cmdline_extra: Vec<String>,
    /// virtio-blk disks, in order: the guest sees them as `/dev/vda`, `/dev/vdb`, …
    pub drives: Vec<Drive>,
    /// virtio-serial ports, each a unix-socket chardev QEMU listens on; the guest finds them by
    /// name under `/sys/class/virtio-ports/*/name`.
    pub serial_ports: Vec<SerialPort>,
    /// A QMP monitor on this unix socket (QEMU listens).
    pub qmp: Option<PathBuf>,
    /// Where the guest's serial console goes.
    pub console: Console,
    /// Guest RAM in a file rather than anonymous memory (snapshot templates and clones).
    pub memory_file: Option<MemoryFile>,
    /// Waits for its state over QMP (`migrate-incoming`) instead of booting.
    pub incoming: bool,
}

/// Guest RAM backed by a file: `shared` writes go to the file (a template being made);
/// otherwise the file is mapped copy-on-write and the VM's writes stay private (a clone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryFile {
    pub path: PathBuf,
    pub shared: bool,
}

/// A disk image the guest sees as a virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    /// A raw image file.
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtio-serial port named `name` in the guest, backed on the host by a unix socket QEMU
/// listens on at `socket` (one client at a time; it listens again when the client leaves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialPort {
    pub name: String,
    pub socket: PathBuf,
}

/// Where the guest's serial console (`ttyS0`: kernel log, early boot) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// QEMU's stdout ([`run_to_exit`] collects it).
    Stdio,
    /// Appended to a file (a detached VM's log).
    File(PathBuf),
}

impl MicroVm {
    /// A 256 MiB, one-CPU VM under TCG booting `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: kernel.into(),
            initrd: None,
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Tcg,
            tsc_khz: None,
            cmdline_extra: Vec::new(),
            drives: Vec::new(),
            serial_ports: Vec::new(),
            qmp: None,
            console: Console::Stdio,
            memory_file: None,
            incoming: false,
        }
    }

    /// The guest kernel's command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut args = vec![
            "console=ttyS0".to_owned(),
            "reboot=t".to_owned(),
            "panic=-1".to_owned(),
        ];
        if let Some(khz) = self.tsc_khz {
            args.push(format!("tsc_early_khz={khz}"));
            args.push("tsc=reliable".to_owned());
        }
        args.extend(self.cmdline_extra.iter().cloned());
        args.join(" ")
    }

    /// QEMU's arguments: the serial console on QEMU's stdout, no display, no monitor, no default
    /// devices, and no restart when the guest reboots.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-M");
        if let Some(mem) = &self.memory_file {
            push("microvm,acpi=off,memory-backend=mem");
            push("-object");
            push(&format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                self.memory_mib,
                chardev_path(&mem.path),
                if mem.shared { "on" } else { "off" }
            ));
        } else {
            push("microvm,acpi=off");
        }
        push("-accel");
        match self.accel {
            Accel::Tcg => push("tcg"),
            Accel::Kvm => {
                push("kvm");
                push("-cpu");
                push("host");
            }
        }
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        for flag in ["-no-reboot", "-nodefaults", "-no-user-config"] {
            push(flag);
        }
        // QEMU's own seccomp filter: no obsolete system calls, no scheduler or resource
        // changes. Spawning stays allowed: migration to and from a file runs `cat` (`exec:`
        // URIs; QEMU 7.2 has no `file:` migration). `elevateprivileges=deny` would be next,
        // but QEMU 7.2 then fails to `-daemonize` (exit status 1, no message; tried).
        push("-sandbox");
        push("on,obsolete=deny,resourcecontrol=deny");
        push("-display");
        push("none");
        match &self.console {
            Console::Stdio => {
                push("-serial");
                push("stdio");
            }
            Console::File(path) => {
                push("-chardev");
                push(&format!(
                    "file,id=console,path={},append=on",
                    chardev_path(path)
                ));
                push("-serial");
                push("chardev:console");
            }
        }
        for (i, drive) in self.drives.iter().enumerate() {
            push("-drive");
            push(&format!(
                "if=none,id=disk{i},format=raw,file={}{}",
                chardev_path(&drive.path),
                if drive.read_only { ",readonly=on" } else { "" }
            ));
            push("-device");
            push(&format!("virtio-blk-device,drive=disk{i}"));
        }
        if !self.serial_ports.is_empty() {
            push("-device");
            push("virtio-serial-device,max_ports=32");
        }
        for (i, port) in self.serial_ports.iter().enumerate() {
            push("-chardev");
            push(&format!(
                "socket,id=port{i},path={},server=on,wait=off",
                chardev_path(&port.socket)
            ));
            push("-device");
            push(&format!(
                "virtserialport,chardev=port{i},name={}",
                port.name
            ));
        }
        if let Some(qmp) = &self.qmp {
            push("-chardev");
            push(&format!(
                "socket,id=qmp,path={},server=on,wait=off",
                chardev_path(qmp)
            ));
            push("-mon");
            push("chardev=qmp,mode=control");
        }
        if self.incoming {
            push("-incoming");
            push("defer");
        }
        push("-append");
        push(&self.kernel_cmdline());
        a.push("-kernel".into());
        a.push(self.kernel.clone().into_os_string());
        if let Some(initrd) = &self.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into_os_string());
        }
        a
    }

    /// What a failure to start QEMU means: not installed, or another reason.
    pub fn spawn_error(&self, source: std::io::Error) -> VmError {
        if source.kind() == std::io::ErrorKind::NotFound {
            VmError::QemuMissing {
                qemu: self.qemu.clone(),
            }
        } else {
            VmError::Spawn {
                qemu: self.qemu.clone(),
                source,
            }
        }
    }

    /// The QEMU command, stdin from `/dev/null`, stdout (the serial console) and stderr piped.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// A path as a QEMU option value: commas are doubled (QEMU's escape inside `key=value,…`).
fn chardev_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// One line of the serial console and when it arrived, counted from QEMU's start.
#[derive(Clone, Debug)]
pub struct SerialLine {
    pub at: Duration,
    pub text: String,
}

/// What a VM printed and how it ended.
#[derive(Debug)]
pub struct RunOutput {
    /// The serial console, line by line (carriage returns removed).
    pub serial: Vec<SerialLine>,
    /// What QEMU itself printed on stderr.
    pub stderr: String,
    pub status: ExitStatus,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

impl RunOutput {
    /// The first serial line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<&SerialLine> {
        self.serial.iter().find(|l| l.text.contains(needle))
    }
}

/// Kills and reaps QEMU if it is still running when dropped (a timeout, a panicking caller).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots `vm` and waits until QEMU exits by itself (the guest rebooted, powered off or
/// panicked), at most `timeout`; returns the serial console and QEMU's exit status. After
/// `timeout` QEMU is killed and the error carries the end of the console.
pub fn run_to_exit(vm: &MicroVm, timeout: Duration) -> Result<RunOutput, VmError> {
    if !vm.kernel.is_file() {
        return Err(VmError::KernelMissing(vm.kernel.clone()));
    }
    let start = Instant::now();
    let child = vm.command().spawn().map_err(|e| vm.spawn_error(e))?;
    let mut child = KillOnDrop(child);
    let (Some(stdout), Some(mut stderr)) = (child.0.stdout.take(), child.0.stderr.take()) else {
        return Err(VmError::Console(std::io::Error::other(
            "QEMU was started without piped stdout and stderr",
        )));
    };

    // Lines go to the channel as they arrive, so that a timeout still has the console so far.
    let (tx, rx) = mpsc::channel::<SerialLine>();
    let console = thread::spawn(move || read_lines(stdout, start, &tx));
    let errors = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });

    let mut serial = Vec::new();
    let deadline = start + timeout;
    // The console thread ends (and drops the sender) when QEMU closes its stdout, i.e. exits.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => serial.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                drop(child);
                serial.extend(rx.try_iter());
                let tail = serial
                    .iter()
                    .rev()
                    .take(30)
                    .rev()
                    .map(|l| l.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(VmError::Timeout {
                    after: timeout,
                    tail,
                });
            }
        }
    }
    let read = console
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the console reader panicked")));
    let status = child.0.wait().map_err(VmError::Console)?;
    let elapsed = start.elapsed();
    read.map_err(VmError::Console)?;
    let stderr = errors.join().unwrap_or_default();
    Ok(RunOutput {
        serial,
        stderr,
        status,
        elapsed,
    })
}

fn read_lines(
    stdout: impl Read,
    start: Instant,
    tx: &mpsc::Sender<SerialLine>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .replace('\r', "");
        if tx
            .send(SerialLine {
                at: start.elapsed(),
                text,
            })
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Whether `path` is an ELF file (what `-kernel` needs for a PVH boot of a `vmlinux`).
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(vm: &MicroVm) -> Vec<String> {
        vm.args()
            .into_iter()
            .map(|a| a.into_string().expect("into_string"))
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).expect("position");
        &args[i + 1]
    }

    #[test]
    fn tcg_command_line_has_the_measured_settings() {
        let mut vm = MicroVm::new("/k/vmlinux");
        vm.initrd = Some("/k/initramfs.cpio".into());
        vm.tsc_khz = Some(2_100_000);
        vm.cmdline_extra = vec!["quiet".into()];
        let args = args_of(&vm);
        assert_eq!(after(&args, "-M"), "microvm,acpi=off");
        assert_eq!(after(&args, "-accel"), "tcg");
        assert!(!args.iter().any(|a| a == "-cpu"));
        assert!(args.iter().any(|a| a == "-no-reboot"));
        assert_eq!(after(&args, "-serial"), "stdio");
        assert_eq!(after(&args, "-kernel"), "/k/vmlinux");
        assert_eq!(after(&args, "-initrd"), "/k/initramfs.cpio");
        assert_eq!(after(&args, "-m"), "256");
        assert_eq!(
            after(&args, "-append"),
            "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2100000 tsc=reliable quiet"
        );
    }

    #[test]
    fn drives_ports_qmp_and_a_console_file_become_devices() {
        let mut vm = MicroVm::new("/k/vmlinux");
        vm.drives = vec![
            Drive {
                path: "/s/image,1.ext4".into(),
                read_only: true,
            },
            Drive {
                path: "/s/upper.ext4".into(),
                read_only: false,
            },
        ];
        vm.serial_ports = vec![SerialPort {
            name: "ak.0".into(),
            socket: "/s/port0.sock".into(),
        }];
        vm.qmp = Some("/s/qmp.sock".into());
        vm.console = Console::File("/s/console.log".into());
        let joined = args_of(&vm).join(" ");
        for want in [
            "-drive if=none,id=disk0,format=raw,file=/s/image,,1.ext4,readonly=on",
            "-device virtio-blk-device,drive=disk0",
            "-drive if=none,id=disk1,format=raw,file=/s/upper.ext4 ",
            "-device virtio-serial-device,max_ports=32",
            "-chardev socket,id=port0,path=/s/port0.sock,server=on,wait=off",
            "-device virtserialport,chardev=port0,name=ak.0",
            "-chardev socket,id=qmp,path=/s/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control",
            "-chardev file,id=console,path=/s/console.log,append=on -serial chardev:console",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_initrd_means_no_flag() {
        let mut vm = MicroVm::new("/k/vmlinux");
        vm.accel = Accel::Kvm;
        let args = args_of(&vm);
        assert_eq!(after(&args, "-accel"), "kvm");
        assert_eq!(after(&args, "-cpu"), "host");
        assert!(!args.iter().any(|a| a == "-initrd"));
        assert_eq!(after(&args, "-append"), "console=ttyS0 reboot=t panic=-1");
    }

    #[test]
    fn missing_kernel_and_missing_qemu_say_what_to_do() {
        let err = run_to_exit(
            &MicroVm::new("/nonexistent/vmlinux"),
            Duration::from_secs(1),
        )
        .expect_err("run_to_exit should fail");
        assert!(matches!(err, VmError::KernelMissing(_)), "{err}");
        assert!(err.to_string().contains("build-kernel.sh"), "{err}");

        let kernel = tempfile::NamedTempFile::new().expect("new");
        let mut vm = MicroVm::new(kernel.path());
        vm.qemu = "/nonexistent/qemu-system-x86_64".into();
        let err = run_to_exit(&vm, Duration::from_secs(1)).expect_err("run_to_exit should fail");
        assert!(matches!(err, VmError::QemuMissing { .. }), "{err}");
        assert!(err.to_string().contains("qemu-system-x86"), "{err}");
    }
}
