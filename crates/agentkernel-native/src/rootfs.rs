//! Assembling a sandbox's root inside its new mount namespace: overlay root with a private
//! upper directory, read-only binds, fresh /proc, minimal /dev, tmpfs /tmp, then pivot_root.
//!
//! Everything here runs in the sandbox's init process right after it was cloned into its new
//! namespaces, so its mounts are invisible to the host and vanish with the namespace.
//!
//! Every mount is `nodev,nosuid` except the sandbox's own minimal `/dev` (a tmpfs holding only
//! the nodes made here, and a private devpts): a device node or a set-uid file that an image, a
//! directory image or a bind-mounted host directory brings is inert. Every writable filesystem
//! is sized by the policy's disk limit (`RootfsPlan::disk_mb`).

use agentkernel_core::policy::BindMount;
use rustix::fs::{FileType, Mode};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the sandbox's writable layer lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UpperDir {
    /// A tmpfs private to the sandbox, of at most `size_mb`: everything written is gone when it
    /// ends (`run`).
    Tmpfs { size_mb: u64 },
    /// An ext4 filesystem image that survives stop/start (persistent sandboxes; made by
    /// `disk::prepare_image`): attached to a loop device and mounted inside the sandbox's mount
    /// namespace only, so its size is the sandbox's disk limit and nothing is mounted on the
    /// host.
    Disk { image: PathBuf },
}

/// Everything needed to build the root; prepared by the parent before the clone. Serializable:
/// the boot helper receives it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsPlan {
    /// overlayfs lower directories, top first.
    pub lower_dirs: Vec<PathBuf>,
    pub upper: UpperDir,
    /// An empty host directory to assemble on. Mounts on it are private to the sandbox's mount
    /// namespace, so every sandbox may share the same one.
    pub mountpoint: PathBuf,
    /// Host directories bind-mounted read-only at the same path (the `host` image).
    pub host_binds: Vec<PathBuf>,
    /// Policy mounts (permissive profile: project and home).
    pub binds: Vec<BindMount>,
    /// Absolute paths inside the root hidden under an empty read-only directory after the binds
    /// (agentkernel's state directory where a bind would show it). A path that does not exist
    /// needs no hiding.
    pub masked: Vec<PathBuf>,
    /// The policy's disk limit in MB: the size of `/tmp` (and the bound of `/dev/shm`).
    pub disk_mb: u64,
    pub read_only: bool,
    /// Directory created in the root when missing (the default working directory).
    pub workdir: String,
}

/// A failed step, with the path it concerned.
#[derive(Debug, PartialEq, Eq)]
pub struct SetupError {
    pub step: &'static str,
    pub path: String,
    pub errno: Errno,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.step, self.path, self.errno)
    }
}

type Result<T> = std::result::Result<T, SetupError>;

fn fail(step: &'static str, path: &Path) -> impl FnOnce(Errno) -> SetupError {
    let path = path.display().to_string();
    move |errno| SetupError { step, path, errno }
}

/// Devices every sandbox gets: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The most `/dev/shm` gets, in MB (Docker's default `--shm-size`); less when the disk limit is
/// smaller.
pub const SHM_MAX_MB: u64 = 64;

/// The size of the sandbox's `/dev/shm` under a disk limit of `disk_mb`.
pub fn shm_mb(disk_mb: u64) -> u64 {
    disk_mb.min(SHM_MAX_MB)
}

/// Builds the root and pivots into it. Must run in a fresh mount and pid namespace. Returns the
/// directory holding the writable layer (`upper` and `work`), open: the init keeps it, and it is
/// the host's only way to that layer (`/proc/<init>/fd/…`) to snapshot a running sandbox, since
/// nothing of it is left reachable by path after the pivot.
pub fn enter_rootfs(plan: &RootfsPlan) -> Result<rustix::fd::OwnedFd> {
    // Nothing we mount may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(fail("make mounts private", Path::new("/")))?;

    let base = &plan.mountpoint;
    // A small tmpfs on the shared mount point holds the new root's mount point (and the
    // ephemeral upper layer), so nothing of the assembly is written to the host's disk.
    let scratch_mb = match &plan.upper {
        UpperDir::Tmpfs { size_mb } => *size_mb,
        UpperDir::Disk { .. } => 1,
    };
    let opts = format!("size={scratch_mb}m,mode=0755");
    mount_fs(
        "tmpfs",
        base.as_path(),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &opts,
    )
    .map_err(fail("mount scratch tmpfs on", base))?;
    let layer = match &plan.upper {
        UpperDir::Tmpfs { .. } => base.clone(),
        UpperDir::Disk { image } => {
            let disk = base.join("disk");
            mkdir(&disk, 0o755)?;
            crate::disk::mount_image(image, &disk)?;
            disk
        }
    };
    let upper = layer.join("upper");
    let work = layer.join("work");
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o700)?;
    let layer_dir = rustix::fs::open(
        &layer,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open the writable layer", &layer))?;
    let root = base.join("root");
    mkdir(&root, 0o755)?;
    let lower = plan
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount_fs(
        "overlay",
        &root,
        "overlay",
        MountFlags::NODEV | MountFlags::NOSUID,
        &opts,
    )
    .map_err(fail("mount overlay root on", &root))?;

    for dir in ["proc", "dev", "tmp", "sys"] {
        dir_in_root(&root, Path::new(dir))?;
    }
    dir_in_root(&root, Path::new(&plan.workdir))?;

    for host_dir in &plan.host_binds {
        let target = dir_in_root(&root, host_dir)?;
        bind(host_dir, &target, true)?;
    }
    for m in &plan.binds {
        let target = dir_in_root(&root, &m.target)?;
        bind(&m.source, &target, m.read_only)?;
    }
    for path in &plan.masked {
        mask_dir(&root, path)?;
    }

    mount_proc(&root)?;
    mount_dev(&root, shm_mb(plan.disk_mb))?;
    let sys = root.join("sys");
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("sysfs", &sys, "sysfs", ro, "").map_err(fail("mount sysfs on", &sys))?;
    let tmp = root.join("tmp");
    mount_fs(
        "tmpfs",
        &tmp,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=1777,size={}m", plan.disk_mb),
    )
    .map_err(fail("mount /tmp on", &tmp))?;

    pivot_into(&root)?;

    if plan.read_only {
        // Only the root's own mount: /tmp, /dev/shm and the writable binds stay writable.
        set_attrs(Path::new("/"), MountAttrs::ReadOnly, false)
            .map_err(fail("remount read-only", Path::new("/")))?;
    }
    Ok(layer_dir)
}

/// Hides the directory `path` of the root (after the binds, so a path inside a bind is hidden
/// too) under an empty read-only tmpfs. A path that does not exist is left alone: there is
/// nothing to hide, and creating it would write into a bind-mounted host directory.
fn mask_dir(root: &Path, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(fail("refusing a masked path that is not absolute", path)(
            Errno::INVAL,
        ));
    }
    let Some(target) = existing_dir_in_root(root, path)? else {
        return Ok(());
    };
    let flags = MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    mount_fs("tmpfs", &target, "tmpfs", flags, "mode=0555").map_err(fail("hide", path))
}

fn pivot_into(root: &Path) -> Result<()> {
    rustix::process::chdir(root).map_err(fail("chdir", root))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only the
    // new root, with no path back to the host's tree.
    rustix::process::pivot_root(".", ".").map_err(fail("pivot_root into", root))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(fail("detach old root", root))?;
    rustix::process::chdir("/").map_err(fail("chdir", Path::new("/")))?;
    Ok(())
}

fn mount_proc(root: &Path) -> Result<()> {
    let proc_dir = root.join("proc");
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", &proc_dir, "proc", flags, "").map_err(fail("mount proc on", &proc_dir))?;
    // Kernel interfaces a sandbox has no business writing, as container runtimes do: read-only
    // where reading is harmless, hidden where it leaks host state.
    for sub in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let p = proc_dir.join(sub);
        if p.exists() {
            bind(&p, &p, true)?;
        }
    }
    for sub in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
        let p = proc_dir.join(sub);
        if p.exists() {
            rustix::mount::mount_bind("/dev/null", &p).map_err(fail("mask", &p))?;
        }
    }
    for sub in ["acpi", "scsi"] {
        let p = proc_dir.join(sub);
        if p.is_dir() {
            let flags =
                MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
            mount_fs("tmpfs", &p, "tmpfs", flags, "size=0").map_err(fail("mask", &p))?;
        }
    }
    Ok(())
}

fn mount_dev(root: &Path, shm_mb: u64) -> Result<()> {
    let dev = root.join("dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0755,size=64k",
    )
    .map_err(fail("mount /dev on", &dev))?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(*major, *minor),
        )
        .map_err(fail("create device", &p))?;
        // mknod applies the umask; devices must be usable by every uid.
        rustix::fs::chmod(&p, Mode::from_raw_mode(0o666)).map_err(fail("chmod", &p))?;
    }
    let pts = dev.join("pts");
    mkdir(&pts, 0o755)?;
    mount_fs(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    .map_err(fail("mount devpts on", &pts))?;
    let shm = dev.join("shm");
    mkdir(&shm, 0o1777)?;
    mount_fs(
        "tmpfs",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=1777,size={shm_mb}m"),
    )
    .map_err(fail("mount /dev/shm on", &shm))?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(name);
        rustix::fs::symlink(target, &p).map_err(fail("symlink", &p))?;
    }
    Ok(())
}

/// mount(2) with text options (rustix wants them as a C string).
fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> rustix::io::Result<()> {
    let data = std::ffi::CString::new(data).map_err(|_| Errno::INVAL)?;
    rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str()))
}

/// Bind-mounts `source` on `target`, then makes the bind and every mount beneath it
/// `nodev,nosuid` (and read-only when asked): a bind copies the host mount's own flags, and a
/// host directory may hold device nodes or set-uid files.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    rustix::mount::mount_bind_recursive(source, target).map_err(fail("bind-mount", source))?;
    let attrs = if read_only {
        MountAttrs::ReadOnly
    } else {
        MountAttrs::Writable
    };
    set_attrs(target, attrs, true).map_err(fail("make nodev,nosuid", target))
}

/// The flags `set_attrs` sets on a mount.
#[derive(Clone, Copy)]
enum MountAttrs {
    /// `nodev,nosuid`.
    Writable,
    /// `ro,nodev,nosuid`.
    ReadOnly,
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Adds `attrs` to the mount at `target` (and, with `recursive`, to every mount beneath it),
/// keeping its other flags. mount_setattr(2) (Linux 5.12) where the kernel has it; otherwise a
/// bind remount of `target` alone, which replaces the mount's flags with these.
fn set_attrs(target: &Path, attrs: MountAttrs, recursive: bool) -> rustix::io::Result<()> {
    let (set, flags) = match attrs {
        MountAttrs::Writable => (
            MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
            MountFlags::NODEV | MountFlags::NOSUID,
        ),
        MountAttrs::ReadOnly => (
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
            MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        ),
    };
    let path =
        std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| Errno::INVAL)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let at_flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr with a NUL-terminated path and a `struct mount_attr` of the size
    // passed; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            at_flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let errno =
        Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    if errno != Errno::NOSYS {
        return Err(errno);
    }
    rustix::mount::mount_remount(target, MountFlags::BIND | flags, "")
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(fail("mkdir", path)(e)),
    }
}

/// Returns `root/rel` if it is a directory, None if some component is missing. Like
/// `dir_in_root`, any component that is not a real directory is refused.
fn existing_dir_in_root(root: &Path, rel: &Path) -> Result<Option<PathBuf>> {
    walk_in_root(root, rel, false)
}

/// Returns `root/rel` as a directory, creating missing components. Mounts happen before
/// pivot_root, so a symlink in an image (say `/proc -> /`) would otherwise send a mount or a
/// mkdir to the host's tree: any component that is not a real directory is refused.
fn dir_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    walk_in_root(root, rel, true)?.ok_or_else(|| fail("mkdir", &root.join(rel))(Errno::NOENT))
}

fn walk_in_root(root: &Path, rel: &Path, create: bool) -> Result<Option<PathBuf>> {
    use rustix::fs::{AtFlags, OFlags};
    // Walked one directory descriptor at a time: each step is relative to the last, so a long
    // path inside the sandbox never meets the host's PATH_MAX with the mountpoint in front.
    let walk = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(root, walk, Mode::empty()).map_err(fail("open", root))?;
    let mut path = root.to_path_buf();
    for comp in rel.components() {
        let name = match comp {
            std::path::Component::Normal(name) => name,
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            _ => return Err(fail("refusing path with '..'", rel)(Errno::INVAL)),
        };
        path.push(name);
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                return Err(fail(
                    "not a directory (symlink or file) in the image at",
                    &path,
                )(Errno::NOTDIR));
            }
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail("mkdir", &path)(e)),
                }
            }
            Err(e) => return Err(fail("stat", &path)(e)),
        }
        dir = rustix::fs::openat(&dir, name, walk, Mode::empty()).map_err(fail("open", &path))?;
    }
    Ok(Some(path))
}
