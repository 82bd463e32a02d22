//! Volumes as a surface gives them (`--volume` on `run` and `create`, the HTTP `volumes`
//! field): their syntax, checked here once for every surface. Who may name which host path is
//! the engine's decision (`agentkernel_engine::volumes`), as is where a named volume lives.
//!
//! | form | meaning |
//! |---|---|
//! | `/abs/host/dir:/sandbox/dir[:ro\|:rw]` | a host directory bind-mounted at the sandbox path |
//! | `./dir:/sandbox/dir`, `../dir:...` | the same, relative to the caller's directory (local CLI only) |
//! | `NAME:/sandbox/dir[:ro\|:rw]` | a named volume: a directory agentkernel keeps, made on first use |

use crate::CoreError;
use std::path::{Component, Path, PathBuf};

/// Most volumes one sandbox may have.
pub const MAX_VOLUMES: usize = 64;
/// Longest volume name.
pub const MAX_VOLUME_NAME: usize = 64;

/// Where a volume's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host path as written: absolute, or relative (`./x`, `../x`) to the caller's directory.
    Host(PathBuf),
    /// A named volume.
    Named(String),
}

/// One volume, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub source: VolumeSource,
    pub target: PathBuf,
    pub read_only: bool,
}

fn invalid(text: &str, why: &str) -> CoreError {
    CoreError::InvalidArgument(format!("volume {text:?}: {why}"))
}

/// Parses `SOURCE:TARGET[:ro|:rw]`.
pub fn parse_volume(text: &str) -> Result<VolumeRequest, CoreError> {
    let usage = "use HOST_DIR:SANDBOX_DIR[:ro] or NAME:SANDBOX_DIR[:ro]";
    if text.contains('\0') {
        return Err(invalid(text, "it contains a NUL byte"));
    }
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        [_, _, mode] => {
            return Err(invalid(
                text,
                &format!("unknown mode {mode:?}: use ro (read-only) or rw (the default)"),
            ));
        }
        _ => return Err(invalid(text, usage)),
    };
    let source = if is_host_path(source) {
        VolumeSource::Host(PathBuf::from(source))
    } else {
        validate_volume_name(source).map_err(|why| invalid(text, &why))?;
        VolumeSource::Named(source.to_string())
    };
    let target = PathBuf::from(target);
    validate_target(&target).map_err(|why| invalid(text, &why))?;
    Ok(VolumeRequest {
        source,
        target,
        read_only,
    })
}

/// Whether a volume's source names a host path: absolute, or relative with an explicit `./` or
/// `../` (a bare word is a volume name, as Docker reads it).
fn is_host_path(source: &str) -> bool {
    source.starts_with('/')
        || source.starts_with("./")
        || source.starts_with("../")
        || source == "."
        || source == ".."
}

/// A volume name: 1-64 letters, digits, `_`, `.` and `-`, starting with a letter or digit (so
/// never `.`, `..`, a path or an option).
pub fn validate_volume_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest && name.len() <= MAX_VOLUME_NAME {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is neither a host path (absolute, or ./ ../ relative) nor a volume name (1-{MAX_VOLUME_NAME} letters, digits, '_', '.' and '-', starting with a letter or digit)"
        ))
    }
}

/// A place inside the sandbox a volume may go: absolute, not `/`, no `.` or `..`, and not in
/// the kernel's filesystems (`/proc`, `/sys`, `/dev`), which the runtime mounts itself.
pub fn validate_target(target: &Path) -> Result<(), String> {
    let shown = target.display();
    if !target.is_absolute() {
        return Err(format!(
            "the sandbox path {shown:?} is not absolute: give one starting with /"
        ));
    }
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || target.to_string_lossy().split('/').any(|c| c == ".")
    {
        return Err(format!(
            "the sandbox path {shown:?} has a '.' or '..' part: give it without"
        ));
    }
    let mut parts = target.components().skip(1);
    match parts.next() {
        None => Err("the sandbox path is /: give a directory below it (e.g. /data)".to_string()),
        Some(Component::Normal(first))
            if ["proc", "sys", "dev"].contains(&&*first.to_string_lossy()) =>
        {
            Err(format!(
                "the sandbox path {shown:?} is under /{}, which the runtime mounts itself: choose another directory (e.g. /data)",
                first.to_string_lossy()
            ))
        }
        _ if target.as_os_str().len() > 4095 => {
            Err("the sandbox path is longer than 4095 bytes".to_string())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse_volume("/srv/data:/data:ro"),
            Ok(VolumeRequest {
                source: VolumeSource::Host("/srv/data".into()),
                target: "/data".into(),
                read_only: true,
            })
        );
        assert_eq!(
            parse_volume("./src:/src").map(|v| v.source),
            Ok(VolumeSource::Host("./src".into()))
        );
        assert_eq!(
            parse_volume("cache-1.x:/cache:rw"),
            Ok(VolumeRequest {
                source: VolumeSource::Named("cache-1.x".into()),
                target: "/cache".into(),
                read_only: false,
            })
        );
        // `../../etc` is a relative host path (only the local CLI may name one), never a name.
        assert_eq!(
            parse_volume("../../etc:/x").map(|v| v.source),
            Ok(VolumeSource::Host("../../etc".into()))
        );
    }

    #[test]
    fn bad_volumes_are_refused() {
        for text in [
            "",
            "/a",
            "/a:/b:ro:x",
            "/a:/b:rx",
            ".x:/b",
            "-v:/b",
            "a b:/b",
            "a/b:/b",
            "a\0:/b",
            "/a:b",
            "/a:/",
            "/a://",
            "/a:/x/../etc",
            "/a:/x/./y",
            "/a:/proc",
            "/a:/proc/1",
            "/a:/sys/fs",
            "/a:/dev",
            "v:/dev/shm",
        ] {
            assert!(parse_volume(text).is_err(), "{text:?}");
        }
        let long = "a".repeat(MAX_VOLUME_NAME + 1);
        assert!(parse_volume(&format!("{long}:/x")).is_err());
        assert!(parse_volume("/a:/processes").is_ok());
        assert!(parse_volume("/a:/devx").is_ok());
    }
}
