//! Cloning a repository into a sandbox's /workspace at create (`create --source-url`, the HTTP
//! `source_url` and `source_ref`).
//!
//! git runs inside the sandbox, as its user, through the same exec as any command: the clone
//! goes out over the sandbox's own network policy (the egress proxy decides, and audits, as
//! for anything the sandbox does), and the host never touches the repository's files. So a
//! sandbox without network cannot clone, an image without git cannot either, and a host the
//! policy denies fails the clone. /workspace must be empty or absent (git refuses otherwise),
//! and not a host directory (a permissive mount or a volume). A branch or tag is a shallow
//! clone (`--depth 1 --branch`); a commit (hex) is a full clone and a checkout. The URL comes
//! after `--` and is checked first (`agentkernel_core::source`): no option, file or transport
//! can reach git.

use crate::Engine;
use crate::error::{EngineError, Result};
use agentkernel_core::source::Source;
use agentkernel_core::{CoreError, ExecEvent, ExecRequest, HasKind};
use std::path::Path;
use std::time::Duration;

/// Longest a clone may take.
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of git's stderr an error quotes.
const STDERR_TAIL: usize = 2000;

fn refused(message: String) -> EngineError {
    EngineError::Input(CoreError::Conflicting(message))
}

impl Engine {
    /// Clones `source` into /workspace of running sandbox `name` (see the module doc).
    pub fn clone_source(&self, name: &str, source: &Source) -> Result<()> {
        let rec = self.get_record(name)?;
        let url = &source.url;
        if !rec.spec.policy.network.is_networked() {
            return Err(refused(format!(
                "source_url {url}: the clone runs inside the sandbox over its network, and this sandbox has none: drop no_network (--no-network), use a profile with network, or copy the files in instead"
            )));
        }
        let workspace = Path::new(agentkernel_core::policy::WORKSPACE);
        if rec.spec.policy.mounts.iter().any(|m| m.target == workspace) {
            return Err(refused(format!(
                "source_url {url}: /workspace of this sandbox is a host directory (the permissive profile, a compatibility mode or a volume), which a clone must not write: use -p moderate, or another volume path"
            )));
        }
        let mut clone = vec![
            "git".to_string(),
            "clone".to_string(),
            "--quiet".to_string(),
        ];
        if !source.is_commit() {
            clone.extend(["--depth".to_string(), "1".to_string()]);
            if let Some(r) = &source.reference {
                clone.extend(["--branch".to_string(), r.clone()]);
            }
        }
        clone.extend([
            "--".to_string(),
            url.clone(),
            workspace.display().to_string(),
        ]);
        self.git(name, url, clone)?;
        if source.is_commit()
            && let Some(commit) = &source.reference
        {
            let checkout = ["git", "-C", "/workspace", "checkout", "--quiet", "--detach"]
                .iter()
                .map(|s| s.to_string())
                .chain([commit.clone(), "--".to_string()])
                .collect();
            self.git(name, url, checkout)?;
        }
        Ok(())
    }

    /// Runs one git command in sandbox `name`; a failure quotes git's stderr.
    fn git(&self, name: &str, url: &str, argv: Vec<String>) -> Result<()> {
        let req = ExecRequest {
            argv,
            env: vec![
                // Never wait for a password nobody can type.
                ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
                ("GIT_ASKPASS".to_string(), "true".to_string()),
            ],
            workdir: Some("/".to_string()),
            tty: false,
            stdin: false,
            timeout: Some(CLONE_TIMEOUT),
        };
        let mut stderr = Vec::new();
        let mut sink = |event: ExecEvent| {
            if let ExecEvent::Stderr(bytes) = event {
                stderr.extend_from_slice(&bytes);
            }
            std::ops::ControlFlow::Continue(())
        };
        let no_git = || {
            EngineError::Input(CoreError::Unsupported(format!(
                "source_url {url}: the sandbox's image has no git, which the clone runs inside the sandbox: use an image with git (e.g. a Debian or Alpine image with git installed, or --image host where the host has git)"
            )))
        };
        let status = match self.exec(name, &req, &mut sink, Default::default()) {
            Ok(status) => status,
            Err(e) if e.kind() == agentkernel_core::ErrorKind::CommandNotFound => {
                return Err(no_git());
            }
            Err(e) => return Err(e),
        };
        if status.code == agentkernel_core::exec::EXIT_NOT_FOUND {
            return Err(no_git());
        }
        if status.code == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&stderr);
        let tail: String = {
            let t = text.trim();
            let start = t.len().saturating_sub(STDERR_TAIL);
            t.get(start..).unwrap_or(t).to_string()
        };
        let why = if status.timed_out {
            format!("it took longer than {} s", CLONE_TIMEOUT.as_secs())
        } else {
            format!("git exited with {}: {tail}", status.code)
        };
        Err(EngineError::Input(CoreError::Unsupported(format!(
            "source_url {url}: the clone failed ({why}): check the URL and source_ref, that the sandbox's network policy lets it reach the host, and that /workspace in the image is empty"
        ))))
    }
}
