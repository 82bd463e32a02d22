//! Warm starts from snapshot clones, without sharing state between sandboxes.
//!
//! A template VM is booted once per machine description (kernel, initramfs, image disk, RAM,
//! CPUs, the boot options that stay fixed: read-only root, writable-layer size) with its RAM
//! in a file mapped shared, up to its guest agent's `Ready`; then stopped and saved with QMP
//! `migrate` and the `x-ignore-shared` capability: the device state goes to a small file, the
//! RAM stays in its file. Each throwaway sandbox then starts as a clone: QEMU maps that RAM
//! file copy-on-write (`share=off`, the clone's writes stay in its own memory), loads the
//! device state (`-incoming defer`, `migrate-incoming`) and continues. Clones are independent:
//! a write in one is in no other, and each is given its own hostname, the time and fresh
//! randomness (`Configure`) before anything runs in it.
//!
//! Persistent sandboxes boot cold: their writable disk is mounted at boot, which a template
//! cannot have done for them.

use crate::VmError;
use crate::channel::Channel;
use crate::qemu::{MemoryFile, MicroVm};
use crate::vmm::{self, Qmp, RuntimeDir, Vmm};
use serde_json::json;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A saved template: its RAM file and its device state.
#[derive(Clone, Debug)]
pub struct Template {
    pub ram: PathBuf,
    pub state: PathBuf,
}

const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The files a template was made from, with their size and modification time: a template
/// whose files changed or went can never be chosen again (they are part of its key).
fn inputs_of(vm: &MicroVm) -> String {
    [Some(&vm.kernel), vm.initrd.as_ref()]
        .into_iter()
        .flatten()
        .chain(vm.drives.iter().map(|d| &d.path))
        .map(|p| format!("{}\t{}", p.display(), stamp(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn stamp(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{} {:?}", m.len(), m.modified().ok()))
        .unwrap_or_else(|_| "gone".into())
}

/// Removes templates whose files changed or went (a new kernel, guest agent or image), unless
/// one is being made; returns what went. Running clones keep their private mapping.
pub fn collect_templates(templates: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(templates) else {
        return removed;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(inputs) = std::fs::read_to_string(dir.join("inputs")) else {
            continue;
        };
        let current = inputs.lines().all(|l| {
            l.split_once('\t')
                .is_some_and(|(p, s)| stamp(Path::new(p)) == s)
        });
        if current {
            continue;
        }
        let busy = std::fs::File::open(dir.join("lock")).is_ok_and(|f| {
            rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
        });
        if busy {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(format!(
                "micro-VM template {} (its kernel, agent or image changed)",
                e.file_name().to_string_lossy()
            ));
        }
    }
    removed
}

/// Where the template of `vm` (without sockets, console or memory settings of its own) lives.
fn template_dir(vm: &MicroVm, templates: &Path) -> PathBuf {
    let mut key = sha2::Sha256::new();
    for arg in vm.args() {
        key.update(arg.as_encoded_bytes());
        key.update(b"\0");
    }
    for file in [Some(&vm.kernel), vm.initrd.as_ref()]
        .into_iter()
        .flatten()
        .chain(vm.drives.iter().map(|d| &d.path))
    {
        if let Ok(m) = std::fs::metadata(file) {
            key.update(m.len().to_le_bytes());
            key.update(format!("{:?}", m.modified().ok()).as_bytes());
        }
    }
    templates.join(hex::encode(&key.finalize()[..8]))
}

/// The template for `base` (a machine with drives, kernel and command line, no ports or
/// memory file yet), made now if there is none. `wire` gives a runtime directory's sockets to
/// a machine (the same devices for the template and its clones).
pub fn template(
    base: &MicroVm,
    templates: &Path,
    policy: &agentkernel_proto::GuestPolicy,
) -> Result<Template, VmError> {
    let dir = template_dir(base, templates);
    let t = Template {
        ram: dir.join("ram"),
        state: dir.join("state"),
    };
    if t.state.is_file() {
        return Ok(t);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let _ = std::fs::write(dir.join("inputs"), inputs_of(base));
    let lock = std::fs::File::create(dir.join("lock"))
        .map_err(io(format!("create the lock of {}", dir.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        VmError::Io {
            what: format!("lock {}", dir.display()),
            source: e.into(),
        }
    })?;
    if t.state.is_file() {
        return Ok(t);
    }
    let rt = RuntimeDir {
        dir: dir.join("boot"),
    };
    let _ = std::fs::remove_dir_all(&rt.dir);
    std::fs::create_dir_all(&rt.dir).map_err(io(format!("create {}", rt.dir.display())))?;
    let mut vm = base.clone();
    rt.wire(&mut vm);
    vm.memory_file = Some(MemoryFile {
        path: t.ram.clone(),
        shared: true,
    });
    let vmm = vmm::launch(&vm, &rt)?;
    let saved = save(&rt, &vmm, &t, policy);
    vmm.kill();
    let _ = std::fs::remove_dir_all(&rt.dir);
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&t.ram);
        return Err(e);
    }
    Ok(t)
}

/// Waits for the template's agent, then saves it.
fn save(
    rt: &RuntimeDir,
    vmm: &Vmm,
    t: &Template,
    policy: &agentkernel_proto::GuestPolicy,
) -> Result<(), VmError> {
    // Ready, a command run (what every clone does first: fork, exec, the image's shell and
    // libraries read into the page cache, which the clones then share), then gone: the saved
    // agent waits for a host on every port. The command's result does not matter (an image
    // may have no `true`).
    let mut ch = Channel::open(rt, SAVE_TIMEOUT)?;
    let _ = warm_up(&mut ch, policy);
    drop(ch);
    let mut qmp = Qmp::connect(&rt.qmp(), SAVE_TIMEOUT)?;
    qmp.execute("stop", None)?;
    qmp.execute("migrate-set-capabilities", Some(ignore_shared()))?;
    let partial = t.state.with_extension("partial");
    qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("exec:cat > {}", shell_quote(&partial)) })),
    )?;
    wait_migration(&mut qmp, "saving the template")?;
    let _ = qmp.execute("quit", None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vmm.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::rename(&partial, &t.state).map_err(io(format!("rename to {}", t.state.display())))
}

/// Starts a clone of `t` as `vm` (wired to its runtime directory): launched waiting for its
/// state, loaded, continued. Returns once it runs; its agent answers on its ports.
pub fn start_clone(vm: &mut MicroVm, rt: &RuntimeDir, t: &Template) -> Result<Vmm, VmError> {
    vm.memory_file = Some(MemoryFile {
        path: t.ram.clone(),
        shared: false,
    });
    vm.incoming = true;
    let vmm = vmm::launch(vm, rt)?;
    let restored = (|| {
        let mut qmp = Qmp::connect(&rt.qmp(), SAVE_TIMEOUT)?;
        qmp.execute("migrate-set-capabilities", Some(ignore_shared()))?;
        qmp.execute(
            "migrate-incoming",
            Some(json!({ "uri": format!("exec:cat {}", shell_quote(&t.state)) })),
        )?;
        wait_migration(&mut qmp, "loading the template")?;
        qmp.execute("cont", None)?;
        Ok(())
    })();
    if let Err(e) = restored {
        vmm.kill();
        return Err(e);
    }
    Ok(vmm)
}

/// Applies a policy like the clones' (each clone applies its own again: the template's
/// cgroup limits are overwritten, capabilities and seccomp are per command) and runs `true`
/// under it, waiting for its end.
fn warm_up(ch: &mut Channel, policy: &agentkernel_proto::GuestPolicy) -> Result<(), VmError> {
    use agentkernel_proto::{ExecEvent, ExecRequest, GuestMessage, HostMessage};
    let id = ch.next_id();
    ch.call(
        id,
        &HostMessage::SetPolicy {
            id,
            policy: policy.clone(),
        },
    )?;
    let id = ch.next_id();
    ch.sender().send(&HostMessage::Exec {
        id,
        request: ExecRequest {
            argv: vec!["true".into()],
            env: vec![],
            workdir: None,
            user: None,
            tty: None,
            stdin: false,
            timeout_ms: Some(10_000),
        },
    })?;
    loop {
        match ch.recv(Some(SAVE_TIMEOUT))? {
            Some(GuestMessage::Exec {
                event: ExecEvent::Exit { .. },
                ..
            })
            | Some(GuestMessage::Error { .. })
            | None => return Ok(()),
            Some(_) => {}
        }
    }
}

fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// Polls `query-migrate` until it completes (or fails).
fn wait_migration(qmp: &mut Qmp, what: &str) -> Result<(), VmError> {
    let deadline = Instant::now() + SAVE_TIMEOUT;
    loop {
        let status = qmp.execute("query-migrate", None)?;
        match status["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(VmError::Qmp(format!(
                    "{what}: {}",
                    status["error-desc"]
                        .as_str()
                        .unwrap_or("the migration failed")
                )));
            }
            _ if Instant::now() > deadline => {
                return Err(VmError::Qmp(format!(
                    "{what}: no end within {SAVE_TIMEOUT:?}"
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// A path for QEMU's `exec:` migration URI, which runs through `/bin/sh -c`.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}
