//! Execution receipts end to end: `run --receipt` writes a signed receipt with what ran and
//! what it produced (never an `-e` value); `receipt verify` accepts it and refuses it after
//! any byte is changed; `receipt replay` matches a deterministic command and reports the
//! stdout of a nondeterministic one as different. On the native backend with busybox from the
//! test registry.

mod common;
use common::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

/// Runs `command` with `--receipt` and returns the run's output and the receipt's path.
fn run_with_receipt(ak: &Ak, extra: &[&str], command: &[&str]) -> (Out, PathBuf) {
    let path = ak.cwd.path().join("receipt.json");
    let mut args = vec![
        "run",
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--no-network",
        "--receipt",
        "receipt.json",
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    let out = ak.run(&args);
    (out, path)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn receipt_json(path: &PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("receipt written")).expect("JSON")
}

/// The receipt names the command, its argv, the `-e` names (the value appears nowhere in the
/// file), the image and its digest, the backend, the exit code, the sha256 of the exact
/// stdout and stderr bytes, the version and the key id; the key is 0600; verify accepts it.
#[test]
fn run_receipt_records_the_run_and_verifies() {
    let ak = Ak::new();
    let (out, path) = run_with_receipt(
        &ak,
        &["-e", "SECRET=hunter2"],
        &["sh", "-c", "echo out; echo err >&2"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "out\n", "the output still reaches stdout");
    let text = std::fs::read_to_string(&path).expect("receipt written");
    assert!(!text.contains("hunter2"), "an env value leaked:\n{text}");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    let r = &doc["receipt"];
    assert_eq!(r["command"], "sh");
    assert_eq!(
        r["argv"],
        serde_json::json!(["sh", "-c", "echo out; echo err >&2"])
    );
    assert_eq!(r["env"], serde_json::json!(["SECRET"]));
    assert_eq!(r["image"], "busybox:latest");
    let digest = r["image_digest"].as_str().expect("digest");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(r["backend"], "native");
    assert_eq!(r["policy"]["network"], "none", "{}", r["policy"]);
    assert_eq!(r["request"]["no_network"], true);
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout_sha256"], sha256(out.stdout.as_bytes()));
    assert_eq!(r["stderr_sha256"], sha256(b"err\n"));
    assert_eq!(r["agentkernel_version"], env!("CARGO_PKG_VERSION"));
    let key_id = r["key_id"].as_str().expect("key id");
    assert_eq!(key_id.len(), 16);
    assert_eq!(doc["signature"]["key_id"], key_id);
    assert_eq!(doc["signature"]["algorithm"], "ed25519");
    for field in ["started_at", "ended_at"] {
        assert!(
            r[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{field}: {}",
            r[field]
        );
    }

    let key = ak.home.path().join("keys/receipt-signing.key");
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let v = ak.run(&["receipt", "verify", "receipt.json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout.contains(&format!(
            "valid: signed by this installation's key {key_id}"
        )),
        "{v:?}"
    );
    let j = ak.ok(&["receipt", "verify", "--json", "receipt.json"]);
    let j: Value = serde_json::from_str(&j.stdout).expect("verify --json");
    assert_eq!(j["valid"], true);
    assert_eq!(j["signed_by_this_installation"], true);

    // Another installation sees a valid receipt signed by another key.
    let other = Ak::new();
    std::fs::copy(&path, other.cwd.path().join("receipt.json")).expect("copy");
    other.ok(&[
        "run",
        "-B",
        "native",
        "--image",
        "busybox:latest",
        "--receipt",
        "mine.json",
        "--",
        "true",
    ]);
    let v = other.run(&["receipt", "verify", "receipt.json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout.contains(&format!(
            "signed by key {key_id}, not this installation's key"
        )),
        "{v:?}"
    );
}

/// A byte changed in a value of the body, in the signature, in the public key or in the
/// layout fails verification with exit 1, saying what is wrong; so does a file that is not
/// JSON. A missing file is 125 (could not check it).
#[test]
fn a_changed_byte_fails_verification() {
    let ak = Ak::new();
    let (out, path) = run_with_receipt(&ak, &[], &["echo", "hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let original = std::fs::read(&path).expect("receipt");
    let text = String::from_utf8(original.clone()).expect("utf-8");
    let at = |needle: &str, offset: usize| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} in receipt"))
            + needle.len()
            + offset
    };
    let cases = [
        (
            "the exit code",
            at("\"exit_code\": ", 0),
            "signature does not match",
        ),
        (
            "the stdout hash",
            at("\"stdout_sha256\": \"sha256:", 3),
            "signature does not match",
        ),
        (
            "an argv word",
            at("\"hi", 0) - 1,
            "signature does not match",
        ),
        ("the signature", at("\"value\": \"", 10), ""),
        ("the public key", at("\"public_key\": \"", 5), ""),
        ("the key id", at("\"key_id\": \"", 2), ""),
        ("the layout", at("{", 0), ""),
        (
            "a key name",
            at("\"receipt\": {\n    \"", 1),
            "not a valid receipt",
        ),
    ];
    for (what, i, needle) in cases {
        let mut changed = original.clone();
        changed[i] ^= 0x01;
        std::fs::write(&path, &changed).expect("write");
        let v = ak.run(&["receipt", "verify", "receipt.json"]);
        assert_eq!(v.code, 1, "a changed byte in {what} went unnoticed: {v:?}");
        assert!(v.stdout.contains("not valid"), "{what}: {v:?}");
        assert!(v.stdout.contains(needle), "{what}: {v:?}");
    }
    std::fs::write(&path, b"{ not json").expect("write");
    let v = ak.run(&["receipt", "verify", "receipt.json"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("not a valid receipt"), "{v:?}");
    let v = ak.run(&["receipt", "verify", "no-such.json"]);
    assert_eq!(v.code, 125, "{v:?}");
    assert!(v.stderr.contains("give the path of a file"), "{v:?}");
    // A tampered receipt is not replayed.
    std::fs::write(&path, &original).expect("write");
    let mut changed = original.clone();
    changed[at("\"exit_code\": ", 0)] ^= 0x01;
    std::fs::write(&path, &changed).expect("write");
    let r = ak.run(&["receipt", "replay", "receipt.json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not replaying"), "{r:?}");
}

/// Replaying a deterministic command matches everything; replaying one whose output is random
/// reports stdout as different and exits 1.
#[test]
fn replay_matches_a_deterministic_command_and_reports_a_nondeterministic_one() {
    let ak = Ak::new();
    let (out, _) = run_with_receipt(&ak, &[], &["echo", "hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = ak.run(&["receipt", "replay", "receipt.json"]);
    assert_eq!(r.code, 0, "{r:?}");
    for line in [
        "image digest: matched",
        "policy: matched",
        "exit code: matched (0)",
        "stdout sha256: matched",
        "stderr sha256: matched",
    ] {
        assert!(r.stdout.contains(line), "{line}: {r:?}");
    }
    assert!(
        !r.stdout.contains("hi\n"),
        "the replay's output is not shown by default: {r:?}"
    );

    let (out, _) = run_with_receipt(&ak, &[], &["sh", "-c", "head -c 16 /dev/urandom | od -x"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = ak.run(&["receipt", "replay", "receipt.json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("stdout sha256: differs (recorded sha256:"),
        "{r:?}"
    );
    assert!(r.stdout.contains("exit code: matched (0)"), "{r:?}");
    assert!(r.stdout.contains("stderr sha256: matched"), "{r:?}");
}

/// The command's own non-zero exit code passes through `run --receipt` and is recorded.
#[test]
fn exit_code_passes_through_and_is_recorded() {
    let ak = Ak::new();
    let (out, path) = run_with_receipt(&ak, &[], &["sh", "-c", "exit 7"]);
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(receipt_json(&path)["receipt"]["exit_code"], 7);
    ak.ok(&["receipt", "verify", "receipt.json"]);
    let r = ak.run(&["receipt", "replay", "receipt.json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("exit code: matched (7)"), "{r:?}");
}

/// What a receipt cannot record (a kept sandbox) is refused before anything runs.
#[test]
fn keep_and_branch_are_refused_with_receipt() {
    let ak = Ak::new();
    let (out, path) = run_with_receipt(&ak, &["--keep"], &["true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("drop --keep"), "{out:?}");
    assert!(!path.exists());
    let (out, path) = run_with_receipt(&ak, &["--branch"], &["true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("drop --branch"), "{out:?}");
    assert!(!path.exists());
    assert!(ak.list_json().is_empty());
}
