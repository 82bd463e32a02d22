//! Execution receipts (`run --receipt FILE`, `receipt verify`, `receipt replay`): a signed
//! JSON record of one throwaway run — the command, the names of its `-e` variables (never
//! their values), the image and its digest, the backend, the resolved policy and the inputs
//! that produced it, start and end times, the exit code and the sha256 of stdout and of stderr.
//!
//! The file is `{"receipt": {…}, "signature": {…}}`. The signature is ed25519 over the compact
//! serde_json serialization of the `receipt` object (fields in the order of [`Receipt`]); the
//! file itself is the pretty rendering of both. Verification parses the file, re-serializes the
//! body and checks the signature over it, and also checks that the file is byte for byte the
//! rendering agentkernel writes, so a changed byte anywhere — in a value, in the signature, in
//! the key or in the layout — fails.
//!
//! The signing key is this installation's, made on first use at
//! `~/.agentkernel/keys/receipt-signing.key` (0600, in a 0700 directory; [`key`]). The receipt
//! carries the public key, so anyone can check the signature; `verify` also says whether the
//! key is this installation's.

pub mod key;
mod replay;

pub use key::SigningKey;
pub use replay::{Comparison, ReplayPlan, compare, replay_plan};

use crate::RunOutcome;
use crate::resolve::SpecRequest;
use agentkernel_core::{ErrorKind, ExecEvent, ExecRequest, HasKind};
use ed25519_dalek::Verifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// The version of the receipt format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The only signature algorithm receipts use.
pub const ALGORITHM: &str = "ed25519";

/// Failures to make, write or read a receipt (a receipt that is read but not valid is a
/// [`Verification`] with problems, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "the receipt signing key {} is not one agentkernel made ({reason}): move it away and a new key is made on the next `run --receipt` (receipts signed with the old key then verify as another installation's)",
        path.display()
    )]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the receipt signing key {} can be read by others (mode {mode:o}): make it private with `chmod 600 {}`",
        path.display(), path.display()
    )]
    KeyNotPrivate { path: PathBuf, mode: u32 },
    #[error("could not encode the receipt: {0}: report this as a bug")]
    Encode(String),
    #[error(
        "--receipt records a throwaway run: drop {0} (a kept sandbox's later commands would not be in the receipt)"
    )]
    NotThrowaway(&'static str),
    #[error(
        "--receipt cannot record a run with --secret or --secret-file (the receipt could not be replayed without them, and must not hold them): run without secrets, or without --receipt"
    )]
    Secrets,
    #[error("cannot replay: {0}")]
    NotReplayable(String),
}

impl HasKind for ReceiptError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReceiptError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            ReceiptError::Io { .. } | ReceiptError::Encode(_) => ErrorKind::Internal,
            ReceiptError::BadKey { .. } | ReceiptError::KeyNotPrivate { .. } => ErrorKind::Conflict,
            ReceiptError::NotThrowaway(_)
            | ReceiptError::Secrets
            | ReceiptError::NotReplayable(_) => ErrorKind::InvalidInput,
        }
    }
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReceiptError {
    let context = context.into();
    move |source| ReceiptError::Io { context, source }
}

/// What a receipt records about one run. The field order is the signed form's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`FORMAT`].
    pub format: u32,
    pub agentkernel_version: String,
    /// The program run: `argv[0]`.
    pub command: String,
    pub argv: Vec<String>,
    /// The names of the `-e` variables; their values are never recorded.
    pub env: Vec<String>,
    /// The image as the run named it (after auto-detection and config).
    pub image: String,
    /// What the image resolved to: `sha256:<manifest digest>` for registry and OCI images on
    /// the native and micro-VM backends, the engine's image id on container engines, `host` or
    /// a directory's path.
    pub image_digest: String,
    pub backend: String,
    /// The policy the sandbox ran under, as resolved (profile, network, mounts, limits, …).
    pub policy: serde_json::Value,
    /// The inputs that produced the policy, from which `replay` rebuilds the request.
    pub request: RecordedRequest,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub ended_at: String,
    pub exit_code: i32,
    pub stdout_sha256: String,
    pub stderr_sha256: String,
    /// The id of the key that signed this receipt (also in the signature).
    pub key_id: String,
}

/// The flags of the run that shape its sandbox, as given (not resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    pub profile: Option<String>,
    pub compatibility_mode: Option<String>,
    pub no_network: bool,
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub memory_mb: Option<u64>,
    pub vcpus: Option<f64>,
    pub disk_mb: Option<u64>,
    pub workdir: Option<String>,
    pub template: Option<String>,
    pub config: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// The signature block of a receipt file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// [`ALGORITHM`].
    pub algorithm: String,
    pub key_id: String,
    /// The ed25519 public key, hex.
    pub public_key: String,
    /// The signature over [`Receipt::signed_bytes`], hex.
    pub value: String,
}

/// A receipt file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Signature,
}

/// Hashes the output of a run as it streams past.
#[derive(Default)]
pub struct OutputDigest {
    stdout: Sha256,
    stderr: Sha256,
}

impl OutputDigest {
    pub fn observe(&mut self, event: &ExecEvent) {
        match event {
            ExecEvent::Stdout(data) => self.stdout.update(data),
            ExecEvent::Stderr(data) => self.stderr.update(data),
            _ => {}
        }
    }

    /// `sha256:<hex>` of stdout and of stderr.
    pub fn finish(self) -> (String, String) {
        (
            format!("sha256:{}", hex::encode(self.stdout.finalize())),
            format!("sha256:{}", hex::encode(self.stderr.finalize())),
        )
    }
}

/// Now, as receipts write times: RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Refuses what a receipt cannot record: a kept sandbox (`--keep`, `--branch`), secrets.
pub fn check_recordable(req: &SpecRequest, opts: &crate::RunOptions) -> Result<(), ReceiptError> {
    if opts.keep {
        return Err(ReceiptError::NotThrowaway("--keep"));
    }
    if opts.branch {
        return Err(ReceiptError::NotThrowaway("--branch"));
    }
    if !req.secrets.is_empty() || !req.secret_files.is_empty() {
        return Err(ReceiptError::Secrets);
    }
    Ok(())
}

/// What a run was and what it did, to be signed.
pub struct Run<'a> {
    pub request: &'a SpecRequest,
    pub exec: &'a ExecRequest,
    pub outcome: &'a RunOutcome,
    pub started_at: String,
    pub ended_at: String,
    pub output: OutputDigest,
}

impl Receipt {
    /// The receipt of a finished run, not yet signed (`key_id` empty).
    pub fn of_run(run: Run<'_>) -> Result<Receipt, ReceiptError> {
        let Run {
            request,
            exec,
            outcome,
            started_at,
            ended_at,
            output,
        } = run;
        let (stdout_sha256, stderr_sha256) = output.finish();
        let spec = &outcome.spec;
        let policy =
            serde_json::to_value(&spec.policy).map_err(|e| ReceiptError::Encode(e.to_string()))?;
        Ok(Receipt {
            format: FORMAT,
            agentkernel_version: env!("CARGO_PKG_VERSION").to_string(),
            command: exec.argv.first().cloned().unwrap_or_default(),
            argv: exec.argv.clone(),
            env: request
                .env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map_or(kv.as_str(), |(k, _)| k)
                        .to_string()
                })
                .collect(),
            image: spec.image.display(),
            image_digest: outcome.image_digest.clone().unwrap_or_default(),
            backend: spec.backend.to_string(),
            policy,
            request: RecordedRequest {
                profile: request.profile.clone(),
                compatibility_mode: request.compat.clone(),
                no_network: request.no_network,
                allow_hosts: request.allow_hosts.clone(),
                deny_hosts: request.deny_hosts.clone(),
                memory_mb: request.memory_mb,
                vcpus: request.vcpus,
                disk_mb: request.disk_mb,
                workdir: request.workdir.clone(),
                template: request.template.clone(),
                config: request.config.as_ref().map(|p| p.display().to_string()),
                timeout_ms: exec
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            },
            started_at,
            ended_at,
            exit_code: outcome.status.code,
            stdout_sha256,
            stderr_sha256,
            key_id: String::new(),
        })
    }

    /// The bytes the signature is over: the compact serialization, fields in declared order.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        serde_json::to_vec(self).map_err(|e| ReceiptError::Encode(e.to_string()))
    }

    /// Signs the receipt with `key`, setting its `key_id`.
    pub fn sign(mut self, key: &SigningKey) -> Result<SignedReceipt, ReceiptError> {
        self.key_id = key.id();
        let value = key.sign(&self.signed_bytes()?);
        Ok(SignedReceipt {
            signature: Signature {
                algorithm: ALGORITHM.to_string(),
                key_id: key.id(),
                public_key: key.public_hex(),
                value,
            },
            receipt: self,
        })
    }
}

impl SignedReceipt {
    /// The file's bytes: pretty JSON and a final newline.
    pub fn render(&self) -> Result<Vec<u8>, ReceiptError> {
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| ReceiptError::Encode(e.to_string()))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes the receipt to `path` (replacing a file there).
    pub fn write(&self, path: &Path) -> Result<(), ReceiptError> {
        std::fs::write(path, self.render()?).map_err(io(format!(
            "write the receipt {} (the command ran; give --receipt a path in a writable directory)",
            path.display()
        )))
    }
}

/// Signs the receipt of `run` with this installation's key (made now if there is none) and
/// writes it to `path`.
pub fn record(home: &Path, path: &Path, run: Run<'_>) -> Result<SignedReceipt, ReceiptError> {
    let key = SigningKey::load_or_create(home)?;
    let signed = Receipt::of_run(run)?.sign(&key)?;
    signed.write(path)?;
    Ok(signed)
}

/// Reads a receipt file's bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, ReceiptError> {
    std::fs::read(path).map_err(io(format!(
        "read the receipt {} (give the path of a file `run --receipt` wrote)",
        path.display()
    )))
}

/// What `receipt verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// No problem found: the signature is valid and the document is as agentkernel wrote it.
    pub valid: bool,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
    /// The key that signed it, per the file.
    pub key_id: Option<String>,
    /// This installation's receipt key, if it has one.
    pub local_key_id: Option<String>,
    /// The receipt, when the file could be read as one.
    pub receipt: Option<Receipt>,
}

impl Verification {
    /// The signing key is this installation's.
    pub fn signed_here(&self) -> bool {
        self.key_id.is_some() && self.key_id == self.local_key_id
    }
}

/// Checks a receipt file's bytes: the signature with the embedded key, that the key id is the
/// key's, the document's fields, and that the file is exactly what agentkernel writes.
/// `home` is where this installation's key is looked for (never created here).
pub fn verify(bytes: &[u8], home: &Path) -> Verification {
    let local_key_id = key::local_id(home);
    let signed: SignedReceipt = match serde_json::from_slice(bytes) {
        Ok(s) => s,
        Err(e) => {
            return Verification {
                valid: false,
                problems: vec![format!(
                    "not a valid receipt: {e} (a receipt is the JSON file `run --receipt` wrote, unchanged)"
                )],
                key_id: None,
                local_key_id,
                receipt: None,
            };
        }
    };
    let mut problems = signature_problems(&signed);
    problems.extend(document_problems(&signed.receipt));
    match signed.render() {
        Ok(rendered) if rendered == bytes => {}
        Ok(_) => problems.push(
            "the file is not byte for byte what agentkernel wrote: its layout or an unknown value was changed after signing".to_string(),
        ),
        Err(e) => problems.push(e.to_string()),
    }
    Verification {
        valid: problems.is_empty(),
        problems,
        key_id: Some(signed.signature.key_id),
        local_key_id,
        receipt: Some(signed.receipt),
    }
}

fn signature_problems(signed: &SignedReceipt) -> Vec<String> {
    let sig = &signed.signature;
    let mut problems = Vec::new();
    if sig.algorithm != ALGORITHM {
        problems.push(format!(
            "signature algorithm {:?} is not {ALGORITHM:?}, the only one receipts use",
            sig.algorithm
        ));
    }
    if signed.receipt.key_id != sig.key_id {
        problems.push(format!(
            "the receipt names key {} but the signature names key {}",
            signed.receipt.key_id, sig.key_id
        ));
    }
    let public = match key::parse_public(&sig.public_key) {
        Ok(p) => p,
        Err(why) => {
            problems.push(format!("the public key is not valid: {why}"));
            return problems;
        }
    };
    let id = key::id_of(&public);
    if id != sig.key_id {
        problems.push(format!(
            "the signature's key id {} is not the id of its public key ({id})",
            sig.key_id
        ));
    }
    let value = match hex::decode(&sig.value)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
    {
        Some(v) => ed25519_dalek::Signature::from_bytes(&v),
        None => {
            problems.push("the signature value is not 64 bytes of hex".to_string());
            return problems;
        }
    };
    match signed.receipt.signed_bytes() {
        Ok(body) => {
            if public.verify(&body, &value).is_err() {
                problems.push(
                    "the signature does not match the receipt: the receipt, its signature or its key was changed after signing".to_string(),
                );
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

fn is_sha256(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn document_problems(r: &Receipt) -> Vec<String> {
    let mut problems = Vec::new();
    if r.format != FORMAT {
        problems.push(format!(
            "receipt format {} is not {FORMAT}, the one this agentkernel reads: verify it with the agentkernel version that wrote it ({})",
            r.format, r.agentkernel_version
        ));
    }
    if r.argv.first() != Some(&r.command) {
        problems.push("the command is not the first word of argv".to_string());
    }
    for (field, value) in [
        ("stdout_sha256", &r.stdout_sha256),
        ("stderr_sha256", &r.stderr_sha256),
    ] {
        if !is_sha256(value) {
            problems.push(format!("{field} is not sha256:<64 hex digits>"));
        }
    }
    let time = |field: &str, value: &str, problems: &mut Vec<String>| {
        let parsed = chrono::DateTime::parse_from_rfc3339(value).ok();
        if parsed.is_none() {
            problems.push(format!("{field} {value:?} is not an RFC 3339 time"));
        }
        parsed
    };
    let started = time("started_at", &r.started_at, &mut problems);
    let ended = time("ended_at", &r.ended_at, &mut problems);
    if let (Some(s), Some(e)) = (started, ended)
        && e < s
    {
        problems.push("ended_at is before started_at".to_string());
    }
    if r.image_digest.is_empty() {
        problems.push("image_digest is empty".to_string());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &SigningKey) -> SignedReceipt {
        Receipt {
            format: FORMAT,
            agentkernel_version: "0.1.0".into(),
            command: "echo".into(),
            argv: vec!["echo".into(), "hi".into()],
            env: vec!["A".into()],
            image: "busybox:latest".into(),
            image_digest: format!("sha256:{}", "a".repeat(64)),
            backend: "native".into(),
            policy: serde_json::json!({"profile": "moderate", "limits": {"vcpus": 1.5}}),
            request: RecordedRequest::default(),
            started_at: "2026-12-07T18:00:00.000Z".into(),
            ended_at: "2026-12-07T18:00:01.000Z".into(),
            exit_code: 0,
            stdout_sha256: format!("sha256:{}", "b".repeat(64)),
            stderr_sha256: format!("sha256:{}", "c".repeat(64)),
            key_id: String::new(),
        }
        .sign(key)
        .expect("sign")
    }

    #[test]
    fn a_signed_receipt_verifies_and_every_changed_byte_fails() {
        let home = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::load_or_create(home.path()).expect("key");
        let bytes = sample(&key).render().expect("render");
        let v = verify(&bytes, home.path());
        assert!(v.valid, "{:?}", v.problems);
        assert!(v.signed_here());
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let v = verify(&changed, home.path());
            assert!(
                !v.valid,
                "flipping byte {i} ({:?}) went unnoticed",
                char::from(bytes[i])
            );
            assert!(!v.problems.is_empty());
        }
    }

    #[test]
    fn another_installation_key_is_named() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::load_or_create(a.path()).expect("key");
        SigningKey::load_or_create(b.path()).expect("key");
        let v = verify(&sample(&key).render().expect("render"), b.path());
        assert!(v.valid, "{:?}", v.problems);
        assert!(!v.signed_here());
        assert_eq!(v.key_id, Some(key.id()));
    }
}
