//! Hardening of every process started in a sandbox, applied between fork and exec once it has
//! joined the sandbox's namespaces: capabilities dropped to the policy's set (bounding set
//! included), the policy's uid/gid, Landlock as a second wall on the file system, no new
//! privileges, and a seccomp filter.
//!
//! Everything is worked out by the caller (`prepare`), the Landlock ruleset included (its rules
//! name the sandbox's directories, opened through its root from outside); `apply` runs in the
//! child between clone and exec (see `vfork.rs`) and only makes system calls: capability drops by
//! prctl and one capset, credentials, Landlock's restrict_self, no_new_privs and one seccomp
//! program.

use agentkernel_core::policy::Policy;
use caps::Capability;
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr,
};
use rustix::fd::OwnedFd;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0:?} in the policy: use names like CAP_NET_BIND_SERVICE")]
    UnknownCapability(String),
    #[error("cannot prepare the Landlock rules: {0}")]
    Landlock(String),
}

/// Which Landlock rules a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsWall {
    /// Everything but creating device nodes: a second wall behind the dropped CAP_MKNOD.
    NoDevices,
    /// Read and execute anywhere; write only in /tmp, /dev/shm and to the devices in /dev.
    ReadMostly,
}

/// Everything `apply` needs, prepared before the fork.
pub struct SecurityPlan {
    /// Bit mask of the capabilities kept.
    keep: u64,
    /// The highest capability number this kernel knows.
    last_cap: u32,
    uid: u32,
    gid: u32,
    no_new_privs: bool,
    /// Built in the caller against the sandbox's directories; the child only enforces it.
    landlock: RulesetCreated,
    filter: agentkernel_seccomp::Program,
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` of capset(2), version 3.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl SecurityPlan {
    /// `root` is the sandbox's root directory (`files::root_of`): Landlock rules name
    /// directories of the sandbox, opened from outside it.
    pub fn prepare(policy: &Policy, root: &OwnedFd) -> Result<SecurityPlan, SecurityError> {
        let mut keep = 0u64;
        for name in &policy.capabilities {
            let cap = Capability::from_str(name)
                .map_err(|_| SecurityError::UnknownCapability(name.clone()))?;
            keep |= cap.bitmask();
        }
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let fs_wall = if policy.read_only_root {
            FsWall::ReadMostly
        } else {
            FsWall::NoDevices
        };
        Ok(SecurityPlan {
            keep,
            last_cap,
            uid: policy.user.uid,
            gid: policy.user.gid,
            no_new_privs: policy.no_new_privs,
            landlock: landlock_rules(fs_wall, root)?,
            filter: agentkernel_seccomp::program(policy.seccomp),
        })
    }

    /// Applies the plan to the calling process (a forked child about to exec).
    pub fn apply(&self) -> std::io::Result<()> {
        // The bounding set limits what any later exec can gain, so it goes first, while this
        // process still holds CAP_SETPCAP.
        for cap in 0..=self.last_cap {
            if self.keep & (1u64 << cap) != 0 {
                continue;
            }
            let one = rustix::thread::CapabilitySet::from_bits_retain(1u64 << cap);
            rustix::thread::remove_capability_from_bounding_set(one)?;
        }
        rustix::thread::clear_ambient_capability_set()?;
        if self.uid != 0 || self.gid != 0 {
            // Raw system calls, not libc's wrappers: in a multithreaded caller (the server),
            // glibc's setgroups/setresgid/setresuid see the caller's other threads (this child
            // shares its memory) and run their "setxid" broadcast over them, taking glibc's
            // thread-list lock and marking those threads. posix_spawn avoids the wrappers for
            // the same reason. The child is a process of its own (no CLONE_THREAD), so the
            // per-thread system calls change all of its credentials.
            // SAFETY: plain credential system calls on this process with integer arguments and
            // a pointer to one gid; the gid goes first, while the process may still change it.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 1 as libc::c_long, &self.gid) != 0
                    || libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid) != 0
                    || libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        // A non-root uid has lost every capability with setresuid; root keeps only the policy's.
        if self.uid == 0 {
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let word = |w: u32| CapData {
                effective: w,
                permitted: w,
                inheritable: 0,
            };
            let data = [word(self.keep as u32), word((self.keep >> 32) as u32)];
            // SAFETY: capset with a version-3 header and the two data words it reads.
            if unsafe {
                libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr())
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Landlock, best effort: a kernel without it (or with an older ABI) gets what it
        // supports; the namespaces, capabilities and seccomp remain the first wall.
        // Nothing is allocated here (this runs between clone and exec, possibly in a child of
        // a multithreaded caller): only the errno reaches the caller anyway (`vfork.rs`).
        self.landlock.try_clone()?.restrict_self().map_err(
            |_| match std::io::Error::last_os_error() {
                e if e.raw_os_error().unwrap_or(0) != 0 => e,
                _ => std::io::Error::from_raw_os_error(libc::EPERM),
            },
        )?;
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true)?;
        }
        // No core size: a crashing sandbox process writes no core file. Lowering is always
        // allowed.
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
        agentkernel_seccomp::install(&self.filter)
    }
}

/// The Landlock ruleset for a wall, with rules on the sandbox's own directories.
fn landlock_rules(wall: FsWall, root: &OwnedFd) -> Result<RulesetCreated, SecurityError> {
    let abi = ABI::V5;
    let all = AccessFs::from_all(abi);
    let no_devices: BitFlags<AccessFs> = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let dir =
        |p: &str| crate::files::dir_in(root, p).map_err(|e| SecurityError::Landlock(e.to_string()));
    let rule_err = |e: landlock::RulesetError| SecurityError::Landlock(e.to_string());
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(rule_err)?
        .create()
        .map_err(rule_err)?;
    let ruleset = match wall {
        FsWall::NoDevices => ruleset
            .add_rule(PathBeneath::new(dir("/")?, no_devices))
            .map_err(rule_err)?,
        FsWall::ReadMostly => {
            let read: BitFlags<AccessFs> = AccessFs::from_read(abi);
            let devices = read | AccessFs::WriteFile | AccessFs::IoctlDev;
            let mut ruleset = ruleset
                .add_rule(PathBeneath::new(dir("/")?, read))
                .map_err(rule_err)?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(dir("/dev")?, devices))
                .map_err(rule_err)?;
            for writable in ["/tmp", "/dev/shm"] {
                ruleset = ruleset
                    .add_rule(PathBeneath::new(dir(writable)?, no_devices))
                    .map_err(rule_err)?;
            }
            ruleset
        }
    };
    Ok(ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::Profile;

    /// This process's root stands in for a sandbox's (it has /tmp, /dev and /dev/shm).
    fn host_root() -> OwnedFd {
        rustix::fs::open(
            "/",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open /")
    }

    #[test]
    fn profiles_keep_only_their_capabilities() {
        let plan = SecurityPlan::prepare(&Policy::for_profile(Profile::Restrictive), &host_root())
            .expect("plan");
        assert_eq!(plan.keep, 0);
        let plan = SecurityPlan::prepare(&Policy::for_profile(Profile::Moderate), &host_root())
            .expect("plan");
        assert_ne!(plan.keep & Capability::CAP_CHOWN.bitmask(), 0);
        assert_eq!(plan.keep & Capability::CAP_SYS_ADMIN.bitmask(), 0);
    }

    #[test]
    fn unknown_capabilities_are_refused() {
        let mut policy = Policy::for_profile(Profile::Moderate);
        policy.capabilities.push("CAP_MAKE_COFFEE".into());
        assert!(matches!(
            SecurityPlan::prepare(&policy, &host_root()),
            Err(SecurityError::UnknownCapability(_))
        ));
    }
}
