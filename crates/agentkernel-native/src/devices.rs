//! The device allow-list of every sandbox: which device nodes its processes may open, whatever
//! nodes its root holds.
//!
//! Mounts are `nodev` already (`rootfs.rs`) except the sandbox's own `/dev`; the allow-list is
//! the second wall: the character devices of that `/dev` (null, zero, full, random, urandom,
//! tty, ptmx and the ptys) may be read and written, nothing else may be opened, and no device
//! node may be created (mknod). It is enforced by the kernel's device cgroup:
//! - the v1 `devices` controller where it is mounted (`devices.deny` `a`, then one
//!   `devices.allow` line per rule);
//! - on a cgroup v2 host, a `BPF_PROG_TYPE_CGROUP_DEVICE` program, as runc and crun use (v2 has
//!   no devices controller files), attached once to `agentkernel/`, the parent of every
//!   sandbox's group, whose descendants all run it (`attach_v2` says why not per sandbox).
//!
//! The sandbox's init joins its cgroups after it has built `/dev` (`boot.rs`), so the rules need
//! no mknod permission even for the nodes it makes there.

use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// What a rule lets a process do with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access(u8);

impl Access {
    const READ_WRITE: Access = Access(BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE);
}

/// One allowed character device; `minor: None` is every minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    major: u32,
    minor: Option<u32>,
    access: Access,
}

const fn chr(major: u32, minor: u32) -> Rule {
    Rule {
        major,
        minor: Some(minor),
        access: Access::READ_WRITE,
    }
}

/// The devices a sandbox may use: its `/dev` (`rootfs::DEVICES`), devpts's ptmx (5:2) and the
/// ptys it hands out (136:*).
pub const ALLOWED: &[Rule] = &[
    chr(1, 3),
    chr(1, 5),
    chr(1, 7),
    chr(1, 8),
    chr(1, 9),
    chr(5, 0),
    chr(5, 2),
    Rule {
        major: 136,
        minor: None,
        access: Access::READ_WRITE,
    },
];

/// The lines written to a v1 group's `devices.allow`, one per rule (`c 1:3 rw`).
pub fn v1_rules() -> Vec<String> {
    ALLOWED
        .iter()
        .map(|r| {
            let minor = r.minor.map_or("*".to_string(), |m| m.to_string());
            let mut access = String::new();
            if r.access.0 & BPF_DEVCG_ACC_READ != 0 {
                access.push('r');
            }
            if r.access.0 & BPF_DEVCG_ACC_WRITE != 0 {
                access.push('w');
            }
            if r.access.0 & BPF_DEVCG_ACC_MKNOD != 0 {
                access.push('m');
            }
            format!("c {}:{minor} {access}", r.major)
        })
        .collect()
}

/// Applies the allow-list to the v1 devices group `dir` (new and empty): deny everything, then
/// allow the rules. Each write to `devices.allow` is one rule; they go through one open file
/// (a third of the cost of opening it per rule, ~30 us in all).
pub fn limit_v1(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let open = |name: &str| {
        rustix::fs::open(
            dir.join(name),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    rustix::io::write(open("devices.deny")?, b"a")?;
    let allow = open("devices.allow")?;
    for rule in v1_rules() {
        rustix::io::write(&allow, rule.as_bytes())?;
    }
    Ok(())
}

// The device program is assembled here by hand, as runc's `libcontainer/cgroups/devices/ebpf`
// and crun's `ebpf.c` do: it is a dozen instructions per rule, and no maintained small crate
// builds or loads cgroup device programs (aya and libbpf-rs bring a whole BPF toolchain or
// libbpf for a program that needs neither maps nor helpers).

/// `struct bpf_cgroup_dev_ctx`: access_type (access << 16 | type), major, minor; all u32.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_MKNOD: u8 = 1;
const BPF_DEVCG_ACC_READ: u8 = 2;
const BPF_DEVCG_ACC_WRITE: u8 = 4;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    /// dst in the low four bits, src in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 holds the context on entry, r0 the verdict (1 allow, 0 deny) on exit.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program for `rules`: allow (1) the first matching rule, deny (0) the rest. In C:
///
/// ```text
/// type = ctx->access_type & 0xffff; access = ctx->access_type >> 16;
/// for each rule: if (type == CHAR && (access & rule.access) == access
///                    && major == rule.major && (rule.minor == * || minor == rule.minor))
///                    return 1;
/// return 0;
/// ```
pub(crate) fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, TYPE, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_AND_K, TYPE, 0, 0, 0xffff),
        insn(LDX_MEM_W, ACCESS, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, R1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, MINOR, R1, CTX_MINOR, 0),
    ];
    for rule in rules {
        let mut block = vec![
            insn(JNE_K, TYPE, 0, 0, BPF_DEVCG_DEV_CHAR),
            // r1 = access & allowed; a request for more than allowed differs from it.
            insn(ALU32_MOV_X, R1, ACCESS, 0, 0),
            insn(ALU32_AND_K, R1, 0, 0, i32::from(rule.access.0)),
            insn(JNE_X, R1, ACCESS, 0, 0),
            insn(JNE_K, MAJOR, 0, 0, rule.major as i32),
        ];
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, MINOR, 0, 0, minor as i32));
        }
        block.push(insn(ALU32_MOV_K, R0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        // Each failed comparison skips to the next rule: past the rest of this block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU32_MOV_K, R0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// bpf(2) commands, program and attach types, flags.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of the parent groups (systemd's, a container manager's) keep running as well; a
/// device must pass all of them.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel takes a prefix).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The leading fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// The leading fields of `union bpf_attr` for BPF_PROG_QUERY.
#[repr(C)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// The leading fields of `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The leading fields of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error(
        "cannot load the sandbox's device filter (a cgroup BPF program): {source}{log} (the kernel needs CONFIG_CGROUP_BPF, and agentkernel CAP_BPF or CAP_SYS_ADMIN)"
    )]
    Load { source: std::io::Error, log: String },
    #[error("cannot attach the sandboxes' device filter to the cgroup {path}: {source}")]
    Attach {
        path: String,
        source: std::io::Error,
    },
}

/// Makes sure the allow-list program is attached to the cgroup v2 directory `dir` (agentkernel's
/// parent group of every sandbox, or a test's group): from then on the processes of `dir` and
/// of every group below it open only the allowed devices.
///
/// Loading the program costs ~0.4 ms (the verifier and the JIT; measured on the CI machine),
/// a tenth of a `run`, while asking which programs a group has costs microseconds: so the
/// program is attached once, to the parent of the sandboxes' groups, where each sandbox's group
/// inherits it (BPF_F_ALLOW_MULTI: the parent's programs run for its descendants), and later
/// sandboxes only check that it is there. A program of another agentkernel version (another
/// allow-list; its name carries a hash of its instructions) is detached.
pub fn attach_v2(dir: &Path) -> Result<(), DeviceFilterError> {
    let attach_err = |source: std::io::Error| DeviceFilterError::Attach {
        path: dir.display().to_string(),
        source,
    };
    let group = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| attach_err(e.into()))?;
    let insns = program(ALLOWED);
    let name = program_name(&insns);
    let mut current = false;
    for id in attached(&group).map_err(attach_err)? {
        // A program detached meanwhile by another process is simply gone.
        let Ok(prog) = prog_by_id(id) else { continue };
        match prog_name_of(&prog) {
            Ok(n) if n == name => current = true,
            Ok(n) if n.starts_with(NAME_PREFIX) => {
                bpf_attach_op(BPF_PROG_DETACH, &group, &prog, 0).map_err(attach_err)?;
            }
            _ => {}
        }
    }
    if current {
        return Ok(());
    }
    let prog = load(&insns, &name)?;
    // The cgroup holds the program now, until it is detached or the cgroup removed.
    bpf_attach_op(BPF_PROG_ATTACH, &group, &prog, BPF_F_ALLOW_MULTI).map_err(attach_err)
}

/// The names of the device programs attached to the cgroup v2 directory `dir` itself.
pub fn attached_programs(dir: &Path) -> std::io::Result<Vec<String>> {
    let group = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    attached(&group)?
        .into_iter()
        .map(|id| prog_by_id(id).and_then(|p| prog_name_of(&p)))
        .collect()
}

/// How agentkernel's device programs are named: this prefix and 8 hex digits of a hash of the
/// instructions (names are at most 15 characters).
const NAME_PREFIX: &str = "akdev_";

fn program_name(insns: &[Insn]) -> String {
    // FNV-1a: a version tag, not a security measure.
    let mut hash: u32 = 0x811c_9dc5;
    for ins in insns {
        let bytes = [[ins.code, ins.regs], ins.off.to_le_bytes()].concat();
        for b in bytes.iter().chain(ins.imm.to_le_bytes().iter()) {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    format!("{NAME_PREFIX}{hash:08x}")
}

/// bpf(2) with `attr`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` prefix of command `cmd`, and any pointers in it valid
/// for what the command does with them.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the kernel reads (and for some commands writes)
    // `size_of::<T>()` bytes of it during the call only.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// BPF_PROG_ATTACH or BPF_PROG_DETACH of `prog` on `group` for device access.
fn bpf_attach_op(
    cmd: libc::c_int,
    group: &OwnedFd,
    prog: &OwnedFd,
    flags: u32,
) -> std::io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: group.as_fd().as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
    };
    // SAFETY: the attach/detach prefix of bpf_attr, holding no pointers.
    unsafe { bpf(cmd, &mut attr) }.map(|_| ())
}

/// The ids of the device programs attached to `group` itself.
fn attached(group: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: group.as_fd().as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        pad: 0,
    };
    // SAFETY: the query prefix of bpf_attr; the kernel writes at most `prog_cnt` ids to
    // `prog_ids`, which points to that many.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    let n = (attr.prog_cnt as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

fn prog_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the get-fd-by-id prefix of bpf_attr, holding no pointers.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

fn prog_name_of(prog: &OwnedFd) -> std::io::Result<String> {
    // The leading 80 bytes of `struct bpf_prog_info`; the name is at 64..80.
    let mut info = [0u8; 80];
    let mut attr = InfoByFdAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the info-by-fd prefix of bpf_attr; the kernel writes at most `info_len` bytes
    // to `info`, which has them.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Loads `insns` as a cgroup device program; on failure, loads it again with the verifier's
/// log to say why.
fn load(insns: &[Insn], name: &str) -> Result<OwnedFd, DeviceFilterError> {
    match load_with_log(insns, name, &mut []) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            let mut log = vec![0u8; 16 * 1024];
            let _ = load_with_log(insns, name, &mut log);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            Err(DeviceFilterError::Load {
                source,
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!(" (verifier: {text})")
                },
            })
        }
    }
}

fn load_with_log(insns: &[Insn], name: &str, log: &mut [u8]) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    // SAFETY: the load prefix of bpf_attr; the kernel reads the instructions and license it
    // points to and writes at most `log_size` bytes to `log_buf`; all outlive the call.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `program` answers for a device access: an interpreter of the instructions it emits,
    /// for tests without root.
    fn evaluate(program: &[Insn], dev_type: i32, access: u8, major: u32, minor: u32) -> u32 {
        let ctx = [((u32::from(access)) << 16) | dev_type as u32, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        while let Some(ins) = program.get(pc) {
            let dst = usize::from(ins.regs & 0xf);
            let src = usize::from(ins.regs >> 4);
            pc += 1;
            match ins.code {
                LDX_MEM_W => reg[dst] = u64::from(ctx[(ins.off / 4) as usize]),
                ALU32_AND_K => reg[dst] = (reg[dst] as u32 & ins.imm as u32) as u64,
                ALU32_RSH_K => reg[dst] = ((reg[dst] as u32) >> ins.imm) as u64,
                ALU32_MOV_K => reg[dst] = ins.imm as u32 as u64,
                ALU32_MOV_X => reg[dst] = reg[src] as u32 as u64,
                JNE_K if reg[dst] != ins.imm as u32 as u64 => pc += ins.off as usize,
                JNE_X if reg[dst] != reg[src] => pc += ins.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return reg[0] as u32,
                other => panic!("instruction {other:#x} is not one `program` emits"),
            }
        }
        panic!("the program ran off its end")
    }

    const R: u8 = BPF_DEVCG_ACC_READ;
    const W: u8 = BPF_DEVCG_ACC_WRITE;
    const M: u8 = BPF_DEVCG_ACC_MKNOD;
    const BLOCK: i32 = 1;
    const CHAR: i32 = BPF_DEVCG_DEV_CHAR;

    #[test]
    fn the_program_allows_exactly_the_list() {
        let p = program(ALLOWED);
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            for access in [R, W, R | W] {
                assert_eq!(
                    evaluate(&p, CHAR, access, major, minor),
                    1,
                    "{major}:{minor}"
                );
            }
            assert_eq!(
                evaluate(&p, CHAR, M, major, minor),
                0,
                "mknod {major}:{minor}"
            );
            assert_eq!(evaluate(&p, CHAR, R | M, major, minor), 0);
        }
        assert_eq!(evaluate(&p, CHAR, R | W, 136, 0), 1);
        assert_eq!(evaluate(&p, CHAR, R | W, 136, 4242), 1);
        // kmsg, mem, a loop device, a disk, a tty of the host, the console, tun.
        for (dev_type, major, minor) in [
            (CHAR, 1, 11),
            (CHAR, 1, 1),
            (BLOCK, 7, 0),
            (BLOCK, 8, 0),
            (BLOCK, 1, 3),
            (CHAR, 4, 1),
            (CHAR, 5, 1),
            (CHAR, 10, 200),
        ] {
            for access in [R, W, M, R | W | M] {
                assert_eq!(
                    evaluate(&p, dev_type, access, major, minor),
                    0,
                    "{dev_type} {major}:{minor} {access}"
                );
            }
        }
    }

    #[test]
    fn the_v1_rules_match_the_list() {
        assert_eq!(
            v1_rules(),
            [
                "c 1:3 rw",
                "c 1:5 rw",
                "c 1:7 rw",
                "c 1:8 rw",
                "c 1:9 rw",
                "c 5:0 rw",
                "c 5:2 rw",
                "c 136:* rw"
            ]
        );
    }

    #[test]
    fn attrs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 64);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 16);
        assert_eq!(std::mem::size_of::<ProgQueryAttr>(), 32);
        assert_eq!(std::mem::size_of::<InfoByFdAttr>(), 16);
        let name = program_name(&program(ALLOWED));
        assert!(name.starts_with(NAME_PREFIX) && name.len() == 14, "{name}");
        assert_ne!(name, program_name(&program(&ALLOWED[1..])));
    }
}
