//! A repository to clone into a new sandbox (`create --source-url URL --source-ref REF`, the
//! HTTP `source_url` and `source_ref`): which URLs and refs are accepted, checked once for every
//! surface before anything is made. The clone itself runs inside the sandbox, over its own
//! network policy (`agentkernel_engine::source`).
//!
//! URLs: `https://`, `http://`, `git://`, `ssh://` with a host, and scp-like `user@host:path`.
//! Refused: `file://` and local paths (a clone would read the sandbox's own files as a
//! repository, or the host's through a mount), transport helpers (`ext::sh -c …`, anything with
//! `::`), and anything that could be read as an option (a leading `-`, a host or user starting
//! with `-`, as in `ssh://-oProxyCommand=…`). Refs: a branch, tag or commit name without
//! option-like or path-escaping forms.

use crate::CoreError;

/// Longest URL accepted.
pub const MAX_URL: usize = 2048;
/// Longest ref accepted.
pub const MAX_REF: usize = 255;

/// A checked repository and ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub reference: Option<String>,
}

impl Source {
    /// Checks `url` and `reference`.
    pub fn new(url: &str, reference: Option<&str>) -> Result<Source, CoreError> {
        validate_url(url)?;
        if let Some(r) = reference {
            validate_ref(r)?;
        }
        Ok(Source {
            url: url.to_string(),
            reference: reference.map(str::to_string),
        })
    }

    /// The ref names a commit (7 to 64 hex digits): cloned in full, then checked out, since a
    /// shallow clone's `--branch` takes only branches and tags.
    pub fn is_commit(&self) -> bool {
        self.reference.as_deref().is_some_and(|r| {
            (7..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())
        })
    }
}

fn bad_url(url: &str, why: &str) -> CoreError {
    CoreError::InvalidArgument(format!(
        "source_url {url:?}: {why}; give an https://, http://, git:// or ssh:// URL, or user@host:path"
    ))
}

/// Checks a repository URL (see the module doc).
pub fn validate_url(url: &str) -> Result<(), CoreError> {
    if url.is_empty() || url.len() > MAX_URL {
        return Err(bad_url(url, &format!("give 1-{MAX_URL} bytes")));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad_url(url, "it contains spaces or control characters"));
    }
    if url.starts_with('-') {
        return Err(bad_url(
            url,
            "it starts with '-', which git would read as an option",
        ));
    }
    let lower = url.to_ascii_lowercase();
    let rest = ["https://", "http://", "git://", "ssh://"]
        .iter()
        .find_map(|scheme| lower.starts_with(scheme).then(|| &url[scheme.len()..]));
    let (authority, transport_check) = match rest {
        Some(rest) => {
            let authority = rest.split('/').next().unwrap_or_default();
            // `::` is a transport helper's mark; inside an IPv6 literal host it is an address.
            let outside_brackets: String = {
                let mut depth = 0;
                url.chars()
                    .filter(|c| {
                        match c {
                            '[' => depth += 1,
                            ']' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .collect()
            };
            (authority, outside_brackets)
        }
        None => {
            // scp-like: user@host:path, with a user, so that no local path (`./x:y`, `/x`) or
            // transport (`ext::…`, `file:…`) reads as one.
            let Some((authority, path)) = url.split_once(':') else {
                return Err(bad_url(url, "it is not a URL (a local path is refused)"));
            };
            let valid_authority = authority.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty()
                    && !host.is_empty()
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            });
            if !valid_authority || path.is_empty() || path.starts_with('-') {
                return Err(bad_url(
                    url,
                    "the scheme is not one of https, http, git, ssh, and it is not user@host:path (file://, local paths and transports like ext:: are refused)",
                ));
            }
            (authority, url.to_string())
        }
    };
    if transport_check.contains("::") {
        return Err(bad_url(url, "it names a transport helper (::)"));
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let user = authority.rsplit_once('@').map(|(u, _)| u);
    if host.is_empty() || host.starts_with(':') {
        return Err(bad_url(url, "it names no host"));
    }
    if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
        return Err(bad_url(
            url,
            "its host or user starts with '-', which ssh would read as an option",
        ));
    }
    Ok(())
}

/// Checks a branch, tag or commit name: 1-255 of letters, digits and `._/+-`, not starting
/// with `-`, `.` or `/`, without `..` or `//`, not ending with `/`, `.` or `.lock`.
pub fn validate_ref(reference: &str) -> Result<(), CoreError> {
    let ok = !reference.is_empty()
        && reference.len() <= MAX_REF
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/+-".contains(c))
        && !reference.starts_with(['-', '.', '/'])
        && !reference.ends_with(['/', '.'])
        && !reference.ends_with(".lock")
        && !reference.contains("..")
        && !reference.contains("//");
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "source_ref {reference:?}: give a branch, tag or commit (letters, digits and ._/+-, not starting with '-', '.' or '/', no '..')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_urls_and_refs() {
        for url in [
            "https://example.com/org/repo.git",
            "http://10.0.0.2:8080/repo",
            "git://10.213.50.2/repo.git",
            "GIT://host/repo",
            "ssh://git@example.com/org/repo",
            "ssh://[fd00::2]:22/repo",
            "git@github.com:org/repo.git",
        ] {
            validate_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for r in ["main", "v1.2.3", "feature/x-y", "deadbeef", "release+1"] {
            validate_ref(r).unwrap_or_else(|e| panic!("{r}: {e}"));
        }
        assert!(
            Source::new("git://h/r", Some("0123abc"))
                .expect("ok")
                .is_commit()
        );
        assert!(
            !Source::new("git://h/r", Some("main"))
                .expect("ok")
                .is_commit()
        );
        assert!(!Source::new("git://h/r", None).expect("ok").is_commit());
    }

    #[test]
    fn refused_urls_and_refs() {
        for url in [
            "",
            "file:///etc",
            "FILE:///etc",
            "/etc",
            "./repo",
            "../repo",
            "repo",
            "-oProxyCommand=x",
            "--upload-pack=touch /x",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "http::x",
            "ssh://-oProxyCommand=x/repo",
            "ssh://-oProxyCommand=x@host/repo",
            "git://",
            "https:///path",
            "git@host:-x",
            "host:path",
            "git@-host:path",
            "a b@host:path",
            "https://host/a b",
            "https://host/\nx",
            "git@ho::st:x",
        ] {
            assert!(validate_url(url).is_err(), "{url:?}");
        }
        for r in [
            "",
            "-x",
            "--upload-pack=x",
            ".x",
            "/x",
            "a/",
            "a.",
            "a..b",
            "a//b",
            "a.lock",
            "a b",
            "a:b",
            "a~1",
            "a^",
            "a@{0}",
            "a*",
            "a\\b",
        ] {
            assert!(validate_ref(r).is_err(), "{r:?}");
        }
        assert!(validate_ref(&"a".repeat(MAX_REF + 1)).is_err());
    }
}
