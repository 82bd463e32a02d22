//! Hardening of every process started in a sandbox, applied between fork and exec once it has
//! joined the sandbox's namespaces: capabilities dropped to the policy's set (bounding set
//! included), the policy's uid/gid, Landlock as a second wall on the file system, no new
//! privileges, and a seccomp filter.
//!
//! Everything is worked out in the parent (`prepare`); `apply` makes system calls and the few
//! small allocations Landlock needs, which is safe in the forked child of a single-threaded
//! caller. It runs once per command, so it is kept to direct system calls: no capability sets
//! read back from the kernel, one seccomp program.

use crate::seccomp;
use agentkernel_core::policy::Policy;
use caps::Capability;
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr,
};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0:?} in the policy: use names like CAP_NET_BIND_SERVICE")]
    UnknownCapability(String),
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
    fs_wall: FsWall,
    filter: seccomp::Program,
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
    pub fn prepare(policy: &Policy) -> Result<SecurityPlan, SecurityError> {
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
            fs_wall,
            filter: seccomp::program(policy.seccomp),
        })
    }

    /// Applies the plan to the calling process (a forked child about to exec).
    pub fn apply(&self) -> std::io::Result<()> {
        // The bounding set limits what any later exec can gain, so it goes first, while this
        // process still holds CAP_SETPCAP.
        for cap in 0..=self.last_cap {
            // SAFETY: prctl with integer arguments only.
            if self.keep & (1u64 << cap) == 0
                && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: prctl clearing the ambient set takes no pointers.
        if unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if self.uid != 0 || self.gid != 0 {
            // SAFETY: plain credential system calls on this process; the gid goes first,
            // while the process may still change it.
            unsafe {
                if libc::setgroups(1, &self.gid) != 0
                    || libc::setresgid(self.gid, self.gid, self.gid) != 0
                    || libc::setresuid(self.uid, self.uid, self.uid) != 0
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
        self.restrict_fs()?;
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true)?;
        }
        // SAFETY: setrlimit lowering the core size: a crashing sandbox process writes no core
        // file. Lowering is always allowed.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
        }
        seccomp::install(&self.filter)
    }

    /// Landlock, best effort: a kernel without it (or with an older ABI) gets what it supports;
    /// the namespaces, capabilities and seccomp remain the first wall.
    fn restrict_fs(&self) -> std::io::Result<()> {
        let abi = ABI::V5;
        let all = AccessFs::from_all(abi);
        let err = |e: landlock::RulesetError| std::io::Error::other(format!("landlock: {e}"));
        let path =
            |p: &str| PathFd::new(p).map_err(|e| std::io::Error::other(format!("landlock: {e}")));
        let ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(err)?
            .create()
            .map_err(err)?;
        let ruleset = match self.fs_wall {
            FsWall::NoDevices => {
                let allowed: BitFlags<AccessFs> = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
                ruleset
                    .add_rule(PathBeneath::new(path("/")?, allowed))
                    .map_err(err)?
            }
            FsWall::ReadMostly => {
                let read: BitFlags<AccessFs> = AccessFs::from_read(abi);
                let devices = read | AccessFs::WriteFile | AccessFs::IoctlDev;
                let mut ruleset = ruleset
                    .add_rule(PathBeneath::new(path("/")?, read))
                    .map_err(err)?;
                ruleset = ruleset
                    .add_rule(PathBeneath::new(path("/dev")?, devices))
                    .map_err(err)?;
                for writable in ["/tmp", "/dev/shm"] {
                    let allowed = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
                    ruleset = ruleset
                        .add_rule(PathBeneath::new(path(writable)?, allowed))
                        .map_err(err)?;
                }
                ruleset
            }
        };
        ruleset.restrict_self().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::Profile;

    #[test]
    fn profiles_keep_only_their_capabilities() {
        let plan = SecurityPlan::prepare(&Policy::for_profile(Profile::Restrictive)).expect("plan");
        assert_eq!(plan.keep, 0);
        let plan = SecurityPlan::prepare(&Policy::for_profile(Profile::Moderate)).expect("plan");
        assert_ne!(plan.keep & Capability::CAP_CHOWN.bitmask(), 0);
        assert_eq!(plan.keep & Capability::CAP_SYS_ADMIN.bitmask(), 0);
    }

    #[test]
    fn unknown_capabilities_are_refused() {
        let mut policy = Policy::for_profile(Profile::Moderate);
        policy.capabilities.push("CAP_MAKE_COFFEE".into());
        assert!(matches!(
            SecurityPlan::prepare(&policy),
            Err(SecurityError::UnknownCapability(_))
        ));
    }
}
