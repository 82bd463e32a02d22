//! Hardening of every process started in a sandbox, applied between fork and exec once it has
//! joined the sandbox's namespaces: capabilities dropped to the policy's set (bounding set
//! included), the policy's uid/gid, Landlock as a second wall on the file system, no new
//! privileges, and a seccomp filter.
//!
//! Filters are compiled in the parent (`prepare`); `apply` only makes system calls and small
//! allocations, which is safe in the forked child of a single-threaded caller.

use agentkernel_core::policy::{Policy, SeccompMode};
use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0:?} in the policy: use names like CAP_NET_BIND_SERVICE")]
    UnknownCapability(String),
    #[error("cannot build the seccomp filter for this architecture: {0}")]
    Seccomp(String),
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
    keep: CapsHashSet,
    uid: u32,
    gid: u32,
    no_new_privs: bool,
    fs_wall: FsWall,
    /// Installed in order; the last installed wins ties between filters of the same action.
    filters: Vec<BpfProgram>,
}

impl SecurityPlan {
    pub fn prepare(policy: &Policy) -> Result<SecurityPlan, SecurityError> {
        let mut keep = CapsHashSet::new();
        for name in &policy.capabilities {
            let cap = Capability::from_str(name)
                .map_err(|_| SecurityError::UnknownCapability(name.clone()))?;
            keep.insert(cap);
        }
        let fs_wall = if policy.read_only_root {
            FsWall::ReadMostly
        } else {
            FsWall::NoDevices
        };
        Ok(SecurityPlan {
            keep,
            uid: policy.user.uid,
            gid: policy.user.gid,
            no_new_privs: policy.no_new_privs,
            fs_wall,
            filters: seccomp_filters(policy.seccomp)?,
        })
    }

    /// Applies the plan to the calling process (a forked child about to exec).
    pub fn apply(&self) -> std::io::Result<()> {
        let caps_err =
            |e: caps::errors::CapsError| std::io::Error::other(format!("capabilities: {e}"));
        // The bounding set limits what any later exec can gain, so it goes first, while this
        // process still holds CAP_SETPCAP.
        for cap in caps::read(None, CapSet::Bounding).map_err(caps_err)? {
            if !self.keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
            }
        }
        caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
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
            let keep_here: CapsHashSet = self.keep.clone();
            caps::set(None, CapSet::Effective, &keep_here).map_err(caps_err)?;
            caps::set(None, CapSet::Permitted, &keep_here).map_err(caps_err)?;
            caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(caps_err)?;
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
        for filter in &self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|e| std::io::Error::other(format!("seccomp: {e}")))?;
        }
        Ok(())
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

const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

/// Calls the deny-list refuses: they change mounts or namespaces, load kernel code, reach
/// kernel keyrings or tracing, or touch other processes' memory or the host's clock, swap,
/// accounting and reboot. (clone with namespace flags and ptrace attach are handled apart.)
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nfsservctl,
];

/// Calls the allow-list (restrictive profile) permits: what shells, interpreters, compilers
/// and the usual command-line tools need, and nothing that changes the system around them.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_madvise,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_mlock2,
    libc::SYS_membarrier,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sigaltstack,
    libc::SYS_ioctl,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_pipe2,
    libc::SYS_pselect6,
    libc::SYS_ppoll,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_getattr,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_getitimer,
    libc::SYS_setitimer,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getpgid,
    libc::SYS_setpgid,
    libc::SYS_getsid,
    libc::SYS_setsid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_capget,
    libc::SYS_sendfile,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_clone,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_uname,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdirat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_umask,
    libc::SYS_gettimeofday,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
    libc::SYS_times,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_prctl,
    libc::SYS_utimensat,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_getrandom,
    libc::SYS_memfd_create,
    libc::SYS_copy_file_range,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_vmsplice,
    libc::SYS_rseq,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    libc::SYS_fadvise64,
    libc::SYS_readahead,
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semctl,
    libc::SYS_semtimedop,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_personality,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_setattr,
    libc::SYS_getcpu,
    libc::SYS_sync,
    libc::SYS_syncfs,
    libc::SYS_mknodat,
    libc::SYS_get_mempolicy,
    libc::SYS_set_mempolicy,
    libc::SYS_mbind,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_seccomp,
    libc::SYS_process_madvise,
    libc::SYS_fchmodat2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_creat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_select,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pause,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_alarm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getdents,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_link,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_symlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mknod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_time,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getpgrp,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_eventfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_signalfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_inotify_init,
];

fn arch() -> Result<TargetArch, SecurityError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SecurityError::Seccomp(e.to_string()))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SecurityError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch()?)
        .map_err(|e| SecurityError::Seccomp(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SecurityError::Seccomp(e.to_string()))
}

fn arg_rule(conditions: Vec<(u8, SeccompCmpOp, u64)>) -> Result<SeccompRule, SecurityError> {
    let conds = conditions
        .into_iter()
        .map(|(arg, op, value)| SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError::Seccomp(e.to_string()))?;
    SeccompRule::new(conds).map_err(|e| SecurityError::Seccomp(e.to_string()))
}

const EPERM: u32 = libc::EPERM as u32;

/// The filters for a seccomp mode, in installation order.
fn seccomp_filters(mode: SeccompMode) -> Result<Vec<BpfProgram>, SecurityError> {
    let namespace_mask: u64 = NAMESPACE_FLAGS.iter().fold(0, |m, f| m | f);
    let mut filters = Vec::new();
    match mode {
        SeccompMode::DenyList => {
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
                DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
            // clone with any namespace flag set; one rule per flag (rules of a call are ORed).
            let clone_rules = NAMESPACE_FLAGS
                .iter()
                .map(|&f| arg_rule(vec![(0, SeccompCmpOp::MaskedEq(f), f)]))
                .collect::<Result<_, _>>()?;
            rules.insert(libc::SYS_clone, clone_rules);
            rules.insert(
                libc::SYS_ptrace,
                vec![
                    arg_rule(vec![(0, SeccompCmpOp::Eq, PTRACE_ATTACH)])?,
                    arg_rule(vec![(0, SeccompCmpOp::Eq, PTRACE_SEIZE)])?,
                ],
            );
            filters.push(compile(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(EPERM),
            )?);
            #[cfg(target_arch = "x86_64")]
            filters.push(deny_x32_abi());
        }
        SeccompMode::AllowList => {
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
                ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
            rules.insert(
                libc::SYS_clone,
                vec![arg_rule(vec![(
                    0,
                    SeccompCmpOp::MaskedEq(namespace_mask),
                    0,
                )])?],
            );
            filters.push(compile(
                rules,
                SeccompAction::Errno(EPERM),
                SeccompAction::Allow,
            )?);
        }
    }
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc fall back
    // to clone, whose flags are checked above. Installed last, so it wins over EPERM.
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    filters.push(compile(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?);
    Ok(filters)
}

/// The x32 ABI reaches the same kernel calls under numbers with bit 30 set, which a deny-list
/// of x86-64 numbers would miss: refuse them all. (seccompiler has no range conditions, so this
/// four-instruction filter is written out.)
#[cfg(target_arch = "x86_64")]
fn deny_x32_abi() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | EPERM,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkernel_core::Profile;

    #[test]
    fn every_profile_compiles() {
        for profile in [Profile::Permissive, Profile::Moderate, Profile::Restrictive] {
            let plan = SecurityPlan::prepare(&Policy::for_profile(profile)).expect("plan");
            assert!(plan.filters.len() >= 2, "{profile}");
        }
    }

    #[test]
    fn allow_list_excludes_what_the_deny_list_refuses() {
        for nr in DENIED {
            assert!(
                !ALLOWED.contains(nr),
                "syscall {nr} is both allowed and denied"
            );
        }
        assert!(!ALLOWED.contains(&libc::SYS_ptrace) && !ALLOWED.contains(&libc::SYS_clone3));
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
