//! The disks a micro-VM gets: its image as a read-only ext4 (made once per image with
//! `mkfs.ext4 -d` and shared by every VM of that image), and for a persistent sandbox an ext4
//! of its disk limit that holds what it writes across stops.
//!
//! An image of several layers is merged first by mounting them as a read-only overlay in a
//! private mount namespace (`unshare --mount`), so whiteouts and opaque directories are applied
//! by the kernel itself and the host's mount table never changes.

use crate::VmError;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The read-only ext4 image of the root made of `lower_dirs` (overlay order: top first),
/// built under `cache_dir` on first use. `id` names the content (the image's digest).
pub fn image_disk(id: &str, lower_dirs: &[PathBuf], cache_dir: &Path) -> Result<PathBuf, VmError> {
    let mut key = sha2::Sha256::new();
    key.update(id.as_bytes());
    for d in lower_dirs {
        key.update(b"\0");
        key.update(d.as_os_str().as_encoded_bytes());
    }
    let key = hex::encode(&key.finalize()[..8]);
    let path = cache_dir.join(format!("{key}.ext4"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(io(format!("create {}", cache_dir.display())))?;
    // One builder per image: a second caller waits here and then finds the disk made.
    let lock = std::fs::File::create(cache_dir.join(format!("{key}.lock")))
        .map_err(io(format!("create the lock of {}", path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        VmError::Io {
            what: format!("lock {}", path.display()),
            source: e.into(),
        }
    })?;
    if path.is_file() {
        return Ok(path);
    }
    let (bytes, entries) = lower_dirs
        .iter()
        .map(|d| usage(d))
        .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
    // Room for ext4's own metadata and a block per small file; the image is sparse, so unused
    // room costs nothing on the host.
    let size_mib = (bytes + entries * 4096) / (1024 * 1024) * 5 / 4 + 32;
    let inodes = entries * 2 + 1024;
    let tmp = cache_dir.join(format!(".{key}.{}.ext4", std::process::id()));
    let result = match lower_dirs {
        [] => Err(VmError::Image("the image has no layers".into())),
        [one] => mkfs(one, &tmp, size_mib, inodes),
        many => merged_mkfs(many, cache_dir, &key, &tmp, size_mib, inodes),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
    // What the disk was made from, for `gc` to remove it once those layers are gone.
    let inputs: Vec<String> = lower_dirs.iter().map(|d| d.display().to_string()).collect();
    let _ = std::fs::write(cache_dir.join(format!("{key}.inputs")), inputs.join("\n"));
    Ok(path)
}

/// Removes image disks whose layers no longer exist (the image was removed); returns what
/// went. A disk a running VM has open stays readable to it.
pub fn collect_image_disks(cache_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".inputs") else {
            continue;
        };
        let Ok(inputs) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if inputs.lines().all(|d| Path::new(d).is_dir()) {
            continue;
        }
        for f in [format!("{key}.ext4"), format!("{key}.lock"), name.clone()] {
            let _ = std::fs::remove_file(cache_dir.join(f));
        }
        removed.push(format!("micro-VM image disk {key} (its image is gone)"));
    }
    removed
}

/// The persistent writable disk of a sandbox, `size_mb` large, made (empty ext4) if missing.
pub fn upper_disk(dir: &Path, size_mb: u64) -> Result<PathBuf, VmError> {
    let path = dir.join("upper.ext4");
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(".upper.ext4.partial");
    let empty = dir.join(".upper-empty");
    std::fs::create_dir_all(&empty).map_err(io(format!("create {}", empty.display())))?;
    let made = mkfs_journalled(&tmp, size_mb);
    let _ = std::fs::remove_dir(&empty);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(path)
}

fn mkfs_journalled(image: &Path, size_mb: u64) -> Result<(), VmError> {
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-L",
            "ak-upper",
        ])
        .arg(image)
        .arg(format!("{size_mb}M")))
}

fn mkfs(src: &Path, image: &Path, size_mib: u64, inodes: u64) -> Result<(), VmError> {
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .args(["-L", "ak-image", "-d"])
        .arg(src)
        .arg(image)
        .arg(format!("{size_mib}M")))
}

/// `mkfs` of the layers' overlay, mounted read-only in a mount namespace of its own.
fn merged_mkfs(
    lower_dirs: &[PathBuf],
    cache_dir: &Path,
    key: &str,
    image: &Path,
    size_mib: u64,
    inodes: u64,
) -> Result<(), VmError> {
    let mut lowerdir = String::new();
    for d in lower_dirs {
        let s = d.to_str().filter(|s| !s.contains([':', ',', '\\']));
        let Some(s) = s else {
            return Err(VmError::Image(format!(
                "the layer directory {} has ':', ',' or '\\' in its path, which overlayfs options cannot carry: use an AGENTKERNEL_HOME without them",
                d.display()
            )));
        };
        if !lowerdir.is_empty() {
            lowerdir.push(':');
        }
        lowerdir.push_str(s);
    }
    let mnt = cache_dir.join(format!(".{key}.{}.mnt", std::process::id()));
    std::fs::create_dir_all(&mnt).map_err(io(format!("create {}", mnt.display())))?;
    let result = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t overlay overlay -o ro,lowerdir=\"$1\" \"$2\" && \
             exec mkfs.ext4 -q -F -m 0 -O ^has_journal -E root_owner=0:0 -N \"$5\" -L ak-image -d \"$2\" \"$3\" \"$4\"M",
        )
        .arg("sh")
        .arg(&lowerdir)
        .arg(&mnt)
        .arg(image)
        .arg(size_mib.to_string())
        .arg(inodes.to_string()));
    let _ = std::fs::remove_dir(&mnt);
    result
}

fn run(cmd: &mut Command) -> Result<(), VmError> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        VmError::Image(format!(
            "could not run {shown}: {e} (install e2fsprogs and util-linux)"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(VmError::Image(format!(
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Bytes of regular files and number of entries under `dir`, without following links.
fn usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut entries = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            entries += 1;
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    (bytes, entries)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}
