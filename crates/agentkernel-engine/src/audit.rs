//! The audit log: one JSON object per line in `~/.agentkernel/audit.jsonl`, with `timestamp`,
//! `pid`, `user` and the event (`event` names its type). `AGENTKERNEL_AUDIT=0` disables it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The events the log records, with the fields the reference documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    SandboxCreated {
        name: String,
        image: String,
        backend: String,
    },
    SandboxStarted {
        name: String,
        profile: String,
    },
    SandboxStopped {
        name: String,
    },
    SandboxRemoved {
        name: String,
    },
    CommandExecuted {
        sandbox: String,
        command: Vec<String>,
        exit_code: i32,
        /// The id of a detached command (`exec -d`); absent for foreground commands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detached: Option<String>,
    },
    FileWritten {
        sandbox: String,
        path: String,
    },
    FileRead {
        sandbox: String,
        path: String,
    },
    SessionAttached {
        sandbox: String,
    },
    /// The egress proxy let a connection or DNS query through.
    NetworkAllowed {
        sandbox: String,
        host: String,
        port: u16,
        protocol: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
    },
    /// The egress proxy refused a connection or DNS query.
    NetworkBlocked {
        sandbox: String,
        host: String,
        port: u16,
        protocol: String,
        reason: String,
    },
    /// A running sandbox's network policy changed (`sandbox policy`, `PATCH`).
    NetworkPolicyChanged {
        sandbox: String,
        allow: Vec<String>,
        deny: Vec<String>,
    },
    /// A snapshot was taken of a sandbox (`snapshot take`, a session's save).
    SnapshotTaken {
        sandbox: String,
        snapshot: String,
    },
    /// A sandbox was made from a snapshot.
    SnapshotRestored {
        snapshot: String,
        sandbox: String,
    },
    SnapshotDeleted {
        snapshot: String,
        /// The sandbox it was taken of.
        sandbox: String,
    },
    /// Copies of a sandbox were made (`sandbox fork`).
    SandboxForked {
        sandbox: String,
        copies: Vec<String>,
    },
    SessionStarted {
        session: String,
        agent: String,
        sandbox: String,
    },
    SessionResumed {
        session: String,
        sandbox: String,
    },
    /// A user template was added (`template add`, `template save`).
    TemplateAdded {
        template: String,
    },
    /// A user template was removed (`template remove`).
    TemplateRemoved {
        template: String,
    },
    /// A request refused by policy: `policy` names the rule (`access`: the caller named what
    /// it may not, or a project's config tried to loosen; `enforcement`: the backend cannot
    /// enforce a field), `details` is the refusal as the caller was told it. `sandbox` is empty
    /// when the request named none yet.
    PolicyViolation {
        sandbox: String,
        policy: String,
        details: String,
        /// `local`, `remote` (HTTP) or `agent` (MCP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
    },
}

/// The `policy_violation` entry `error` calls for, if it is a refusal by policy.
pub fn violation_of(
    error: &crate::EngineError,
    sandbox: &str,
    caller: Option<crate::resolve::Caller>,
) -> Option<AuditEvent> {
    use agentkernel_core::{ErrorKind, HasKind};
    let policy = match error.kind() {
        ErrorKind::NotPermitted => "access",
        ErrorKind::NotEnforceable => "enforcement",
        _ => return None,
    };
    Some(AuditEvent::PolicyViolation {
        sandbox: sandbox.to_string(),
        policy: policy.to_string(),
        details: error.to_string(),
        caller: caller.map(|c| c.as_str().to_string()),
    })
}

impl AuditEvent {
    /// The sandbox an event concerns.
    pub fn sandbox(&self) -> &str {
        match self {
            AuditEvent::SandboxCreated { name, .. }
            | AuditEvent::SandboxStarted { name, .. }
            | AuditEvent::SandboxStopped { name }
            | AuditEvent::SandboxRemoved { name } => name,
            AuditEvent::CommandExecuted { sandbox, .. }
            | AuditEvent::FileWritten { sandbox, .. }
            | AuditEvent::FileRead { sandbox, .. }
            | AuditEvent::SessionAttached { sandbox }
            | AuditEvent::NetworkAllowed { sandbox, .. }
            | AuditEvent::NetworkBlocked { sandbox, .. }
            | AuditEvent::NetworkPolicyChanged { sandbox, .. }
            | AuditEvent::PolicyViolation { sandbox, .. }
            | AuditEvent::SnapshotTaken { sandbox, .. }
            | AuditEvent::SnapshotRestored { sandbox, .. }
            | AuditEvent::SnapshotDeleted { sandbox, .. }
            | AuditEvent::SandboxForked { sandbox, .. }
            | AuditEvent::SessionStarted { sandbox, .. }
            | AuditEvent::SessionResumed { sandbox, .. } => sandbox,
            AuditEvent::TemplateAdded { .. } | AuditEvent::TemplateRemoved { .. } => "",
        }
    }
}

pub struct AuditLog {
    path: PathBuf,
    enabled: bool,
}

impl AuditLog {
    pub fn new(home: &Path) -> AuditLog {
        let enabled = std::env::var("AGENTKERNEL_AUDIT")
            .map(|v| v != "0")
            .unwrap_or(true);
        AuditLog {
            path: home.join("audit.jsonl"),
            enabled,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. Auditing never fails the operation it records: a write error is
    /// reported on stderr.
    pub fn record(&self, event: AuditEvent) {
        if !self.enabled {
            return;
        }
        let mut entry = Map::new();
        entry.insert(
            "timestamp".into(),
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        entry.insert("pid".into(), json!(std::process::id()));
        entry.insert("user".into(), json!(current_user()));
        if let Ok(Value::Object(fields)) = serde_json::to_value(&event) {
            entry.extend(fields);
        }
        let mut line = Value::Object(entry).to_string();
        line.push('\n');
        // One write of the whole line to an O_APPEND file: concurrent writers never interleave.
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::state_dir::FILE_MODE)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = result {
            eprintln!(
                "agentkernel: warning: cannot write audit log {}: {e}",
                self.path.display()
            );
        }
    }

    /// Passes `result` on; when it is a refusal by policy, records a `policy_violation` first.
    pub fn refusal<T>(
        &self,
        sandbox: &str,
        caller: Option<crate::resolve::Caller>,
        result: crate::Result<T>,
    ) -> crate::Result<T> {
        if let Err(e) = &result
            && let Some(event) = violation_of(e, sandbox, caller)
        {
            self.record(event);
        }
        result
    }

    /// Records `command_executed` for an attempt to run `argv`: its exit status, or, when the
    /// command could not start, the code the caller gets (127 not found, 126 not executable,
    /// 125 any other failure), so that every attempt leaves an entry.
    pub fn attempt(
        &self,
        sandbox: &str,
        argv: &[String],
        result: &crate::Result<agentkernel_core::ExitStatus>,
        detached: Option<&str>,
    ) {
        let exit_code = match result {
            Ok(status) => status.code,
            Err(e) => e.exit_code(),
        };
        self.record(AuditEvent::CommandExecuted {
            sandbox: sandbox.to_string(),
            command: argv.to_vec(),
            exit_code,
            detached: detached.map(str::to_string),
        });
    }

    /// Entries, oldest first, optionally only those of one sandbox, at most the `last` newest.
    pub fn entries(
        &self,
        sandbox: Option<&str>,
        last: Option<usize>,
    ) -> std::io::Result<Vec<Value>> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // Only the newest `last` are ever held, however long the log has grown.
        let mut out = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(name) = sandbox {
                let of = v
                    .get("name")
                    .or_else(|| v.get("sandbox"))
                    .and_then(Value::as_str);
                if of != Some(name) {
                    continue;
                }
            }
            if last == Some(0) {
                continue;
            }
            if last.is_some_and(|n| out.len() >= n) {
                out.pop_front();
            }
            out.push_back(v);
        }
        Ok(out.into())
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid:{}", rustix::process::getuid().as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog {
            path: dir.path().join("audit.jsonl"),
            enabled: true,
        };
        log.record(AuditEvent::SandboxCreated {
            name: "a".into(),
            image: "host".into(),
            backend: "native".into(),
        });
        log.record(AuditEvent::CommandExecuted {
            sandbox: "b".into(),
            command: vec!["true".into()],
            exit_code: 0,
            detached: None,
        });
        log.record(AuditEvent::SandboxRemoved { name: "a".into() });
        let all = log.entries(None, None).expect("read");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["event"], "sandbox_created");
        assert_eq!(all[0]["backend"], "native");
        assert!(
            all[0]["timestamp"].is_string()
                && all[0]["pid"].is_number()
                && all[0]["user"].is_string()
        );
        assert_eq!(log.entries(Some("a"), None).expect("read").len(), 2);
        let last = log.entries(None, Some(1)).expect("read");
        assert_eq!(last[0]["event"], "sandbox_removed");
    }
}
