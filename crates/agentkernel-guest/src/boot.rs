//! Boot: the agent's own mounts (in the initramfs) and the sandbox's root that commands see.
//!
//! Layout, all under `/run/ak` of the initramfs:
//! - `image`: `/dev/vda`, the host's ext4 image of the root filesystem, read-only;
//! - `rw`: the writable layer — `/dev/vdb` (a host-formatted ext4: a persistent sandbox) when
//!   the VM has one, else a tmpfs of `ak.rw_size=<MiB>` (the kernel's default size without it);
//! - `root`: overlay(lower = `image`, upper = `rw/upper`, work = `rw/work`) with `/proc`, a
//!   minimal `/dev` (a tmpfs with the usual nodes and a private devpts), read-only `/sys`, a
//!   tmpfs `/tmp` and the directory `/workspace`.
//!
//! With `ak.ro=1` the root's own mount is made read-only after that, as the native backend does
//! (`agentkernel-native` `rootfs.rs`): only `/tmp` (and `/dev`) stay writable.
//!
//! The agent itself stays in the initramfs: commands are `chroot`ed into `root` and never see
//! it or its ports.

use std::path::Path;

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::error::{BootError, boot_step};

pub const IMAGE_DIR: &str = "/run/ak/image";
pub const RW_DIR: &str = "/run/ak/rw";
pub const ROOT_DIR: &str = "/run/ak/root";
pub const CGROUP_DIR: &str = "/sys/fs/cgroup";

/// What the kernel command line asks of the agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// `ak.ro=1`: the sandbox's root is read-only.
    pub read_only: bool,
    /// `ak.rw_size=<MiB>`: the size of the tmpfs writable layer.
    pub rw_size_mib: Option<u64>,
    /// `ak.hostname=<name>`: the sandbox's hostname (its name).
    pub hostname: Option<String>,
}

impl BootOptions {
    /// Parses the `ak.*` words of a kernel command line; other words are the kernel's.
    pub fn parse(cmdline: &str) -> Result<Self, BootError> {
        let mut o = Self::default();
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("ak.ro=") {
                o.read_only = match v {
                    "1" => true,
                    "0" => false,
                    _ => return Err(BootError::Cmdline(format!("{word} (ak.ro is 0 or 1)"))),
                };
            } else if let Some(v) = word.strip_prefix("ak.hostname=") {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                if !ok {
                    return Err(BootError::Cmdline(format!(
                        "{word} (a hostname of letters, digits, '-', '.', '_')"
                    )));
                }
                o.hostname = Some(v.to_owned());
            } else if let Some(v) = word.strip_prefix("ak.rw_size=") {
                let mib = v.parse::<u64>().ok().filter(|m| *m > 0).ok_or_else(|| {
                    BootError::Cmdline(format!("{word} (ak.rw_size is a size in MiB)"))
                })?;
                o.rw_size_mib = Some(mib);
            }
        }
        Ok(o)
    }
}

/// What boot found out that later requests need.
#[derive(Debug)]
pub struct Booted {
    pub options: BootOptions,
    /// Whether cgroup2 is mounted at [`CGROUP_DIR`] (limits need it).
    pub cgroup: bool,
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Errno> {
    let data = std::ffi::CString::new(data).map_err(|_| Errno::INVAL)?;
    rustix::mount::mount(src, target, fstype, flags, Some(data.as_c_str()))
}

fn mkdir_p(path: &str, mode: u32) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|e| BootError::Sys {
        step: "create directory",
        path: path.to_owned(),
        errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
    })?;
    rustix::fs::chmod(path, Mode::from_raw_mode(mode)).map_err(boot_step("chmod", path))
}

/// Mounts what the agent needs in the initramfs, then the sandbox's root.
pub fn boot() -> Result<Booted, BootError> {
    let nosuid = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for (dir, fstype, flags, data) in [
        ("/proc", "proc", nosuid, ""),
        ("/sys", "sysfs", nosuid, ""),
        ("/dev", "devtmpfs", MountFlags::NOSUID, "mode=0755"),
    ] {
        mkdir_p(dir, 0o755)?;
        match mount(fstype, dir, fstype, flags, data) {
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(Errno::BUSY) => {}
            Err(e) => return Err(boot_step("mount", dir)(e)),
        }
    }
    mkdir_p("/dev/pts", 0o755)?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "ptmxmode=0666,mode=0620",
    )
    .map_err(boot_step("mount devpts on", "/dev/pts"))?;
    // Limits need cgroup2; without it the agent still runs commands, and a SetPolicy asking for
    // limits is refused (never silently ignored).
    // `favordynmods`: moving a process into a cgroup (every command joins the sandbox's) then
    // takes no RCU grace period; without it each command waited tens of milliseconds here.
    let cgroup = mount("cgroup2", CGROUP_DIR, "cgroup2", nosuid, "favordynmods").is_ok()
        || mount("cgroup2", CGROUP_DIR, "cgroup2", nosuid, "").is_ok();

    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| BootError::Sys {
        step: "read",
        path: "/proc/cmdline".into(),
        errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
    })?;
    let options = BootOptions::parse(&cmdline)?;
    sandbox_root(&options)?;
    Ok(Booted { options, cgroup })
}

/// Assembles the sandbox's root at [`ROOT_DIR`].
fn sandbox_root(o: &BootOptions) -> Result<(), BootError> {
    for dir in [IMAGE_DIR, RW_DIR, ROOT_DIR] {
        mkdir_p(dir, 0o755)?;
    }
    mount(
        "/dev/vda",
        IMAGE_DIR,
        "ext4",
        MountFlags::RDONLY | MountFlags::NODEV,
        "",
    )
    .map_err(boot_step(
        "mount the root image (ext4 on /dev/vda) on",
        IMAGE_DIR,
    ))?;
    if Path::new("/dev/vdb").exists() {
        mount("/dev/vdb", RW_DIR, "ext4", MountFlags::NODEV, "").map_err(boot_step(
            "mount the writable disk (ext4 on /dev/vdb) on",
            RW_DIR,
        ))?;
    } else {
        let size = o
            .rw_size_mib
            .map(|m| format!(",size={m}m"))
            .unwrap_or_default();
        mount(
            "tmpfs",
            RW_DIR,
            "tmpfs",
            MountFlags::NODEV,
            &format!("mode=0755{size}"),
        )
        .map_err(boot_step("mount the writable tmpfs on", RW_DIR))?;
    }
    let upper = format!("{RW_DIR}/upper");
    let work = format!("{RW_DIR}/work");
    mkdir_p(&upper, 0o755)?;
    mkdir_p(&work, 0o700)?;
    mount(
        "overlay",
        ROOT_DIR,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("lowerdir={IMAGE_DIR},upperdir={upper},workdir={work}"),
    )
    .map_err(boot_step("mount the overlay root on", ROOT_DIR))?;

    for dir in ["proc", "dev", "sys", "tmp", "workspace"] {
        let path = format!("{ROOT_DIR}/{dir}");
        if !Path::new(&path).is_dir() {
            mkdir_p(&path, 0o755)?;
        }
    }
    let nosuid = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let at = |d: &str| format!("{ROOT_DIR}/{d}");
    mount("proc", &at("proc"), "proc", nosuid, "")
        .map_err(boot_step("mount proc on", &at("proc")))?;
    mount(
        "sysfs",
        &at("sys"),
        "sysfs",
        nosuid | MountFlags::RDONLY,
        "",
    )
    .map_err(boot_step("mount sysfs on", &at("sys")))?;
    mount(
        "tmpfs",
        &at("tmp"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )
    .map_err(boot_step("mount tmpfs on", &at("tmp")))?;
    minimal_dev(&at("dev"))?;
    if o.read_only {
        // Only the root's own mount: /tmp and /dev keep their own, writable, mounts.
        // A bind remount sets the mount's flags to exactly these: keep nosuid and nodev.
        let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        rustix::mount::mount_remount(ROOT_DIR, flags, "")
            .map_err(boot_step("remount read-only", ROOT_DIR))?;
    }
    Ok(())
}

/// Devices of the sandbox: name, major, minor. No disks and no virtio ports: the sandbox's
/// root must not reach the raw image or the agent's channels.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn minimal_dev(dev: &str) -> Result<(), BootError> {
    mount(
        "tmpfs",
        dev,
        "tmpfs",
        MountFlags::NOSUID,
        "mode=0755,size=1m",
    )
    .map_err(boot_step("mount tmpfs on", dev))?;
    for (name, major, minor) in DEVICES {
        let path = format!("{dev}/{name}");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(*major, *minor),
        )
        .map_err(boot_step("mknod", &path))?;
        // mknod's mode is cut by the umask.
        rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(0o666))
            .map_err(boot_step("chmod", &path))?;
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = format!("{dev}/{name}");
        rustix::fs::symlink(target, path.as_str()).map_err(boot_step("symlink", &path))?;
    }
    let pts = format!("{dev}/pts");
    let shm = format!("{dev}/shm");
    mkdir_p(&pts, 0o755)?;
    mkdir_p(&shm, 0o1777)?;
    // A devpts instance of the sandbox's own: its PTYs are the only ones a command can list.
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    .map_err(boot_step("mount devpts on", &pts))?;
    mount(
        "tmpfs",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )
    .map_err(boot_step("mount tmpfs on", &shm))
}

/// Best effort before power-off: everything to disk, then the sandbox's mounts and the
/// writable layer unmounted so a persistent disk's journal is clean.
pub fn unmount_all() {
    rustix::fs::sync();
    for d in ["dev/pts", "dev/shm", "dev", "tmp", "sys", "proc", ""] {
        let path = format!("{ROOT_DIR}/{d}");
        let _ = rustix::mount::unmount(path.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
    // The agent's open root keeps the detached overlay alive, and the overlay keeps the
    // writable layer's filesystem alive after its mount is gone: only a read-only remount,
    // before the unmount, flushes the journal and marks a persistent disk clean (measured:
    // unmounting alone left the journal needing recovery). Killed processes may take a moment
    // to let go of their files.
    for _ in 0..50 {
        if rustix::mount::mount_remount(RW_DIR, MountFlags::RDONLY, "").is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = rustix::mount::unmount(RW_DIR, rustix::mount::UnmountFlags::empty());
    let _ = rustix::mount::unmount(IMAGE_DIR, rustix::mount::UnmountFlags::DETACH);
    rustix::fs::sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let o =
            BootOptions::parse("console=ttyS0 quiet ak.ro=1 ak.rw_size=512 ak.hostname=dev-1\n")
                .expect("parse");
        assert_eq!(
            o,
            BootOptions {
                read_only: true,
                rw_size_mib: Some(512),
                hostname: Some("dev-1".into()),
            }
        );
        assert!(BootOptions::parse("ak.hostname=a;b").is_err());
        assert_eq!(
            BootOptions::parse("reboot=t").expect("parse"),
            BootOptions::default()
        );
        assert!(BootOptions::parse("ak.ro=yes").is_err());
        assert!(BootOptions::parse("ak.rw_size=0").is_err());
    }
}
