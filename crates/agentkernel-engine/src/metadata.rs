//! What users attach to a sandbox besides its contents: labels, a description, its lifetime.

use crate::error::{EngineError, Result};
use crate::{Engine, SandboxInfo, lock};
use std::collections::BTreeMap;
use std::time::Duration;

/// A metadata edit; absent fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct MetadataUpdate {
    /// Replaces all labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Replaces the description; `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// Changes the network policy (applied to the next connection of a running sandbox).
    pub network: Option<crate::egress::NetworkChange>,
}

impl Engine {
    /// Sandboxes carrying every one of `labels` (all of them when empty).
    pub fn list_labelled(&self, labels: &[(String, String)]) -> Result<Vec<SandboxInfo>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
            })
            .collect())
    }

    pub fn get_by_uuid(&self, uuid: &str) -> Result<SandboxInfo> {
        let rec = self
            .store()?
            .get_by_uuid(uuid)?
            .ok_or_else(|| EngineError::UuidNotFound(uuid.to_string()))?;
        Ok(self.info(&rec))
    }

    /// Changes labels and description.
    pub fn update_metadata(&self, name: &str, update: &MetadataUpdate) -> Result<SandboxInfo> {
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        let mut rec = self.get_record(name)?;
        if let Some(labels) = &update.labels {
            crate::resolve::validate_labels(labels)?;
            rec.spec.labels = labels.clone();
        }
        if let Some(description) = &update.description {
            if let Some(d) = description {
                crate::resolve::validate_description(d)?;
            }
            rec.spec.description = description.clone();
        }
        if let Some(change) = update.network.as_ref().filter(|c| !c.is_empty()) {
            // Checked before anything is written: a bad pattern changes nothing.
            change.apply(&mut rec.spec.policy.clone())?;
        }
        self.store()?.set_spec(name, &rec.spec)?;
        drop(_lock);
        if let Some(change) = update.network.as_ref().filter(|c| !c.is_empty()) {
            return self.set_network_policy(name, change);
        }
        Ok(self.info(&rec))
    }

    /// Extends by `by` (from the current expiry, or from now if it has passed), to at most
    /// [`MAX_TTL_DAYS`] from now. `None` for a sandbox without a TTL: it never expires.
    pub fn extend(&self, name: &str, by: Duration) -> Result<Option<String>> {
        let _lock = lock::SandboxLock::acquire(&self.home, name)?;
        let rec = self.get_record(name)?;
        let Some(current) = rec.expires_at.as_deref() else {
            return Ok(None);
        };
        let now = chrono::Utc::now();
        let base = chrono::DateTime::parse_from_rfc3339(current)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now)
            .max(now);
        let by = chrono::Duration::from_std(by).map_err(|_| {
            agentkernel_core::CoreError::InvalidDuration(format!("{}s", by.as_secs()))
        })?;
        let expires = base
            .checked_add_signed(by)
            .filter(|t| *t - now <= chrono::Duration::days(MAX_TTL_DAYS))
            .ok_or_else(|| {
                agentkernel_core::CoreError::Unsupported(format!(
                    "a sandbox can be kept at most {MAX_TTL_DAYS} days from now: extend by less"
                ))
            })?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.store()?.set_expires_at(name, Some(&expires))?;
        Ok(Some(expires))
    }
}

/// The furthest a TTL may reach: ten years.
pub const MAX_TTL_DAYS: i64 = 3650;
