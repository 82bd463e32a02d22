//! A persistent sandbox's disk: its writable layer on an ext4 filesystem image of the size of
//! the policy's disk limit, so that a sandbox cannot fill the host's disk.
//!
//! The host side (`prepare_image`) makes the image once, at the sandbox's first start: a sparse
//! file of `disk_mb` formatted with `mkfs.ext4` (it costs the host only what is written). The
//! sandbox's init (`mount_image`, during its setup) attaches it to a free loop device with
//! `LO_FLAGS_AUTOCLEAR` and mounts it `nodev,nosuid` inside its own mount namespace: nothing is
//! mounted on the host, and the loop device detaches itself when the namespace goes (the init
//! exits) and the filesystem is unmounted with it.
//!
//! One image is never mounted twice: the init holds an exclusive `flock` on the open file that
//! it hands to the loop device, which keeps that file (and so the lock) until it detaches. A
//! start while an earlier start's loop device is still being released waits for it.

use crate::rootfs::SetupError;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The image's file name in the sandbox's directory.
pub const IMAGE: &str = "disk.img";
/// Where an older agentkernel kept a persistent sandbox's upper layer, as a host directory.
const LEGACY_UPPER: &str = "upper";
const LEGACY_WORK: &str = "work";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "persistent sandboxes need mkfs.ext4 to make their disk image, and it is not installed: install e2fsprogs (`apt-get install e2fsprogs`)"
    )]
    NoMkfs,
    #[error("cannot make the sandbox's disk image {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
    #[error(
        "a disk of {disk_mb} MB is more than the filesystem of {dir} can hold: give a smaller --disk (or disk_mb)"
    )]
    TooLarge { dir: PathBuf, disk_mb: u64 },
    #[error("cannot make the sandbox's disk image {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The sandbox's disk image in `dir`, made (sparse, `disk_mb` MB, ext4) when it does not exist
/// yet. The upper directory of a sandbox made by an older agentkernel (`dir/upper`) is copied
/// into the new image, so its files survive the change. On error nothing new is left.
pub fn prepare_image(dir: &Path, disk_mb: u64) -> Result<PathBuf, DiskError> {
    let image = dir.join(IMAGE);
    if std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file()) {
        return Ok(image);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    let fresh = dir.join(".disk.img.new");
    let _ = std::fs::remove_file(&fresh);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(io(&fresh))?;
        if let Err(e) = file.set_len(disk_mb.saturating_mul(1024 * 1024)) {
            let _ = std::fs::remove_file(&fresh);
            return Err(if e.raw_os_error() == Some(libc::EFBIG) {
                DiskError::TooLarge {
                    dir: dir.to_path_buf(),
                    disk_mb,
                }
            } else {
                DiskError::Io {
                    path: fresh.clone(),
                    source: e,
                }
            });
        }
    }
    let legacy = dir.join(LEGACY_UPPER);
    let staged = dir.join(".legacy");
    let migrate = legacy.is_dir();
    if migrate {
        // mkfs.ext4 -d copies a directory's contents to the new filesystem's root; the layer
        // must land in its `upper` directory.
        let _ = std::fs::remove_dir_all(&staged);
        std::fs::create_dir(&staged).map_err(io(&staged))?;
        std::fs::rename(&legacy, staged.join(LEGACY_UPPER)).map_err(io(&legacy))?;
    }
    let made = mkfs(&fresh, migrate.then_some(staged.as_path()));
    let made = made.and_then(|()| std::fs::rename(&fresh, &image).map_err(io(&image)));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&fresh);
        if migrate {
            let _ = std::fs::rename(staged.join(LEGACY_UPPER), &legacy);
            let _ = std::fs::remove_dir(&staged);
        }
        return Err(e);
    }
    if migrate {
        let _ = std::fs::remove_dir_all(&staged);
        let _ = std::fs::remove_dir_all(dir.join(LEGACY_WORK));
    }
    Ok(image)
}

/// Where mkfs.ext4 is: the system directories first (a server's PATH may lack sbin).
fn mkfs_program() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].map(PathBuf::from);
    candidates.into_iter().find(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("mkfs.ext4"))
                .find(|p| p.is_file())
        })
    })
}

/// Formats `image` as ext4, populated from `content` when given. The file is new and sparse,
/// so its inode tables and journal already read as zeros: mkfs skips writing them (the lazy
/// options) and the kernel is told not to zero them later (`noinit_itable` at mount). About
/// 30 ms and 4 MB written for 10 GB. No reserved blocks: the sandbox may use the whole limit
/// whatever its uid.
fn mkfs(image: &Path, content: Option<&Path>) -> Result<(), DiskError> {
    let program = mkfs_program().ok_or(DiskError::NoMkfs)?;
    let mut cmd = Command::new(&program);
    cmd.args(["-q", "-F", "-m", "0", "-L", "agentkernel"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]);
    if let Some(dir) = content {
        cmd.arg("-d").arg(dir);
    }
    let out = cmd
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DiskError::Mkfs {
            path: image.to_path_buf(),
            detail: format!("cannot run {}: {e}", program.display()),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = format!("{} failed ({})", program.display(), out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        detail.push_str(": ");
        detail.push_str(stderr.trim());
    }
    if content.is_some() {
        detail.push_str(
            " (copying the files of the sandbox's earlier upper directory into it: are they larger than its disk limit?)",
        );
    }
    Err(DiskError::Mkfs {
        path: image.to_path_buf(),
        detail,
    })
}

/// How long a start waits for the loop device of the sandbox's previous start to let go of the
/// image (it does once its mount namespace has been torn down, which follows the init's exit).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// In the sandbox's init: attaches `image` to a free loop device and mounts it on `target`
/// (ext4, `nodev,nosuid`). The mount belongs to the init's mount namespace; the loop device is
/// detached by the kernel when that mount goes.
pub(crate) fn mount_image(image: &Path, target: &Path) -> Result<(), SetupError> {
    let (device, device_path) = attach_locked(
        image,
        "the disk image is still in use by an earlier start of this sandbox (wait a moment, then start it again):",
    )?;
    let data = std::ffi::CString::new("noinit_itable,discard").map_err(|_| Errno::INVAL);
    let mounted = data.and_then(|data| {
        rustix::mount::mount(
            device_path.as_path(),
            target,
            "ext4",
            rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOSUID,
            Some(data.as_c_str()),
        )
    });
    // Closing the device detaches it now if the mount failed, or when the mount goes.
    drop(device);
    mounted.map_err(fail("mount the disk image", image))
}

/// On the host, for a stopped sandbox: mounts its disk image read-only as a detached mount
/// (`fsmount`: attached to no directory, so no path on the host shows it, and gone when the
/// returned descriptor closes) and returns the mount's root, open. The image's lock is held by
/// the loop device for as long as the mount lives, so the sandbox cannot start meanwhile (a
/// start waits for it, `RELEASE_WAIT`).
pub(crate) fn mount_detached(image: &Path) -> Result<OwnedFd, SetupError> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let (device, device_path) = attach_locked(
        image,
        "the disk image is in use (the sandbox is starting, or another snapshot of it is being taken); try again in a moment:",
    )?;
    let context = rustix::mount::fsopen("ext4", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(fail("open an ext4 mount context for", image))?;
    rustix::mount::fsconfig_set_string(&context, "source", device_path.as_path())
        .and_then(|()| rustix::mount::fsconfig_set_flag(&context, "ro"))
        .and_then(|()| rustix::mount::fsconfig_create(&context))
        .map_err(fail("mount the disk image", image))?;
    let mount = rustix::mount::fsmount(
        &context,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(fail("mount the disk image", image))?;
    // The mount holds the device now; closing ours lets it detach when the mount goes.
    drop(device);
    Ok(mount)
}

fn fail(step: &'static str, path: &Path) -> impl FnOnce(Errno) -> SetupError {
    let path = path.display().to_string();
    move |errno| SetupError { step, path, errno }
}

/// Opens `image`, takes its exclusive lock (`in_use` says who may hold it) and attaches it to a
/// free loop device; returns the device, open, and its path. The device holds its own
/// reference to the file, and with it the lock, until it detaches.
fn attach_locked(image: &Path, in_use: &'static str) -> Result<(OwnedFd, PathBuf), SetupError> {
    let file = rustix::fs::open(
        image,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(fail("open the disk image", image))?;
    lock(&file).map_err(fail(in_use, image))?;
    attach(&file, image).map_err(fail(
        "attach the disk image to a loop device (does this host have /dev/loop-control?):",
        image,
    ))
}

/// Takes the image's exclusive lock, waiting up to `RELEASE_WAIT` for an earlier holder.
fn lock(file: &OwnedFd) -> rustix::io::Result<()> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of linux/loop.h (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How many times a free loop device is asked for when another process takes it first.
const ATTACH_ATTEMPTS: usize = 32;

/// Attaches `file` to a free loop device with autoclear; returns the device, open, and its path.
fn attach(file: &OwnedFd, image: &Path) -> rustix::io::Result<(OwnedFd, PathBuf)> {
    let control = rustix::fs::open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut config = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size: 0,
        // SAFETY: plain integers and byte arrays, for which all zeros is a valid value.
        info: unsafe { std::mem::zeroed() },
        reserved: [0; 8],
    };
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    // Shown by `losetup -l` on the host: which file a loop device of agentkernel's serves.
    let name = image.as_os_str().as_encoded_bytes();
    let shown = name.len().min(LO_NAME_SIZE - 1);
    config.info.lo_file_name[..shown].copy_from_slice(&name[name.len() - shown..]);
    let mut last = Errno::BUSY;
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(Errno::from_raw_os_error(errno()));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
            Ok(d) => d,
            // Removed by another process between the two calls: ask again.
            Err(e @ Errno::NOENT) | Err(e @ Errno::NXIO) => {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is and which
        // outlives the call.
        let r = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok((device, path));
        }
        match errno() {
            // Another process configured the same free device first.
            libc::EBUSY => last = Errno::BUSY,
            e => return Err(Errno::from_raw_os_error(e)),
        }
    }
    Err(last)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
