//! `SetPolicy`: what the guest enforces on the commands it starts after it.
//!
//! - `no_new_privileges` → `PR_SET_NO_NEW_PRIVS` in each command;
//! - `capabilities` → every other capability leaves the bounding set, and root's
//!   effective/permitted/inheritable sets keep only these (applied in the child, `exec.rs`);
//! - `limits` → a cgroup v2 `/sys/fs/cgroup/sandbox` (memory.max, pids.max, cpu.max) that every
//!   command joins. Without cgroup2 a policy asking for limits is refused, never ignored;
//! - `read_only_root` is decided at boot (`ak.ro=1`): a policy that differs is refused;
//! - `network`: the VM has no NIC, so only `none` is accepted.
//!
//! The whole policy is checked before anything of it is applied: a refused policy changes
//! nothing.

use agentkernel_proto::{ErrorKind, GuestPolicy, NetworkMode};

use crate::boot::CGROUP_DIR;
use crate::error::Fail;

/// The cgroup every command joins once a policy set limits.
pub const SANDBOX_CGROUP: &str = "/sys/fs/cgroup/sandbox";

/// The capability names Linux 6.1 knows, by number.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability number the agent knows.
pub const LAST_CAP: u32 = CAPABILITIES.len() as u32 - 1;

/// The bit mask of the named capabilities.
pub fn capability_mask(names: &[String]) -> Result<u64, Fail> {
    let mut mask = 0u64;
    for name in names {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let bit = CAPABILITIES
            .iter()
            .position(|c| *c == full)
            .ok_or_else(|| Fail::invalid(format!("unknown capability {name}")))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

/// The policy in force for the next exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivePolicy {
    pub no_new_privs: bool,
    /// Capabilities kept; `None` until a policy is set (commands run as full root).
    pub keep_caps: Option<u64>,
    /// Whether commands join [`SANDBOX_CGROUP`].
    pub cgroup: bool,
    /// The seccomp filter commands get.
    pub seccomp: Option<agentkernel_proto::SeccompMode>,
}

/// How many times the sandbox's cgroup has had a process killed for its memory limit.
pub fn oom_kills() -> u64 {
    std::fs::read_to_string(format!("{SANDBOX_CGROUP}/memory.events"))
        .ok()
        .and_then(|events| {
            events.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Checks `p` against what this VM can do and applies its limits; returns the policy for later
/// execs.
pub fn apply(
    p: &GuestPolicy,
    read_only_root: bool,
    cgroup_mounted: bool,
) -> Result<ActivePolicy, Fail> {
    if p.network != NetworkMode::None {
        return Err(Fail::new(
            ErrorKind::Unsupported,
            "the micro-VM backend has no network yet: only network mode `none` is possible",
        ));
    }
    if p.read_only_root != read_only_root {
        return Err(Fail::invalid(format!(
            "the root filesystem's read-only state is fixed when the VM boots (it is {}); \
             boot the VM with{} ak.ro=1",
            if read_only_root {
                "read-only"
            } else {
                "writable"
            },
            if read_only_root { "out" } else { "" },
        )));
    }
    let keep = capability_mask(&p.capabilities)?;
    let l = &p.limits;
    if let Some(cpus) = l.cpus
        && !(cpus.is_finite() && cpus > 0.0)
    {
        return Err(Fail::invalid(format!(
            "limits.cpus must be above 0, not {cpus}"
        )));
    }
    let wants_limits = l.memory_mib.is_some() || l.pids.is_some() || l.cpus.is_some();
    if wants_limits && !cgroup_mounted {
        return Err(Fail::new(
            ErrorKind::Unsupported,
            "limits need cgroup v2, which the guest kernel could not mount",
        ));
    }
    let mut active = ActivePolicy {
        no_new_privs: p.no_new_privileges,
        keep_caps: Some(keep),
        cgroup: false,
        seccomp: p.seccomp,
    };
    if cgroup_mounted && (wants_limits || std::path::Path::new(SANDBOX_CGROUP).is_dir()) {
        set_limits(l)?;
        active.cgroup = true;
    }
    Ok(active)
}

fn write(path: &str, value: &str) -> Result<(), Fail> {
    std::fs::write(path, value).map_err(|e| {
        Fail::new(
            ErrorKind::Unsupported,
            format!("cannot set {path} to {value:?}: {e}"),
        )
    })
}

fn set_limits(l: &agentkernel_proto::Limits) -> Result<(), Fail> {
    // Controllers must be enabled in the parent before the child cgroup has their files.
    write(
        &format!("{CGROUP_DIR}/cgroup.subtree_control"),
        "+memory +pids +cpu",
    )?;
    if let Err(e) = std::fs::create_dir(SANDBOX_CGROUP)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(Fail::new(
            ErrorKind::Io,
            format!("cannot create {SANDBOX_CGROUP}: {e}"),
        ));
    }
    let memory = l
        .memory_mib
        .map_or("max".to_owned(), |m| (m * 1024 * 1024).to_string());
    write(&format!("{SANDBOX_CGROUP}/memory.max"), &memory)?;
    // No swap in the VM, but a limit must not leak through it if one appears.
    let _ = std::fs::write(format!("{SANDBOX_CGROUP}/memory.swap.max"), "0");
    let pids = l.pids.map_or("max".to_owned(), |p| p.to_string());
    write(&format!("{SANDBOX_CGROUP}/pids.max"), &pids)?;
    const PERIOD: u64 = 100_000;
    let cpu = l.cpus.map_or(format!("max {PERIOD}"), |c| {
        format!(
            "{} {PERIOD}",
            ((c * PERIOD as f64).round() as u64).max(1000)
        )
    });
    write(&format!("{SANDBOX_CGROUP}/cpu.max"), &cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_proto::Limits;

    fn policy() -> GuestPolicy {
        GuestPolicy {
            network: NetworkMode::None,
            read_only_root: false,
            limits: Limits {
                memory_mib: None,
                pids: None,
                cpus: None,
            },
            capabilities: vec![],
            no_new_privileges: true,
            seccomp: None,
        }
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            capability_mask(&["CAP_NET_BIND_SERVICE".into(), "chown".into()]).expect("mask"),
            (1 << 10) | 1
        );
        assert_eq!(LAST_CAP, 40);
        assert!(capability_mask(&["CAP_FLY".into()]).is_err());
    }

    #[test]
    fn refused_fields() {
        let mut p = policy();
        p.network = NetworkMode::Full;
        assert_eq!(
            apply(&p, false, true).expect_err("network").kind,
            ErrorKind::Unsupported
        );
        let p = policy();
        assert_eq!(
            apply(&p, true, true).expect_err("ro").kind,
            ErrorKind::InvalidInput
        );
        let mut p = policy();
        p.limits.pids = Some(10);
        assert_eq!(
            apply(&p, false, false).expect_err("no cgroup").kind,
            ErrorKind::Unsupported
        );
        let p = policy();
        let a = apply(&p, false, false).expect("plain");
        assert!(a.no_new_privs && a.keep_caps == Some(0) && !a.cgroup);
    }
}
