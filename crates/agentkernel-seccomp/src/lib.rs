//! agentkernel's seccomp policy, written once: the lists of system calls below become the BPF
//! filter the native backend installs (`program`, `install`) and the seccomp profile the
//! container backends hand to Docker, Podman and gVisor (`docker_profile`).
//!
//! The filters are assembled as classic BPF.
//!
//! Written out rather than generated with seccompiler: one program here needs three actions
//! (EPERM for refused calls, ENOSYS for clone3, KILL for a foreign architecture) and a range test
//! (the x32 ABI), which seccompiler's one-match-action filters cannot express; and a filter is
//! loaded and JIT-compiled for every command started in a sandbox, where its size is paid each
//! time: seccompiler's deny-list came to 350 instructions in three filters (~210 µs to load,
//! measured in the exec path), this one to about 70 instructions in one.

use agentkernel_core::policy::SeccompMode;
use serde_json::{Value, json};

/// One system call of the lists below: its name (as libseccomp and Docker/OCI seccomp profiles
/// spell it) and its number on this architecture. The lists are the one definition of the
/// policy: the native backend compiles them to BPF here, the container backends write them
/// into a seccomp profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    ident: &'static str,
    pub nr: i64,
}

impl Syscall {
    /// The name without libc's `SYS_` prefix: `mount`, `clone3`.
    pub fn name(&self) -> &'static str {
        self.ident.trim_start_matches("SYS_")
    }
}

/// `syscalls![SYS_read, SYS_write]`: entries named after libc's constants (so a misspelt call
/// does not compile), each keeping its name for profiles.
macro_rules! syscalls {
    ($($(#[$m:meta])* $id:ident),* $(,)?) => {
        &[$($(#[$m])* Syscall { ident: stringify!($id), nr: libc::$id }),*]
    };
}

/// The clone call's number, and clone3's (answered ENOSYS so that libc falls back to clone,
/// whose flags a filter can read).
pub const CLONE: Syscall = Syscall {
    ident: "SYS_clone",
    nr: libc::SYS_clone,
};
pub const CLONE3: Syscall = Syscall {
    ident: "SYS_clone3",
    nr: libc::SYS_clone3,
};
pub const PTRACE: Syscall = Syscall {
    ident: "SYS_ptrace",
    nr: libc::SYS_ptrace,
};

pub type Program = Vec<libc::sock_filter>;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Low 32 bits of the first argument (little-endian targets).
const ARG0_LOW: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The legacy clone takes its flags in the low 32 bits of the first argument; any of these is
/// refused.
pub const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32
    | 0x80; // CLONE_NEWTIME

/// ptrace requests that attach to another process (refused by the deny-list).
pub const PTRACE_ATTACH: u32 = 16;
pub const PTRACE_SEIZE: u32 = 0x4206;

/// Calls the deny-list refuses: they change mounts or namespaces, load kernel code, reach
/// kernel keyrings, tracing or io_uring, touch other processes' memory, or change the host's
/// clock, swap, accounting and power. (clone with namespace flags and ptrace attach/seize are
/// checked apart; clone3, whose flags a filter cannot read, gets ENOSYS so libc uses clone.)
pub const DENIED: &[Syscall] = syscalls![
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_unshare,
    SYS_setns,
    SYS_open_tree,
    SYS_move_mount,
    SYS_fsopen,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fspick,
    SYS_mount_setattr,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_perf_event_open,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pidfd_getfd,
    SYS_kcmp,
    SYS_userfaultfd,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_acct,
    SYS_quotactl,
    SYS_syslog,
    SYS_settimeofday,
    SYS_clock_settime,
    SYS_clock_adjtime,
    SYS_adjtimex,
    SYS_vhangup,
    SYS_fanotify_init,
    SYS_lookup_dcookie,
    #[cfg(target_arch = "x86_64")]
    SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    SYS_nfsservctl,
];

/// Calls the allow-list (restrictive profile) permits: what shells, interpreters, compilers and
/// the usual command-line tools need, and nothing that changes the system around them. The
/// most frequent calls come first: the filter runs on every system call.
#[rustfmt::skip]
pub const ALLOWED: &[Syscall] = syscalls![
    SYS_read, SYS_write, SYS_close, SYS_fstat, SYS_newfstatat, SYS_statx,
    SYS_openat, SYS_mmap, SYS_munmap, SYS_mprotect, SYS_brk, SYS_lseek,
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_futex, SYS_ioctl,
    SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev, SYS_getdents64,
    SYS_fcntl, SYS_getpid, SYS_gettid, SYS_clock_gettime, SYS_getrandom,
    SYS_wait4, SYS_exit, SYS_exit_group, SYS_execve, SYS_execveat,
    SYS_preadv, SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_openat2,
    SYS_close_range, SYS_statfs, SYS_fstatfs, SYS_mremap, SYS_msync,
    SYS_mincore, SYS_madvise, SYS_mlock, SYS_munlock, SYS_mlock2,
    SYS_membarrier, SYS_rt_sigpending, SYS_rt_sigtimedwait, SYS_rt_sigqueueinfo,
    SYS_rt_sigsuspend, SYS_rt_tgsigqueueinfo, SYS_sigaltstack, SYS_faccessat,
    SYS_faccessat2, SYS_pipe2, SYS_pselect6, SYS_ppoll, SYS_sched_yield,
    SYS_sched_getaffinity, SYS_sched_setaffinity, SYS_sched_getparam,
    SYS_sched_getscheduler, SYS_sched_get_priority_max, SYS_sched_get_priority_min,
    SYS_sched_rr_get_interval, SYS_sched_getattr, SYS_dup, SYS_dup3,
    SYS_nanosleep, SYS_clock_nanosleep, SYS_getitimer, SYS_setitimer,
    SYS_getppid, SYS_getpgid, SYS_setpgid, SYS_getsid, SYS_setsid,
    SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid, SYS_getresuid,
    SYS_getresgid, SYS_getgroups, SYS_capget, SYS_sendfile, SYS_socket,
    SYS_socketpair, SYS_connect, SYS_accept, SYS_accept4, SYS_sendto,
    SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg, SYS_recvmmsg,
    SYS_shutdown, SYS_bind, SYS_listen, SYS_getsockname, SYS_getpeername,
    SYS_setsockopt, SYS_getsockopt, SYS_waitid, SYS_kill, SYS_tkill,
    SYS_tgkill, SYS_uname, SYS_flock, SYS_fsync, SYS_fdatasync,
    SYS_sync_file_range, SYS_truncate, SYS_ftruncate, SYS_fallocate,
    SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_renameat, SYS_renameat2,
    SYS_mkdirat, SYS_linkat, SYS_unlinkat, SYS_symlinkat, SYS_readlinkat,
    SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown, SYS_fchownat,
    SYS_umask, SYS_gettimeofday, SYS_getrlimit, SYS_prlimit64, SYS_getrusage,
    SYS_sysinfo, SYS_times, SYS_getpriority, SYS_setpriority, SYS_prctl,
    SYS_utimensat, SYS_futex_waitv, SYS_set_tid_address, SYS_set_robust_list,
    SYS_get_robust_list, SYS_restart_syscall, SYS_clock_getres, SYS_epoll_create1,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2,
    SYS_signalfd4, SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime,
    SYS_timer_create, SYS_timer_settime, SYS_timer_gettime, SYS_timer_getoverrun,
    SYS_timer_delete, SYS_inotify_init1, SYS_inotify_add_watch, SYS_inotify_rm_watch,
    SYS_memfd_create, SYS_copy_file_range, SYS_splice, SYS_tee, SYS_vmsplice,
    SYS_rseq, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr, SYS_listxattr,
    SYS_llistxattr, SYS_flistxattr, SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr,
    SYS_removexattr, SYS_lremovexattr, SYS_fremovexattr, SYS_fadvise64,
    SYS_readahead, SYS_io_setup, SYS_io_destroy, SYS_io_getevents,
    SYS_io_submit, SYS_io_cancel, SYS_mq_open, SYS_mq_unlink,
    SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr,
    SYS_shmget, SYS_shmat, SYS_shmctl, SYS_shmdt, SYS_semget, SYS_semop,
    SYS_semctl, SYS_semtimedop, SYS_msgget, SYS_msgsnd, SYS_msgrcv,
    SYS_msgctl, SYS_personality, SYS_pidfd_open, SYS_pidfd_send_signal,
    SYS_setuid, SYS_setgid, SYS_setreuid, SYS_setregid, SYS_setresuid,
    SYS_setresgid, SYS_setfsuid, SYS_setfsgid, SYS_setgroups, SYS_capset,
    SYS_sched_setparam, SYS_sched_setscheduler, SYS_sched_setattr, SYS_getcpu,
    SYS_sync, SYS_syncfs, SYS_mknodat, SYS_get_mempolicy, SYS_set_mempolicy,
    SYS_mbind, SYS_ioprio_get, SYS_ioprio_set, SYS_landlock_create_ruleset,
    SYS_landlock_add_rule, SYS_landlock_restrict_self, SYS_seccomp,
    SYS_process_madvise,
    #[cfg(target_arch = "x86_64")] SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")] SYS_open,
    #[cfg(target_arch = "x86_64")] SYS_creat,
    #[cfg(target_arch = "x86_64")] SYS_stat,
    #[cfg(target_arch = "x86_64")] SYS_lstat,
    #[cfg(target_arch = "x86_64")] SYS_access,
    #[cfg(target_arch = "x86_64")] SYS_pipe,
    #[cfg(target_arch = "x86_64")] SYS_select,
    #[cfg(target_arch = "x86_64")] SYS_poll,
    #[cfg(target_arch = "x86_64")] SYS_dup2,
    #[cfg(target_arch = "x86_64")] SYS_pause,
    #[cfg(target_arch = "x86_64")] SYS_alarm,
    #[cfg(target_arch = "x86_64")] SYS_fork,
    #[cfg(target_arch = "x86_64")] SYS_vfork,
    #[cfg(target_arch = "x86_64")] SYS_getdents,
    #[cfg(target_arch = "x86_64")] SYS_rename,
    #[cfg(target_arch = "x86_64")] SYS_mkdir,
    #[cfg(target_arch = "x86_64")] SYS_rmdir,
    #[cfg(target_arch = "x86_64")] SYS_link,
    #[cfg(target_arch = "x86_64")] SYS_unlink,
    #[cfg(target_arch = "x86_64")] SYS_symlink,
    #[cfg(target_arch = "x86_64")] SYS_readlink,
    #[cfg(target_arch = "x86_64")] SYS_chmod,
    #[cfg(target_arch = "x86_64")] SYS_chown,
    #[cfg(target_arch = "x86_64")] SYS_lchown,
    #[cfg(target_arch = "x86_64")] SYS_mknod,
    #[cfg(target_arch = "x86_64")] SYS_utime,
    #[cfg(target_arch = "x86_64")] SYS_utimes,
    #[cfg(target_arch = "x86_64")] SYS_futimesat,
    #[cfg(target_arch = "x86_64")] SYS_time,
    #[cfg(target_arch = "x86_64")] SYS_getpgrp,
    #[cfg(target_arch = "x86_64")] SYS_epoll_create,
    #[cfg(target_arch = "x86_64")] SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")] SYS_eventfd,
    #[cfg(target_arch = "x86_64")] SYS_signalfd,
    #[cfg(target_arch = "x86_64")] SYS_inotify_init,
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compares the loaded syscall number with each of `numbers`, returning `action` on a match and
/// falling through otherwise. Conditional jumps reach at most 255 instructions, so the list is
/// cut into chunks, each with its own return.
fn match_any(prog: &mut Program, calls: &[Syscall], action: u32) {
    for chunk in calls.chunks(200) {
        let n = chunk.len();
        for (i, call) in chunk.iter().enumerate() {
            // On a match, skip the rest of the chunk and the `ja` to land on the return.
            prog.push(jump(BPF_JEQ_K, call.nr as u32, (n - i) as u8, 0));
        }
        prog.push(stmt(BPF_JA, 1));
        prog.push(stmt(BPF_RET_K, action));
    }
}

/// The program for a mode. On every call: a foreign architecture kills the process; x32
/// numbers (x86-64) are refused; clone3 is answered ENOSYS; then the mode's list decides.
pub fn program(mode: SeccompMode) -> Program {
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        prog.push(jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(BPF_RET_K, RET_EPERM));
    }
    prog.push(jump(BPF_JEQ_K, CLONE3.nr as u32, 0, 1));
    prog.push(stmt(BPF_RET_K, RET_ENOSYS));
    // clone: refused with any namespace flag, else the mode's default for ordinary calls.
    prog.push(jump(BPF_JEQ_K, CLONE.nr as u32, 0, 4));
    prog.push(stmt(BPF_LD_W_ABS, ARG0_LOW));
    prog.push(jump(BPF_JSET_K, NAMESPACE_FLAGS, 0, 1));
    prog.push(stmt(BPF_RET_K, RET_EPERM));
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    match mode {
        SeccompMode::DenyList => {
            // ptrace: attaching to a process (rather than being traced by one's parent) is refused.
            prog.push(jump(BPF_JEQ_K, PTRACE.nr as u32, 0, 5));
            prog.push(stmt(BPF_LD_W_ABS, ARG0_LOW));
            prog.push(jump(BPF_JEQ_K, PTRACE_ATTACH, 2, 0));
            prog.push(jump(BPF_JEQ_K, PTRACE_SEIZE, 1, 0));
            prog.push(stmt(BPF_RET_K, RET_ALLOW));
            prog.push(stmt(BPF_RET_K, RET_EPERM));
            match_any(&mut prog, DENIED, RET_EPERM);
            prog.push(stmt(BPF_RET_K, RET_ALLOW));
        }
        SeccompMode::AllowList => {
            match_any(&mut prog, ALLOWED, RET_ALLOW);
            prog.push(stmt(BPF_RET_K, RET_EPERM));
        }
    }
    prog
}

/// Installs `prog` on the calling thread (no_new_privs must be set, or CAP_SYS_ADMIN held).
pub fn install(prog: &Program) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which lives across the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The policy as a Docker/OCI seccomp profile, for the container backends: the same lists,, the same special cases (clone with namespace flags and
/// ptrace attach refused, clone3 answered ENOSYS so libc falls back to clone). Calls a
/// foreign architecture would make are refused by libseccomp's architecture check, as the
/// native filter kills them.
pub fn docker_profile(mode: SeccompMode) -> Value {
    let names = |calls: &[Syscall]| calls.iter().map(|c| c.name()).collect::<Vec<_>>();
    let arch = if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_X86_64"
    };
    let eperm = libc::EPERM;
    let clone3 =
        json!({"names": [CLONE3.name()], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS});
    match mode {
        SeccompMode::DenyList => {
            let mut rules = vec![
                json!({"names": names(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": eperm}),
                clone3,
            ];
            // A filter rule matches one masked value: one rule per namespace flag.
            let flags = NAMESPACE_FLAGS;
            for bit in (0..32).map(|b| 1u32 << b).filter(|b| flags & b != 0) {
                rules.push(json!({
                    "names": [CLONE.name()], "action": "SCMP_ACT_ERRNO", "errnoRet": eperm,
                    "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}]
                }));
            }
            for request in [PTRACE_ATTACH, PTRACE_SEIZE] {
                rules.push(json!({
                    "names": [PTRACE.name()], "action": "SCMP_ACT_ERRNO", "errnoRet": eperm,
                    "args": [{"index": 0, "value": request, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
                }));
            }
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch], "syscalls": rules})
        }
        SeccompMode::AllowList => json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": eperm,
            "architectures": [arch],
            "syscalls": [
                {"names": names(ALLOWED), "action": "SCMP_ACT_ALLOW"},
                clone3,
                {"names": [CLONE.name()], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program over one `seccomp_data` (just the fields the programs read).
    fn eval(prog: &Program, arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            let taken = |cond: bool| {
                if cond {
                    ins.jt as usize
                } else {
                    ins.jf as usize
                }
            };
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
                }
                BPF_JEQ_K => pc += taken(acc == ins.k),
                BPF_JGE_K => pc += taken(acc >= ins.k),
                BPF_JSET_K => pc += taken(acc & ins.k != 0),
                BPF_JA => pc += ins.k as usize,
                BPF_RET_K => return ins.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    fn nr(n: i64) -> u32 {
        n as u32
    }

    #[test]
    fn deny_list_refuses_its_calls_and_allows_the_rest() {
        let p = program(SeccompMode::DenyList);
        assert!(p.len() < 100, "{}", p.len());
        for c in DENIED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(c.nr), 0), RET_EPERM, "{}", c.name());
        }
        for n in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_openat,
        ] {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(n), 0), RET_ALLOW, "syscall {n}");
        }
        assert_eq!(
            eval(&p, AUDIT_ARCH, nr(libc::SYS_clone), libc::SIGCHLD as u64),
            RET_ALLOW
        );
        assert_eq!(
            eval(
                &p,
                AUDIT_ARCH,
                nr(libc::SYS_clone),
                libc::CLONE_NEWUSER as u64
            ),
            RET_EPERM
        );
        assert_eq!(eval(&p, AUDIT_ARCH, nr(libc::SYS_clone3), 0), RET_ENOSYS);
        assert_eq!(
            eval(&p, AUDIT_ARCH, nr(libc::SYS_ptrace), PTRACE_ATTACH as u64),
            RET_EPERM
        );
        assert_eq!(
            eval(&p, AUDIT_ARCH, nr(libc::SYS_ptrace), PTRACE_SEIZE as u64),
            RET_EPERM
        );
        assert_eq!(
            eval(&p, AUDIT_ARCH, nr(libc::SYS_ptrace), 0),
            RET_ALLOW,
            "PTRACE_TRACEME"
        );
        assert_eq!(
            eval(&p, 0x4000_0003, nr(libc::SYS_read), 0),
            RET_KILL_PROCESS,
            "i386"
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            eval(&p, AUDIT_ARCH, 0x4000_0000 | nr(libc::SYS_mount), 0),
            RET_EPERM,
            "x32"
        );
    }

    #[test]
    fn allow_list_allows_only_its_calls() {
        let p = program(SeccompMode::AllowList);
        for c in ALLOWED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(c.nr), 0), RET_ALLOW, "{}", c.name());
        }
        for c in DENIED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(c.nr), 0), RET_EPERM, "{}", c.name());
        }
        assert_eq!(eval(&p, AUDIT_ARCH, nr(libc::SYS_ptrace), 0), RET_EPERM);
        assert_eq!(
            eval(&p, AUDIT_ARCH, nr(libc::SYS_clone), libc::SIGCHLD as u64),
            RET_ALLOW
        );
        assert_eq!(
            eval(
                &p,
                AUDIT_ARCH,
                nr(libc::SYS_clone),
                libc::CLONE_NEWNET as u64
            ),
            RET_EPERM
        );
        assert_eq!(eval(&p, AUDIT_ARCH, nr(libc::SYS_clone3), 0), RET_ENOSYS);
    }

    #[test]
    fn the_lists_do_not_overlap() {
        for c in DENIED {
            assert!(
                !ALLOWED.contains(c),
                "{} is both allowed and denied",
                c.name()
            );
        }
        assert!(!ALLOWED.contains(&PTRACE) && !ALLOWED.contains(&CLONE3));
        assert!(
            !ALLOWED.contains(&CLONE),
            "clone is checked apart, with its flags"
        );
    }

    #[test]
    fn names_are_the_kernel_names() {
        assert_eq!(DENIED[0].name(), "mount");
        assert_eq!(CLONE3.name(), "clone3");
        assert!(
            ALLOWED
                .iter()
                .any(|c| c.name() == "read" && c.nr == libc::SYS_read)
        );
    }
    #[test]
    fn docker_profiles_carry_the_same_lists() {
        let deny = docker_profile(SeccompMode::DenyList);
        assert_eq!(deny["defaultAction"], "SCMP_ACT_ALLOW");
        let first = &deny["syscalls"][0]["names"];
        assert_eq!(first.as_array().map(Vec::len), Some(DENIED.len()));
        assert!(
            first
                .as_array()
                .is_some_and(|a| a.contains(&json!("mount")))
        );
        let text = deny.to_string();
        assert!(text.contains("\"clone3\"") && text.contains("SCMP_CMP_MASKED_EQ"));
        let allow = docker_profile(SeccompMode::AllowList);
        assert_eq!(allow["defaultAction"], "SCMP_ACT_ERRNO");
        let names = &allow["syscalls"][0]["names"];
        assert_eq!(names.as_array().map(Vec::len), Some(ALLOWED.len()));
        assert!(
            !names
                .as_array()
                .is_some_and(|a| a.contains(&json!("mount")))
        );
    }
}
