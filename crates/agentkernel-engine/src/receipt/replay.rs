//! `receipt replay`: the request that runs a receipt's command again — the same argv, the
//! image pinned to the recorded digest where the backend takes images from agentkernel's own
//! store, the same backend and the same policy inputs — and the comparison of the replay's
//! receipt with the recorded one.

use super::{Receipt, ReceiptError};
use crate::resolve::{Caller, SpecRequest};
use agentkernel_core::{ExecRequest, ImageRef};
use std::path::Path;

/// What to run to replay a receipt.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub request: SpecRequest,
    pub exec: ExecRequest,
    /// The image as the replay names it (pinned to the digest where possible).
    pub image: String,
    /// Recorded `-e` names with no value in the replaying environment: the replay runs
    /// without them.
    pub missing_env: Vec<String>,
}

/// Backends whose images come from agentkernel's image store, where a manifest digest names
/// the image (container engines have their own ids).
const STORE_BACKENDS: &[&str] = &["native", "microvm", "firecracker", "qemu"];

/// The request replaying `receipt` from `cwd`. The values of the recorded `-e` names come
/// from `env` (the replaying process's environment), since receipts never hold them.
pub fn replay_plan(
    receipt: &Receipt,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ReplayPlan, ReceiptError> {
    if receipt.argv.is_empty() {
        return Err(ReceiptError::NotReplayable(
            "the receipt records no command".to_string(),
        ));
    }
    let image = pinned_image(receipt, cwd);
    let mut missing_env = Vec::new();
    let mut env_args = Vec::new();
    for name in &receipt.env {
        match env(name) {
            Some(value) => env_args.push(format!("{name}={value}")),
            None => missing_env.push(name.clone()),
        }
    }
    let r = &receipt.request;
    let request = SpecRequest {
        image: Some(image.clone()),
        profile: r.profile.clone(),
        backend: Some(receipt.backend.clone()),
        config: r.config.as_ref().map(Into::into),
        template: r.template.clone(),
        no_network: r.no_network,
        compat: r.compatibility_mode.clone(),
        allow_hosts: r.allow_hosts.clone(),
        deny_hosts: r.deny_hosts.clone(),
        env: env_args,
        workdir: r.workdir.clone(),
        memory_mb: r.memory_mb,
        vcpus: r.vcpus,
        disk_mb: r.disk_mb,
        cwd: cwd.to_path_buf(),
        command: receipt.argv.clone(),
        caller: Caller::Local,
        ..Default::default()
    };
    let exec = ExecRequest {
        argv: receipt.argv.clone(),
        timeout: r.timeout_ms.map(std::time::Duration::from_millis),
        ..Default::default()
    };
    Ok(ReplayPlan {
        request,
        exec,
        image,
        missing_env,
    })
}

/// `repository@sha256:…` for a registry image on a store backend with a recorded manifest
/// digest; otherwise the image as recorded (its digest is then compared after the replay).
fn pinned_image(receipt: &Receipt, cwd: &Path) -> String {
    let digest = &receipt.image_digest;
    if !STORE_BACKENDS.contains(&receipt.backend.as_str()) || !super::is_sha256(digest) {
        return receipt.image.clone();
    }
    let Ok(ImageRef::Registry { reference }) = ImageRef::parse(&receipt.image, cwd) else {
        return receipt.image.clone();
    };
    let name = reference
        .split_once('@')
        .map_or(reference.as_str(), |(n, _)| n);
    let repository = match (name.rfind(':'), name.rfind('/')) {
        (Some(colon), slash) if slash.is_none_or(|s| colon > s) => &name[..colon],
        _ => name,
    };
    format!("{repository}@{digest}")
}

/// One recorded value against the replay's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub field: &'static str,
    pub matched: bool,
    pub recorded: String,
    pub replayed: String,
}

/// Compares what the replay ran and produced with what the receipt recorded: image digest,
/// policy, exit code and the output hashes.
pub fn compare(recorded: &Receipt, replayed: &Receipt) -> Vec<Comparison> {
    let same = |field, a: &str, b: &str| Comparison {
        field,
        matched: a == b,
        recorded: a.to_string(),
        replayed: b.to_string(),
    };
    vec![
        same(
            "image digest",
            &recorded.image_digest,
            &replayed.image_digest,
        ),
        policy(&recorded.policy, &replayed.policy),
        same(
            "exit code",
            &recorded.exit_code.to_string(),
            &replayed.exit_code.to_string(),
        ),
        same(
            "stdout sha256",
            &recorded.stdout_sha256,
            &replayed.stdout_sha256,
        ),
        same(
            "stderr sha256",
            &recorded.stderr_sha256,
            &replayed.stderr_sha256,
        ),
    ]
}

/// The policies compared; on a difference, the fields that differ.
fn policy(recorded: &serde_json::Value, replayed: &serde_json::Value) -> Comparison {
    let differing: Vec<String> = match (recorded.as_object(), replayed.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect()
        }
        _ if recorded == replayed => Vec::new(),
        _ => vec!["(whole policy)".to_string()],
    };
    let describe = |v: &serde_json::Value| {
        differing
            .iter()
            .map(|k| format!("{k}={}", v.get(k).unwrap_or(&serde_json::Value::Null)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Comparison {
        field: "policy",
        matched: differing.is_empty(),
        recorded: describe(recorded),
        replayed: describe(replayed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(image: &str, backend: &str) -> Receipt {
        Receipt {
            format: super::super::FORMAT,
            agentkernel_version: "0.1.0".into(),
            command: "true".into(),
            argv: vec!["true".into()],
            env: vec!["SET".into(), "UNSET".into()],
            image: image.into(),
            image_digest: format!("sha256:{}", "a".repeat(64)),
            backend: backend.into(),
            policy: serde_json::json!({"profile": "moderate"}),
            request: Default::default(),
            started_at: String::new(),
            ended_at: String::new(),
            exit_code: 0,
            stdout_sha256: String::new(),
            stderr_sha256: String::new(),
            key_id: String::new(),
        }
    }

    #[test]
    fn pins_registry_images_on_store_backends() {
        let cwd = Path::new("/");
        let d = format!("sha256:{}", "a".repeat(64));
        let pin = |image, backend| pinned_image(&receipt(image, backend), cwd);
        assert_eq!(
            pin("127.0.0.1:5000/busybox:latest", "native"),
            format!("127.0.0.1:5000/busybox@{d}")
        );
        assert_eq!(pin("busybox", "native"), format!("busybox@{d}"));
        assert_eq!(pin("busybox:1", "docker"), "busybox:1");
        assert_eq!(pin("host", "native"), "host");
    }

    #[test]
    fn env_values_come_from_the_replaying_environment() {
        let plan = replay_plan(&receipt("busybox", "native"), Path::new("/"), &|k| {
            (k == "SET").then(|| "v".to_string())
        })
        .expect("plan");
        assert_eq!(plan.request.env, vec!["SET=v".to_string()]);
        assert_eq!(plan.missing_env, vec!["UNSET".to_string()]);
    }

    #[test]
    fn policy_differences_name_the_fields() {
        let a = serde_json::json!({"profile": "moderate", "network": "full"});
        let b = serde_json::json!({"profile": "moderate", "network": "none"});
        let c = policy(&a, &b);
        assert!(!c.matched);
        assert_eq!(c.recorded, "network=\"full\"");
        assert!(policy(&a, &a).matched);
    }
}
