//! Which accelerator guests run under: KVM only where our kernel has been seen to boot with
//! it, TCG otherwise. A `/dev/kvm` node proves nothing — on some hosts it is a PVM or nested
//! KVM that boots no stock kernel (measured on this project's CI machine: a Debian kernel dies
//! with an emulation failure at `lock cmpxchg16b`).
//!
//! The probe boots the real kernel once under `-accel kvm` with no root filesystem: a kernel
//! that reaches "VFS: Unable to mount root fs" has run all of its early boot (CPU setup,
//! timers, memory, virtio) on this KVM. The answer is cached per kernel and QEMU in
//! `~/.cache/agentkernel/accel-<hash>.json`, so it is paid once per machine.

use crate::host;
use crate::qemu::{self, Accel, MicroVm};
use serde_json::json;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The probe's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    /// Why, for `doctor`.
    pub reason: String,
}

/// What a kernel prints once it has booted as far as looking for its root filesystem.
const BOOTED: &str = "Unable to mount root fs";
/// A KVM boot to that point takes well under a second; a KVM that cannot run the kernel
/// stops the guest with an internal error and QEMU waits forever.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// The accelerator for `kernel` with `qemu`, probed on first use and cached.
pub fn choose(kernel: &Path, qemu: &Path) -> Choice {
    let cache = cache_file(kernel, qemu);
    if let Some(c) = cache.as_deref().and_then(read_cache) {
        return c;
    }
    let choice = probe(kernel, qemu);
    if let Some(path) = cache {
        let accel = match choice.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let doc = json!({ "accel": accel, "reason": choice.reason });
        if std::fs::write(&tmp, doc.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    choice
}

fn probe(kernel: &Path, qemu: &Path) -> Choice {
    let tcg = |reason: String| Choice {
        accel: Accel::Tcg,
        reason,
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return tcg("TCG (software emulation): /dev/kvm cannot be opened here".into());
    }
    let mut vm = MicroVm::new(kernel);
    vm.qemu = qemu.to_path_buf();
    vm.accel = Accel::Kvm;
    vm.tsc_khz = host::tsc_khz().ok();
    match qemu::run_to_exit(&vm, PROBE_TIMEOUT) {
        Ok(out) if out.find(BOOTED).is_some() => Choice {
            accel: Accel::Kvm,
            reason: "KVM: the guest kernel was seen to boot with it".into(),
        },
        Ok(out) => {
            let why = out
                .stderr
                .lines()
                .chain(out.serial.iter().map(|l| l.text.as_str()))
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_string();
            tcg(format!(
                "TCG (software emulation): /dev/kvm is present but the guest kernel does not boot with it ({why}) — a PVM or nested KVM that runs no stock kernel"
            ))
        }
        Err(crate::VmError::Timeout { after, .. }) => tcg(format!(
            "TCG (software emulation): /dev/kvm is present but the guest kernel did not boot with it within {after:?} (KVM stopped it: a PVM or nested KVM that runs no stock kernel)"
        )),
        Err(e) => tcg(format!(
            "TCG (software emulation): the guest kernel could not be tried under /dev/kvm: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
}

fn cache_file(kernel: &Path, qemu: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(kernel).ok()?;
    let mut h = sha2::Sha256::new();
    h.update(kernel.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(format!("{:?}", meta.modified().ok()).as_bytes());
    h.update(qemu.as_os_str().as_encoded_bytes());
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        home.join("agentkernel")
            .join(format!("accel-{}.json", hex::encode(&h.finalize()[..8]))),
    )
}

fn read_cache(path: &Path) -> Option<Choice> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let accel = match doc["accel"].as_str()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(Choice {
        accel,
        reason: doc["reason"].as_str()?.to_string(),
    })
}
