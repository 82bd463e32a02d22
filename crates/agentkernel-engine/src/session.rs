//! Agent sessions (`session start|save|resume|list|delete`): a sandbox named `session-NAME`
//! for one agent's conversation, plus the chain of snapshots its saves took. `resume` starts
//! the sandbox again, or, when it was removed, restores it from the latest save.

use crate::audit::AuditEvent;
use crate::error::{EngineError, Result};
use crate::snapshot::{SNAPSHOT, SnapshotInfo, SnapshotKind, SnapshotRecord};
use crate::{Engine, SpecRequest};
use agentkernel_core::{CoreError, validate_name};
use serde::{Deserialize, Serialize};

const SESSION: &str = "session";

/// The agents a session may name: those with a compatibility mode, and OpenCode (native mode).
pub const AGENTS: &[&str] = &["claude", "codex", "gemini", "opencode"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    agent: String,
    sandbox: String,
    /// Snapshot names of the saves, oldest first.
    saves: Vec<String>,
}

/// A session as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    pub name: String,
    pub agent: String,
    pub sandbox: String,
    /// `running` or `stopped` (its sandbox), `saved` (the sandbox is gone, a save remains), or
    /// `gone` (neither).
    pub status: String,
    pub saves: Vec<String>,
    pub created_at: String,
}

impl Engine {
    /// Starts a session: its sandbox `session-NAME` made for `agent` (its compatibility mode,
    /// unless `req` names one) and started. Nothing is left if that fails.
    pub fn session_start(&self, name: &str, agent: &str, req: &SpecRequest) -> Result<SessionInfo> {
        validate_name(name)?;
        if !AGENTS.contains(&agent) {
            return Err(CoreError::InvalidArgument(format!(
                "unknown agent {agent:?}: use one of {}",
                AGENTS.join(", ")
            ))
            .into());
        }
        let sandbox = format!("session-{name}");
        validate_name(&sandbox).map_err(|_| {
            CoreError::InvalidArgument(format!(
                "session name {name:?} is too long for its sandbox name session-{name}: use at most 55 characters"
            ))
        })?;
        let record = SessionRecord {
            agent: agent.to_string(),
            sandbox: sandbox.clone(),
            saves: Vec::new(),
        };
        self.store()?.insert_object(SESSION, name, &record, || {
            EngineError::SessionTaken(name.to_string())
        })?;
        let mut req = req.clone();
        if req.compat.is_none() && agent != "opencode" {
            req.compat = Some(agent.to_string());
        }
        let made =
            self.create(&req, Some(&sandbox), None)
                .and_then(|_| match self.start(&sandbox) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let _ = self.remove(&sandbox);
                        Err(e)
                    }
                });
        if let Err(e) = made {
            let _ = self.store()?.delete_object(SESSION, name);
            return Err(e);
        }
        self.audit.record(AuditEvent::SessionStarted {
            session: name.to_string(),
            agent: agent.to_string(),
            sandbox: sandbox.clone(),
        });
        self.session(name)
    }

    fn session_record(&self, name: &str) -> Result<SessionRecord> {
        validate_name(name).map_err(|_| EngineError::SessionNotFound(name.to_string()))?;
        self.store()?
            .get_object(SESSION, name)?
            .ok_or_else(|| EngineError::SessionNotFound(name.to_string()))
    }

    /// One session with its true status.
    pub fn session(&self, name: &str) -> Result<SessionInfo> {
        let created_at = self
            .store()?
            .list_objects::<SessionRecord>(SESSION)?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, c, _)| c)
            .unwrap_or_default();
        let rec = self.session_record(name)?;
        Ok(self.session_info(name, &created_at, rec))
    }

    fn session_info(&self, name: &str, created_at: &str, rec: SessionRecord) -> SessionInfo {
        let status = match self.get(&rec.sandbox) {
            Ok(info) => info.status,
            Err(_) if !rec.saves.is_empty() => "saved".to_string(),
            Err(_) => "gone".to_string(),
        };
        SessionInfo {
            name: name.to_string(),
            agent: rec.agent,
            sandbox: rec.sandbox,
            status,
            saves: rec.saves,
            created_at: created_at.to_string(),
        }
    }

    /// Every session, oldest first.
    pub fn session_list(&self) -> Result<Vec<SessionInfo>> {
        Ok(self
            .store()?
            .list_objects::<SessionRecord>(SESSION)?
            .into_iter()
            .map(|(n, c, r)| self.session_info(&n, &c, r))
            .collect())
    }

    /// Saves a session: a snapshot of its sandbox (running or stopped), added to its chain.
    pub fn session_save(&self, name: &str) -> Result<SnapshotInfo> {
        let mut rec = self.session_record(name)?;
        let snapshot = self.take_snapshot(&rec.sandbox, None, SnapshotKind::Session)?;
        rec.saves.push(snapshot.name.clone());
        if let Err(e) = self.store()?.update_object(SESSION, name, &rec) {
            let _ = self.delete_snapshot(&snapshot.name, true);
            return Err(e);
        }
        Ok(snapshot)
    }

    /// Resumes a session: its sandbox started again if it exists, else made from the latest
    /// save that still exists and started.
    pub fn session_resume(&self, name: &str) -> Result<SessionInfo> {
        let rec = self.session_record(name)?;
        match self.get(&rec.sandbox) {
            Ok(_) => {
                self.start(&rec.sandbox)?;
            }
            Err(EngineError::NotFound(_)) => {
                let store = self.store()?;
                let latest = rec
                    .saves
                    .iter()
                    .rev()
                    .find(|s| {
                        store
                            .get_object::<SnapshotRecord>(SNAPSHOT, s)
                            .ok()
                            .flatten()
                            .is_some()
                    })
                    .ok_or_else(|| EngineError::SessionNothingToResume(name.to_string()))?;
                self.restore_snapshot(latest, Some(&rec.sandbox), crate::resolve::Caller::Local)?;
            }
            Err(e) => return Err(e),
        }
        self.audit.record(AuditEvent::SessionResumed {
            session: name.to_string(),
            sandbox: rec.sandbox.clone(),
        });
        self.session(name)
    }

    /// Deletes a session and its sandbox; its saves stay as snapshots (`snapshot delete`).
    pub fn session_delete(&self, name: &str) -> Result<()> {
        let rec = self.session_record(name)?;
        match self.remove(&rec.sandbox) {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.store()?.delete_object(SESSION, name)?;
        Ok(())
    }

    /// The sessions whose saves include snapshot `snapshot`.
    pub(crate) fn sessions_using(&self, snapshot: &str) -> Result<Vec<String>> {
        Ok(self
            .store()?
            .list_objects::<SessionRecord>(SESSION)?
            .into_iter()
            .filter(|(_, _, r)| r.saves.iter().any(|s| s == snapshot))
            .map(|(n, _, _)| n)
            .collect())
    }
}
