//! The guest kernel built from `kernel/agentkernel.config` boots under QEMU `-M microvm` with
//! TCG, runs an initramfs `/init`, and the VM ends by itself.
//!
//! The kernel is `AGENTKERNEL_KERNEL` when set, otherwise what `scripts/build-kernel.sh` prints
//! (it builds the kernel on first use, several minutes on two cores, then caches it). `/init`
//! is a static C program (`tests/init/boot_marker.c`, built with `gcc -static`) that prints a
//! marker line and reboots, which with `reboot=t` and `-no-reboot` ends QEMU. TCG only: the
//! `/dev/kvm` of this project's CI machine is PVM and boots no stock kernel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentkernel_vm::host;
use agentkernel_vm::initramfs::Initramfs;
use agentkernel_vm::qemu::{self, MicroVm};

const MARKER: &str = "AGENTKERNEL-BOOT-MARKER";
/// Far above the ~1 s a boot takes under TCG; only a hung guest reaches it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("AGENTKERNEL_KERNEL") {
        return PathBuf::from(k);
    }
    let script = repo_root().join("scripts/build-kernel.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("running scripts/build-kernel.sh");
    assert!(
        out.status.success(),
        "scripts/build-kernel.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).expect("from_utf8");
    PathBuf::from(
        path.lines()
            .last()
            .expect("build-kernel.sh printed no path"),
    )
}

fn static_init(dir: &Path) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/init/boot_marker.c");
    let bin = dir.join("init");
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("running gcc (the machine's C compiler)");
    assert!(
        out.status.success(),
        "gcc -static failed (is libc6-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&bin).expect("read")
}

#[test]
fn kernel_built_from_the_fragment_boots_to_init_under_tcg() {
    let kernel = kernel();
    assert!(
        qemu::is_elf(&kernel),
        "{} is not an ELF vmlinux (PVH boot needs one)",
        kernel.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cpio = Initramfs::new();
    cpio.dir("dev", 0o755).expect("dir");
    cpio.char_dev("dev/console", 0o600, 5, 1).expect("char_dev");
    cpio.file("init", 0o755, &static_init(dir.path()))
        .expect("file");
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, cpio.finish()).expect("write");

    let mut vm = MicroVm::new(&kernel);
    vm.initrd = Some(initrd);
    vm.tsc_khz = Some(host::tsc_khz().expect("tsc_khz"));
    let out = qemu::run_to_exit(&vm, BOOT_TIMEOUT).expect("run_to_exit");
    let console = out
        .serial
        .iter()
        .map(|l| format!("[{:>7.3}] {}", l.at.as_secs_f64(), l.text))
        .collect::<Vec<_>>()
        .join("\n");

    let marker = out.find(MARKER).unwrap_or_else(|| {
        panic!(
            "no {MARKER} on the serial console:\n{console}\nQEMU stderr: {}",
            out.stderr
        )
    });
    assert!(
        marker.text.contains("release=6.1.") && marker.text.contains("machine=x86_64"),
        "{}",
        marker.text
    );
    assert!(
        out.find("Kernel panic").is_none(),
        "the guest panicked:\n{console}"
    );
    assert!(
        out.status.success(),
        "QEMU exited with {} (stderr: {})\n{console}",
        out.status,
        out.stderr
    );
    // The figures docs/microvm.md quotes (visible with --nocapture).
    eprintln!(
        "kernel {}: marker after {:.3} s, QEMU exited after {:.3} s",
        kernel.display(),
        marker.at.as_secs_f64(),
        out.elapsed.as_secs_f64()
    );
}
