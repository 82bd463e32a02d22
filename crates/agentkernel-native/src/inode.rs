//! What an opened file is, before anything reads or writes it: its type and the filesystem it
//! is on, learnt from an `O_PATH` descriptor (opening one never calls a device driver's open,
//! never waits for a FIFO's other end and never opens a kernel file), then reopened for real
//! through that same descriptor, so the object checked is the object used.
//!
//! The host touches sandbox content only this way (`files.rs`, `copy.rs`): regular files and
//! directories on filesystems that hold content. Kernel pseudo-filesystems (procfs, sysfs,
//! cgroupfs, …) are refused: their files are views of kernel and process state — another
//! process's environment, the kernel log, device and cgroup controls — and host root reading
//! or writing them for a sandbox would act on the host.

use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};

/// Filesystems whose files are kernel state rather than content, by `statfs` magic
/// (linux/magic.h). Device nodes on an ordinary filesystem are refused by their type instead.
const KERNEL_FILESYSTEMS: &[(u32, &str)] = &[
    (0x0000_9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x6265_6570, "configfs"),
    (0x0000_1cd1, "devpts"),
    (0x1980_0202, "mqueue"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x5a3c_69f0, "apparmorfs"),
    (0x6e73_6673, "nsfs"),
    (0x0765_5821, "resctrl"),
    (0x6759_6969, "rpc_pipefs"),
    (0x6e66_7364, "nfsd"),
    (0x0000_9fa2, "usbdevfs"),
    (0x0a64_7361, "functionfs"),
    (0xabba_1974, "xenfs"),
];

/// The name of the kernel pseudo-filesystem `fd` is on, if it is on one.
pub fn kernel_filesystem(fd: impl AsFd) -> std::io::Result<Option<&'static str>> {
    let st = rustix::fs::fstatfs(fd)?;
    // The magic is a 32-bit value in a word whose width and signedness vary by C library.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let magic = st.f_type as u32;
    Ok(KERNEL_FILESYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name))
}

/// How a file type is named in errors.
pub fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a named pipe (FIFO)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// The type of the file `fd` refers to.
pub fn kind_of(fd: impl AsFd) -> std::io::Result<FileType> {
    Ok(FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode))
}

/// Opens the regular file an `O_PATH` descriptor refers to, for reading or writing (`flags`):
/// through the process's own descriptor table, so no path is resolved again. Never blocks and
/// never passes to children.
pub fn reopen_file(path_fd: &OwnedFd, flags: OFlags) -> std::io::Result<OwnedFd> {
    debug_assert_eq!(kind_of(path_fd).ok(), Some(FileType::RegularFile));
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()).as_str(),
        flags | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?)
}

/// Opens the directory an `O_PATH` descriptor refers to, for listing and for `fchmod`.
pub fn reopen_dir(path_fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        path_fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opath(path: &str) -> OwnedFd {
        rustix::fs::open(
            path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open O_PATH")
    }

    #[test]
    fn kernel_filesystems_are_named_and_content_is_not() {
        assert_eq!(
            kernel_filesystem(opath("/proc/self/status")).expect("statfs"),
            Some("procfs")
        );
        assert_eq!(
            kernel_filesystem(opath("/sys/kernel")).expect("statfs"),
            Some("sysfs")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            kernel_filesystem(opath(dir.path().to_str().expect("utf-8"))).expect("statfs"),
            None
        );
    }

    #[test]
    fn a_fifo_is_inspected_without_blocking_and_reopened_only_when_regular() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("f");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let fd = opath(fifo.to_str().expect("utf-8"));
        assert_eq!(kind_of(&fd).expect("fstat"), FileType::Fifo);
        assert_eq!(kind_name(FileType::Fifo), "a named pipe (FIFO)");

        let file = dir.path().join("r");
        std::fs::write(&file, "x").expect("write");
        let fd = opath(file.to_str().expect("utf-8"));
        let opened = reopen_file(&fd, OFlags::RDONLY).expect("reopen");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(opened), &mut text).expect("read");
        assert_eq!(text, "x");
    }
}
