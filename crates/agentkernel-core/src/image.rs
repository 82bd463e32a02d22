//! How a user names a root filesystem.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A parsed `--image` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageRef {
    /// A read-only view of the host's own system directories.
    Host,
    /// An unpacked root directory on the host (absolute after parsing).
    Directory { path: PathBuf },
    /// An OCI image layout directory, optionally with a tag (`org.opencontainers.image.ref.name`).
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A registry reference such as `python:3.12-alpine` or `ghcr.io/org/img@sha256:…`.
    Registry { reference: String },
}

impl ImageRef {
    /// Parses an image argument. Relative directory paths are resolved against `cwd`.
    pub fn parse(text: &str, cwd: &Path) -> Result<ImageRef, CoreError> {
        let invalid = |reason: &str| CoreError::InvalidImage {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(invalid(
                "it is empty; give an image name, a directory or `host`",
            ));
        }
        if text.chars().any(|c| c.is_control()) {
            return Err(invalid("it contains control characters"));
        }
        if text == "host" {
            return Ok(ImageRef::Host);
        }
        let is_path = text.starts_with("oci:")
            || text.starts_with('/')
            || text.starts_with("./")
            || text.starts_with("../")
            || text == ".";
        if is_path && !crate::spec::path_fits(text.trim_start_matches("oci:")) {
            return Err(invalid(
                "the path is too long (at most 4095 bytes, 255 per component)",
            ));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = split_layout_tag(rest);
            if path.is_empty() {
                return Err(invalid("give the layout directory after `oci:`"));
            }
            return Ok(ImageRef::OciLayout {
                path: absolute(cwd, path),
                tag,
            });
        }
        if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") || text == "."
        {
            return Ok(ImageRef::Directory {
                path: absolute(cwd, text),
            });
        }
        validate_reference(text).map_err(|reason| invalid(&reason))?;
        Ok(ImageRef::Registry {
            reference: text.to_string(),
        })
    }

    /// The text shown in listings and stored in state.
    pub fn display(&self) -> String {
        match self {
            ImageRef::Host => "host".to_string(),
            ImageRef::Directory { path } => path.display().to_string(),
            ImageRef::OciLayout { path, tag: Some(t) } => format!("oci:{}:{t}", path.display()),
            ImageRef::OciLayout { path, tag: None } => format!("oci:{}", path.display()),
            ImageRef::Registry { reference } => reference.clone(),
        }
    }
}

fn absolute(cwd: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    // Lexical normalisation: `.` and `..` components are resolved so listings are readable;
    // symlinks are resolved later, when the directory is opened.
    let mut out = PathBuf::new();
    for comp in joined.components() {
        match comp {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `oci:/dir:tag` — the tag is what follows the last `:` when it holds no `/`.
fn split_layout_tag(rest: &str) -> (&str, Option<String>) {
    match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') && !rest[i + 1..].is_empty() => {
            (&rest[..i], Some(rest[i + 1..].to_string()))
        }
        _ => (rest, None),
    }
}

/// Checks the Docker reference grammar: `[host[:port]/]path[:tag][@algo:hex]`, where path
/// components are lowercase alphanumerics joined by `.`, `_`, `__` or `-`.
fn validate_reference(text: &str) -> Result<(), String> {
    if text.len() > 255 + 128 + 72 {
        return Err("it is too long".to_string());
    }
    let (name_tag, digest) = match text.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (text, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or("a digest looks like sha256:<64 hex digits>")?;
        let hex_ok = hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if algo != "sha256" || hex.len() != 64 || !hex_ok {
            return Err("a digest looks like sha256:<64 lowercase hex digits>".to_string());
        }
    }
    // The tag is after the last ':' that follows the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(format!(
                "tag {tag:?} is not valid: use letters, digits, '_', '.', '-'"
            ));
        }
    }
    if name.is_empty() {
        return Err("the repository name is empty".to_string());
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && looks_like_registry_host(components[0]) {
        let host = components.remove(0);
        let host_ok = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_ok {
            return Err(format!("registry host {host:?} is not valid"));
        }
    }
    for comp in components {
        if !valid_path_component(comp) {
            return Err(format!(
                "{comp:?} is not a valid repository name component: use lowercase letters, digits and single separators (., _, __, -)"
            ));
        }
    }
    Ok(())
}

fn looks_like_registry_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn valid_path_component(comp: &str) -> bool {
    let bytes = comp.as_bytes();
    if bytes.is_empty() || !is_lower_alnum(bytes[0]) || !is_lower_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_lower_alnum(b) {
            i += 1;
            continue;
        }
        // Separators: '.', '_', '__', or runs of '-'.
        let run_start = i;
        while i < bytes.len() && !is_lower_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &comp[run_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ImageRef, CoreError> {
        ImageRef::parse(t, Path::new("/cwd"))
    }

    #[test]
    fn parses_kinds() {
        assert_eq!(parse("host"), Ok(ImageRef::Host));
        assert_eq!(
            parse("./root"),
            Ok(ImageRef::Directory {
                path: "/cwd/root".into()
            })
        );
        assert_eq!(
            parse("/abs/dir"),
            Ok(ImageRef::Directory {
                path: "/abs/dir".into()
            })
        );
        assert_eq!(
            parse("oci:/l:v1"),
            Ok(ImageRef::OciLayout {
                path: "/l".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            parse("oci:./l"),
            Ok(ImageRef::OciLayout {
                path: "/cwd/l".into(),
                tag: None
            })
        );
        for ok in [
            "python:3.12-alpine",
            "alpine",
            "ghcr.io/org/img:tag",
            "localhost:5000/a/b",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(matches!(parse(ok), Ok(ImageRef::Registry { .. })), "{ok}");
        }
    }

    #[test]
    fn rejects_injection_and_garbage() {
        for bad in [
            "--volume=/:/host",
            "-v",
            "Python:3",
            "a b",
            "img:",
            "img@sha256:zz",
            "a//b",
            "",
            "x\n",
            "a:b:c",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
