//! The `host` image: a read-only view of the host's own programs, useful with no registry.
//!
//! The sandbox root is a small skeleton directory (`<root>/host/rootfs`) with the host's
//! `/usr` (and any real `/lib64`-style directories) bind-mounted read-only over it. The
//! skeleton's `/etc` holds copies of an allowlist of host files that programs need to run
//! (users, name resolution, the dynamic linker cache, certificates, …); secrets such as
//! `shadow`, `sudoers`, ssh keys and TLS private keys are never copied, nor anything only
//! privileged users can read. It is rebuilt when an allowlisted host entry changes.

use crate::staging::Staging;
use crate::{ImageConfig, ImageError, Rootfs};
use rustix::fs::FlockOperation;
use std::fs::{self, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Top-level host directories that are either symlinks into `/usr` (merged-usr systems: copied
/// as symlinks) or real directories (bind-mounted).
const SYSTEM_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Empty directories of the skeleton: mount points and the usual writable places.
const EMPTY_DIRS: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("workspace", 0o755),
    ("mnt", 0o755),
    ("opt", 0o755),
    ("srv", 0o755),
    ("etc", 0o755),
];

/// `/etc` entries copied into the skeleton.
const ETC_ALLOW: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "os-release",
    "lsb-release",
    "debian_version",
    "issue",
    "mime.types",
    "protocols",
    "services",
    "networks",
    "inputrc",
    "bash.bashrc",
    "profile",
    "profile.d",
    "environment",
    "shells",
    "login.defs",
    "perl",
    "terminfo",
    "magic",
    "magic.mime",
    "gai.conf",
    "host.conf",
    "locale.alias",
    "python3",
];

/// `/etc` entries whose name starts with one of these are copied too (`python3.11`, …).
const ETC_ALLOW_PREFIXES: &[&str] = &["python3."];

/// Never copied, whatever the allowlist says: a guard against a careless edit of it.
const NEVER: &[&str] = &[
    "shadow",
    "gshadow",
    "shadow-",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "machine-id",
];

/// Paths below `/etc` never copied.
const NEVER_NESTED: &[&str] = &["ssl/private"];

/// Symlinks in `/etc` whose target the sandbox can see (through the `/usr` bind or `/proc`)
/// are kept as symlinks; others are replaced by a copy of what they point to.
const VISIBLE_IN_SANDBOX: &[&str] = &[
    "/usr", "/proc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Host directories a symlinked `/etc` entry may never be followed into.
const PRIVATE_TREES: &[&str] = &["/root", "/home", "/var"];

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bump when the skeleton's content rules change, so existing skeletons are rebuilt.
const STAMP: &str = "stamp.v1";

/// Retired skeletons (swapped out by a rebuild) may still be a running sandbox's lower layer;
/// they are deleted only after this long.
const RETIRED_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// `dir` is `<root>/host`; `host` is the host's root (`/`, or a fake one in tests).
pub(crate) fn resolve(dir: &Path, host: &Path) -> Result<Rootfs, ImageError> {
    let skeleton = dir.join("rootfs");
    let survey = survey(host);
    if !is_fresh(dir, &skeleton, &survey) {
        build(dir, host, &skeleton)?;
    }
    Ok(Rootfs {
        lower_dirs: vec![skeleton],
        host_binds: survey.binds,
        config: ImageConfig {
            env: vec![PATH.to_string()],
            ..ImageConfig::default()
        },
        id: "host".to_string(),
    })
}

/// What the freshness check learns from the host: the newest mtime among the allowlisted
/// entries, and which system directories are real directories to bind.
struct Survey {
    newest: SystemTime,
    binds: Vec<PathBuf>,
}

fn survey(host: &Path) -> Survey {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut note = |m: &Metadata| {
        if let Ok(t) = m.modified() {
            newest = newest.max(t);
        }
    };
    let mut binds = vec![host.join("usr")];
    for name in SYSTEM_DIRS {
        let path = host.join(name);
        if let Ok(m) = fs::symlink_metadata(&path) {
            note(&m);
            if m.is_dir() {
                binds.push(path);
            }
        }
    }
    let etc = host.join("etc");
    for name in ETC_ALLOW {
        let path = etc.join(name);
        if let Ok(m) = fs::symlink_metadata(&path) {
            note(&m);
            if m.file_type().is_symlink()
                && let Ok(target) = fs::metadata(&path)
            {
                note(&target);
            }
        }
    }
    Survey { newest, binds }
}

fn is_fresh(dir: &Path, skeleton: &Path, survey: &Survey) -> bool {
    let Ok(stamp) = fs::metadata(dir.join(STAMP)).and_then(|m| m.modified()) else {
        return false;
    };
    survey.newest <= stamp && skeleton.is_dir()
}

fn build(dir: &Path, host: &Path, skeleton: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
    // Builders take turns: the second one finds the first one's fresh skeleton.
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(ImageError::io("open", &lock_path))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive).map_err(|e| ImageError::Io {
        action: "lock",
        path: lock_path.clone(),
        source: e.into(),
    })?;
    let survey = survey(host);
    if is_fresh(dir, skeleton, &survey) {
        return Ok(());
    }
    // A host file changed during the build must look newer than the stamp; file times come
    // from a coarse clock, so leave a second of margin.
    let started = SystemTime::now() - Duration::from_secs(1);

    let staging = Staging::new(dir, "rootfs")
        .map_err(ImageError::io("create a staging directory in", dir))?;
    populate(staging.path(), host)?;
    let retired = dir.join(format!(
        "retired-{}-{}-{}",
        unix_secs(SystemTime::now()),
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    staging
        .replace(skeleton, &retired)
        .map_err(ImageError::io("install host skeleton at", skeleton))?;

    let stamp = dir.join(STAMP);
    let stamp_tmp = dir.join(format!(".tmp-{STAMP}"));
    fs::write(
        &stamp_tmp,
        "the host skeleton in rootfs/ is current as of this file's mtime\n",
    )
    .and_then(|()| fs::File::open(&stamp_tmp)?.set_modified(started.max(survey.newest)))
    .and_then(|()| fs::rename(&stamp_tmp, &stamp))
    .map_err(ImageError::io("write", &stamp))?;
    remove_old_retired(dir);
    Ok(())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn remove_old_retired(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = unix_secs(SystemTime::now());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("retired-")) else {
            continue;
        };
        let secs: u64 = rest
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if now.saturating_sub(secs) > RETIRED_KEEP.as_secs() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn populate(root: &Path, host: &Path) -> Result<(), ImageError> {
    for (name, mode) in EMPTY_DIRS {
        let path = root.join(name);
        fs::create_dir(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(*mode)))
            .map_err(ImageError::io("create", &path))?;
    }
    for name in SYSTEM_DIRS {
        let src = host.join(name);
        let dst = root.join(name);
        let Ok(m) = fs::symlink_metadata(&src) else {
            continue;
        };
        if m.file_type().is_symlink() {
            copy_symlink(&src, &dst)?;
        } else if m.is_dir() {
            fs::create_dir(&dst).map_err(ImageError::io("create", &dst))?;
        }
    }
    let etc = host.join("etc");
    for name in etc_names(&etc) {
        if NEVER.contains(&name.as_str()) {
            continue;
        }
        copy_etc_entry(
            host,
            &etc.join(&name),
            &root.join("etc").join(&name),
            Path::new(&name),
        )?;
    }
    Ok(())
}

/// The allowlisted names, plus those matching a prefix (found by listing `/etc`).
fn etc_names(etc: &Path) -> Vec<String> {
    let mut names: Vec<String> = ETC_ALLOW.iter().map(|s| s.to_string()).collect();
    if let Ok(entries) = fs::read_dir(etc) {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && ETC_ALLOW_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Copies one top-level `/etc` entry. A symlink is kept when the sandbox can follow it;
/// otherwise (e.g. `resolv.conf -> /run/...`) what it points to is copied.
fn copy_etc_entry(host: &Path, src: &Path, dst: &Path, rel: &Path) -> Result<(), ImageError> {
    let Ok(meta) = fs::symlink_metadata(src) else {
        return Ok(());
    };
    if !meta.file_type().is_symlink() {
        return copy_tree(src, dst, rel, &meta);
    }
    let target = fs::read_link(src).map_err(ImageError::io("read symlink", src))?;
    let absolute = normalize(&Path::new("/etc").join(&target));
    if VISIBLE_IN_SANDBOX.iter().any(|p| absolute.starts_with(p)) {
        return copy_symlink(src, dst);
    }
    let in_host = host.join(absolute.strip_prefix("/").unwrap_or(&absolute));
    let Ok(real) = fs::canonicalize(&in_host) else {
        return Ok(());
    };
    let host_real = fs::canonicalize(host).unwrap_or_else(|_| host.to_path_buf());
    if PRIVATE_TREES
        .iter()
        .any(|p| real.starts_with(host_real.join(&p[1..])))
    {
        return Ok(());
    }
    let Ok(meta) = fs::metadata(&real) else {
        return Ok(());
    };
    copy_tree(&real, dst, rel, &meta)
}

/// Copies a file or directory tree without following symlinks. Only what every local user may
/// read is copied: files must be world-readable, directories world-searchable.
fn copy_tree(src: &Path, dst: &Path, rel: &Path, meta: &Metadata) -> Result<(), ImageError> {
    if NEVER_NESTED.iter().any(|n| rel == Path::new(n)) {
        return Ok(());
    }
    let mode = meta.mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_symlink() {
        copy_symlink(src, dst)
    } else if kind.is_file() {
        if mode & 0o004 == 0 {
            return Ok(());
        }
        fs::copy(src, dst).map_err(ImageError::io("copy host file to", dst))?;
        own(dst, meta)
    } else if kind.is_dir() {
        if mode & 0o005 != 0o005 {
            return Ok(());
        }
        fs::create_dir(dst).map_err(ImageError::io("create", dst))?;
        let entries = fs::read_dir(src).map_err(ImageError::io("list host directory", src))?;
        for entry in entries {
            let entry = entry.map_err(ImageError::io("list host directory", src))?;
            // Entries that vanish while we copy are simply skipped.
            let Ok(child) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            copy_tree(
                &entry.path(),
                &dst.join(entry.file_name()),
                &rel.join(entry.file_name()),
                &child,
            )?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(ImageError::io("set mode of", dst))?;
        own(dst, meta)
    } else {
        // Sockets, fifos and devices have no place in a copied /etc.
        Ok(())
    }
}

fn copy_symlink(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let target = fs::read_link(src).map_err(ImageError::io("read symlink", src))?;
    std::os::unix::fs::symlink(&target, dst).map_err(ImageError::io("create symlink", dst))
}

fn own(dst: &Path, meta: &Metadata) -> Result<(), ImageError> {
    match std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())) {
        // Without root (only in development) the copy keeps our ownership.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        other => other.map_err(ImageError::io("set owner of", dst)),
    }
}

/// Lexical `.`/`..` resolution of an absolute path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for comp in path.components() {
        match comp {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, content: &str, mode: u32) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A fake host: merged /bin, a real /lib64, secrets next to allowlisted files.
    fn fake_host() -> tempfile::TempDir {
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path();
        fs::create_dir_all(h.join("usr/bin")).expect("mkdir");
        symlink("usr/bin", h.join("bin")).expect("symlink");
        fs::create_dir_all(h.join("lib64")).expect("mkdir");
        write(&h.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n", 0o644);
        write(&h.join("etc/shadow"), "root:secret\n", 0o640);
        write(&h.join("etc/ssh/ssh_host_ed25519_key"), "KEY", 0o600);
        write(&h.join("etc/ssh/sshd_config"), "x", 0o644);
        write(&h.join("etc/ssl/private/server.key"), "KEY", 0o644);
        fs::set_permissions(h.join("etc/ssl/private"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        write(&h.join("etc/ssl/certs/ca.pem"), "CERT", 0o644);
        symlink("/usr/share/ca/x.crt", h.join("etc/ssl/certs/x.pem")).expect("symlink");
        write(&h.join("run/resolv.conf"), "nameserver 10.0.0.1\n", 0o644);
        symlink("/run/resolv.conf", h.join("etc/resolv.conf")).expect("symlink");
        symlink("/usr/share/zoneinfo/UTC", h.join("etc/localtime")).expect("symlink");
        write(&h.join("root/hosts"), "secret hosts\n", 0o644);
        symlink("/root/hosts", h.join("etc/hosts")).expect("symlink");
        write(&h.join("etc/login.defs"), "private\n", 0o600);
        write(&h.join("etc/python3.11/sitecustomize.py"), "", 0o644);
        host
    }

    #[test]
    fn skeleton_copies_the_allowlist_and_never_secrets() {
        let host = fake_host();
        let store = tempfile::tempdir().expect("tempdir");
        let dir = store.path().join("host");
        let rootfs = resolve(&dir, host.path()).expect("resolve host");
        let sk = &rootfs.lower_dirs[0];
        assert_eq!(sk, &dir.join("rootfs"));
        assert_eq!(
            rootfs.host_binds,
            vec![host.path().join("usr"), host.path().join("lib64")]
        );
        assert_eq!(rootfs.id, "host");
        assert_eq!(rootfs.config.env, vec![PATH.to_string()]);

        assert_eq!(
            fs::read_to_string(sk.join("etc/passwd")).expect("passwd"),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            fs::read_link(sk.join("bin")).expect("bin link"),
            Path::new("usr/bin")
        );
        assert!(sk.join("lib64").is_dir() && sk.join("usr").is_dir());
        assert_eq!(
            fs::metadata(sk.join("tmp")).expect("tmp").mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            fs::metadata(sk.join("root")).expect("root").mode() & 0o7777,
            0o700
        );
        assert!(sk.join("workspace").is_dir() && sk.join("var/tmp").is_dir());
        // resolv.conf points outside what the sandbox sees: its content is copied.
        let resolv = sk.join("etc/resolv.conf");
        assert!(fs::symlink_metadata(&resolv).expect("resolv").is_file());
        assert_eq!(
            fs::read_to_string(&resolv).expect("resolv"),
            "nameserver 10.0.0.1\n"
        );
        assert_eq!(
            fs::read_link(sk.join("etc/localtime")).expect("localtime"),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert!(sk.join("etc/ssl/certs/ca.pem").is_file());
        assert!(
            fs::symlink_metadata(sk.join("etc/ssl/certs/x.pem"))
                .expect("x.pem")
                .file_type()
                .is_symlink()
        );
        assert!(sk.join("etc/python3.11/sitecustomize.py").is_file());

        for never in [
            "etc/shadow",
            "etc/ssh",
            "etc/ssl/private",
            "etc/hosts",
            "etc/login.defs",
        ] {
            assert!(
                fs::symlink_metadata(sk.join(never)).is_err(),
                "{never} must not be in the skeleton"
            );
        }
    }

    #[test]
    fn skeleton_is_reused_then_rebuilt_when_a_source_changes() {
        let host = fake_host();
        let store = tempfile::tempdir().expect("tempdir");
        let dir = store.path().join("host");
        let first = resolve(&dir, host.path()).expect("resolve");
        let ino = fs::metadata(&first.lower_dirs[0]).expect("stat").ino();
        resolve(&dir, host.path()).expect("resolve again");
        assert_eq!(
            fs::metadata(&first.lower_dirs[0]).expect("stat").ino(),
            ino,
            "fresh skeleton is reused"
        );

        let passwd = host.path().join("etc/passwd");
        fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n",
        )
        .expect("write");
        let later = SystemTime::now() + Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&passwd)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        let second = resolve(&dir, host.path()).expect("resolve after change");
        let sk = &second.lower_dirs[0];
        assert_ne!(
            fs::metadata(sk).expect("stat").ino(),
            ino,
            "changed host file triggers a rebuild"
        );
        assert!(
            fs::read_to_string(sk.join("etc/passwd"))
                .expect("passwd")
                .contains("agent")
        );
        let retired: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("retired-"))
            .collect();
        assert_eq!(
            retired.len(),
            1,
            "the old skeleton is kept for running sandboxes"
        );
    }
}
