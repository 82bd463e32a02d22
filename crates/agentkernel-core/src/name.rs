use crate::CoreError;

/// Longest sandbox name: it becomes a hostname label, so 63 bytes at most.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a sandbox name against `^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`.
///
/// Every surface (CLI, HTTP, MCP) calls this through the engine, so a name is either valid
/// everywhere or nowhere. Names are used as directory names and hostnames: the rule excludes
/// `/`, `..`-only names (they must start with an alphanumeric) and anything a shell would expand.
pub fn validate_name(name: &str) -> Result<(), CoreError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidName(name.to_string()))
    }
}

/// Turns arbitrary text (a git project and branch) into a valid sandbox name.
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name: String = trimmed.chars().take(MAX_NAME_LEN).collect();
    while name.ends_with(['-', '.', '_']) {
        name.pop();
    }
    if name.is_empty() {
        name.push_str("sandbox");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["a", "my-sandbox", "A.b_c-1", &"x".repeat(63)] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "",
            "-x",
            ".x",
            "../../x",
            "a/b",
            "a b",
            "x;rm",
            &"x".repeat(64),
            "é",
        ] {
            assert!(validate_name(n).is_err(), "{n}");
        }
    }

    #[test]
    fn sanitizes_branch_names() {
        assert_eq!(sanitize_name("myapp-feature/auth"), "myapp-feature-auth");
        assert_eq!(sanitize_name("//"), "sandbox");
        assert!(validate_name(&sanitize_name(&"a/".repeat(100))).is_ok());
    }
}
