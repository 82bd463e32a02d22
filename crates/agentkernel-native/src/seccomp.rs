//! The seccomp filters, assembled as classic BPF.
//!
//! Written out rather than generated with seccompiler: one program here needs three actions
//! (EPERM for refused calls, ENOSYS for clone3, KILL for a foreign architecture) and a range test
//! (the x32 ABI), which seccompiler's one-match-action filters cannot express; and a filter is
//! loaded and JIT-compiled for every command started in a sandbox, where its size is paid each
//! time: seccompiler's deny-list came to 350 instructions in three filters (~210 µs to load,
//! measured in the exec path), this one to about 70 instructions in one.

use agentkernel_core::policy::SeccompMode;

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

/// The legacy clone takes its flags in the low 32 bits of the first argument.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32
    | 0x80; // CLONE_NEWTIME

const PTRACE_ATTACH: u32 = 16;
const PTRACE_SEIZE: u32 = 0x4206;

/// Calls the deny-list refuses: they change mounts or namespaces, load kernel code, reach
/// kernel keyrings, tracing or io_uring, touch other processes' memory, or change the host's
/// clock, swap, accounting and power. (clone with namespace flags and ptrace attach/seize are
/// checked apart; clone3, whose flags a filter cannot read, gets ENOSYS so libc uses clone.)
pub const DENIED: &[i64] = &[
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

/// Calls the allow-list (restrictive profile) permits: what shells, interpreters, compilers and
/// the usual command-line tools need, and nothing that changes the system around them. The
/// most frequent calls come first: the filter runs on every system call.
#[rustfmt::skip]
pub const ALLOWED: &[i64] = &[
    libc::SYS_read, libc::SYS_write, libc::SYS_close, libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx,
    libc::SYS_openat, libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_brk, libc::SYS_lseek,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_futex, libc::SYS_ioctl,
    libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_readv, libc::SYS_writev, libc::SYS_getdents64,
    libc::SYS_fcntl, libc::SYS_getpid, libc::SYS_gettid, libc::SYS_clock_gettime, libc::SYS_getrandom,
    libc::SYS_wait4, libc::SYS_exit, libc::SYS_exit_group, libc::SYS_execve, libc::SYS_execveat,
    libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_openat2,
    libc::SYS_close_range, libc::SYS_statfs, libc::SYS_fstatfs, libc::SYS_mremap, libc::SYS_msync,
    libc::SYS_mincore, libc::SYS_madvise, libc::SYS_mlock, libc::SYS_munlock, libc::SYS_mlock2,
    libc::SYS_membarrier, libc::SYS_rt_sigpending, libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigsuspend, libc::SYS_rt_tgsigqueueinfo, libc::SYS_sigaltstack, libc::SYS_faccessat,
    libc::SYS_faccessat2, libc::SYS_pipe2, libc::SYS_pselect6, libc::SYS_ppoll, libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity, libc::SYS_sched_setaffinity, libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler, libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval, libc::SYS_sched_getattr, libc::SYS_dup, libc::SYS_dup3,
    libc::SYS_nanosleep, libc::SYS_clock_nanosleep, libc::SYS_getitimer, libc::SYS_setitimer,
    libc::SYS_getppid, libc::SYS_getpgid, libc::SYS_setpgid, libc::SYS_getsid, libc::SYS_setsid,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid, libc::SYS_getresuid,
    libc::SYS_getresgid, libc::SYS_getgroups, libc::SYS_capget, libc::SYS_sendfile, libc::SYS_socket,
    libc::SYS_socketpair, libc::SYS_connect, libc::SYS_accept, libc::SYS_accept4, libc::SYS_sendto,
    libc::SYS_recvfrom, libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg,
    libc::SYS_shutdown, libc::SYS_bind, libc::SYS_listen, libc::SYS_getsockname, libc::SYS_getpeername,
    libc::SYS_setsockopt, libc::SYS_getsockopt, libc::SYS_waitid, libc::SYS_kill, libc::SYS_tkill,
    libc::SYS_tgkill, libc::SYS_uname, libc::SYS_flock, libc::SYS_fsync, libc::SYS_fdatasync,
    libc::SYS_sync_file_range, libc::SYS_truncate, libc::SYS_ftruncate, libc::SYS_fallocate,
    libc::SYS_getcwd, libc::SYS_chdir, libc::SYS_fchdir, libc::SYS_renameat, libc::SYS_renameat2,
    libc::SYS_mkdirat, libc::SYS_linkat, libc::SYS_unlinkat, libc::SYS_symlinkat, libc::SYS_readlinkat,
    libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchmodat2, libc::SYS_fchown, libc::SYS_fchownat,
    libc::SYS_umask, libc::SYS_gettimeofday, libc::SYS_getrlimit, libc::SYS_prlimit64, libc::SYS_getrusage,
    libc::SYS_sysinfo, libc::SYS_times, libc::SYS_getpriority, libc::SYS_setpriority, libc::SYS_prctl,
    libc::SYS_utimensat, libc::SYS_futex_waitv, libc::SYS_set_tid_address, libc::SYS_set_robust_list,
    libc::SYS_get_robust_list, libc::SYS_restart_syscall, libc::SYS_clock_getres, libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2,
    libc::SYS_signalfd4, libc::SYS_timerfd_create, libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime,
    libc::SYS_timer_create, libc::SYS_timer_settime, libc::SYS_timer_gettime, libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete, libc::SYS_inotify_init1, libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch,
    libc::SYS_memfd_create, libc::SYS_copy_file_range, libc::SYS_splice, libc::SYS_tee, libc::SYS_vmsplice,
    libc::SYS_rseq, libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr, libc::SYS_listxattr,
    libc::SYS_llistxattr, libc::SYS_flistxattr, libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr,
    libc::SYS_removexattr, libc::SYS_lremovexattr, libc::SYS_fremovexattr, libc::SYS_fadvise64,
    libc::SYS_readahead, libc::SYS_io_setup, libc::SYS_io_destroy, libc::SYS_io_getevents,
    libc::SYS_io_submit, libc::SYS_io_cancel, libc::SYS_mq_open, libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend, libc::SYS_mq_timedreceive, libc::SYS_mq_notify, libc::SYS_mq_getsetattr,
    libc::SYS_shmget, libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_shmdt, libc::SYS_semget, libc::SYS_semop,
    libc::SYS_semctl, libc::SYS_semtimedop, libc::SYS_msgget, libc::SYS_msgsnd, libc::SYS_msgrcv,
    libc::SYS_msgctl, libc::SYS_personality, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal,
    libc::SYS_setuid, libc::SYS_setgid, libc::SYS_setreuid, libc::SYS_setregid, libc::SYS_setresuid,
    libc::SYS_setresgid, libc::SYS_setfsuid, libc::SYS_setfsgid, libc::SYS_setgroups, libc::SYS_capset,
    libc::SYS_sched_setparam, libc::SYS_sched_setscheduler, libc::SYS_sched_setattr, libc::SYS_getcpu,
    libc::SYS_sync, libc::SYS_syncfs, libc::SYS_mknodat, libc::SYS_get_mempolicy, libc::SYS_set_mempolicy,
    libc::SYS_mbind, libc::SYS_ioprio_get, libc::SYS_ioprio_set, libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule, libc::SYS_landlock_restrict_self, libc::SYS_seccomp,
    libc::SYS_process_madvise,
    #[cfg(target_arch = "x86_64")] libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")] libc::SYS_open,
    #[cfg(target_arch = "x86_64")] libc::SYS_creat,
    #[cfg(target_arch = "x86_64")] libc::SYS_stat,
    #[cfg(target_arch = "x86_64")] libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")] libc::SYS_access,
    #[cfg(target_arch = "x86_64")] libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")] libc::SYS_select,
    #[cfg(target_arch = "x86_64")] libc::SYS_poll,
    #[cfg(target_arch = "x86_64")] libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")] libc::SYS_pause,
    #[cfg(target_arch = "x86_64")] libc::SYS_alarm,
    #[cfg(target_arch = "x86_64")] libc::SYS_fork,
    #[cfg(target_arch = "x86_64")] libc::SYS_vfork,
    #[cfg(target_arch = "x86_64")] libc::SYS_getdents,
    #[cfg(target_arch = "x86_64")] libc::SYS_rename,
    #[cfg(target_arch = "x86_64")] libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")] libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")] libc::SYS_link,
    #[cfg(target_arch = "x86_64")] libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")] libc::SYS_symlink,
    #[cfg(target_arch = "x86_64")] libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")] libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")] libc::SYS_chown,
    #[cfg(target_arch = "x86_64")] libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")] libc::SYS_mknod,
    #[cfg(target_arch = "x86_64")] libc::SYS_utime,
    #[cfg(target_arch = "x86_64")] libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")] libc::SYS_futimesat,
    #[cfg(target_arch = "x86_64")] libc::SYS_time,
    #[cfg(target_arch = "x86_64")] libc::SYS_getpgrp,
    #[cfg(target_arch = "x86_64")] libc::SYS_epoll_create,
    #[cfg(target_arch = "x86_64")] libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")] libc::SYS_eventfd,
    #[cfg(target_arch = "x86_64")] libc::SYS_signalfd,
    #[cfg(target_arch = "x86_64")] libc::SYS_inotify_init,
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
fn match_any(prog: &mut Program, numbers: &[i64], action: u32) {
    for chunk in numbers.chunks(200) {
        let n = chunk.len();
        for (i, nr) in chunk.iter().enumerate() {
            // On a match, skip the rest of the chunk and the `ja` to land on the return.
            prog.push(jump(BPF_JEQ_K, *nr as u32, (n - i) as u8, 0));
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
    prog.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    prog.push(stmt(BPF_RET_K, RET_ENOSYS));
    // clone: refused with any namespace flag, else the mode's default for ordinary calls.
    prog.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 4));
    prog.push(stmt(BPF_LD_W_ABS, ARG0_LOW));
    prog.push(jump(BPF_JSET_K, NAMESPACE_FLAGS, 0, 1));
    prog.push(stmt(BPF_RET_K, RET_EPERM));
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    match mode {
        SeccompMode::DenyList => {
            // ptrace: attaching to a process (rather than being traced by one's parent) is refused.
            prog.push(jump(BPF_JEQ_K, libc::SYS_ptrace as u32, 0, 5));
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
        for &n in DENIED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(n), 0), RET_EPERM, "syscall {n}");
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
        for &n in ALLOWED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(n), 0), RET_ALLOW, "syscall {n}");
        }
        for &n in DENIED {
            assert_eq!(eval(&p, AUDIT_ARCH, nr(n), 0), RET_EPERM, "syscall {n}");
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
        for nr in DENIED {
            assert!(
                !ALLOWED.contains(nr),
                "syscall {nr} is both allowed and denied"
            );
        }
        assert!(!ALLOWED.contains(&libc::SYS_ptrace) && !ALLOWED.contains(&libc::SYS_clone3));
    }
}
