//! `agentkernel secret`: the vault through the real binary, each test with its own state
//! directory. Nothing here needs a sandbox, a registry or a session bus: the keychain tests
//! point the session bus at a path where nothing listens.

mod common;
use common::{Out, bin};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

struct Vault {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Vault {
    fn new() -> Vault {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("cwd")).expect("cwd");
        let env = vec![
            // Never a real session's keychain.
            (
                "DBUS_SESSION_BUS_ADDRESS".to_string(),
                format!("unix:path={}", dir.path().join("no-bus").display()),
            ),
            (
                "XDG_RUNTIME_DIR".to_string(),
                dir.path().display().to_string(),
            ),
        ];
        Vault { dir, env }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn with(mut self, key: &str, value: &str) -> Vault {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("secret").args(args);
        // Whatever the environment running the tests holds about secrets is not ours.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AGENTKERNEL_SECRET") {
                c.env_remove(k);
            }
        }
        c.env("AGENTKERNEL_HOME", self.home())
            .current_dir(self.dir.path().join("cwd"))
            .stdin(Stdio::null())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.cmd(args).output().expect("spawn agentkernel").into()
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "secret {args:?} failed:\n{out:?}");
        out
    }

    fn with_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentkernel");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait").into()
    }

    /// Runs and asserts exit 125, nothing on stdout and `needle` in the error.
    fn refused(&self, args: &[&str], needle: &str) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 125, "secret {args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "secret {args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "secret {args:?}: expected {needle:?} in: {out:?}"
        );
        out
    }

    fn config(&self, text: &str) {
        std::fs::create_dir_all(self.home()).expect("home");
        std::fs::write(self.home().join("config.toml"), text).expect("config");
    }

    fn secret_file(&self, key: &str) -> PathBuf {
        self.home().join("secrets").join(format!("{key}.secret"))
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn set_get_list_delete_round_trip() {
    let v = Vault::new();
    assert_eq!(v.ok(&["list"]).stdout, "", "an empty vault lists nothing");
    v.ok(&["set", "ZETA_KEY", "sk-ant-zeta"]);
    v.ok(&["set", "ALPHA", "first"]);
    v.ok(&["set", "ALPHA", "second"]);
    assert_eq!(v.ok(&["get", "ALPHA"]).stdout, "second\n");
    assert_eq!(v.ok(&["get", "ZETA_KEY"]).stdout, "sk-ant-zeta\n");
    let listed = v.ok(&["list"]);
    assert_eq!(listed.stdout, "ALPHA\nZETA_KEY\n", "sorted names only");
    v.ok(&["delete", "ALPHA"]);
    v.refused(&["get", "ALPHA"], "no secret named ALPHA");
    v.refused(&["delete", "ALPHA"], "agentkernel secret list");
    assert_eq!(v.ok(&["list"]).stdout, "ZETA_KEY\n");
}

#[test]
fn a_value_from_stdin_loses_one_trailing_newline() {
    let v = Vault::new();
    let out = v.with_stdin(&["set", "FROM_STDIN"], b"sk-from-pipe\n");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(v.ok(&["get", "FROM_STDIN"]).stdout, "sk-from-pipe\n");
    let out = v.with_stdin(&["set", "TWO_LINES"], b"line one\nline two\n\n");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(v.ok(&["get", "TWO_LINES"]).stdout, "line one\nline two\n\n");
    let out = v.with_stdin(&["set", "EMPTY"], b"\n");
    assert_eq!(out.code, 125, "an empty value is refused: {out:?}");
    assert!(out.stderr.contains("empty"), "{out:?}");
}

#[test]
fn secrets_are_encrypted_and_private_on_disk() {
    let v = Vault::new();
    let value = "sk-ant-plaintext-must-not-appear";
    v.ok(&["set", "ANTHROPIC_API_KEY", value]);
    let file = v.secret_file("ANTHROPIC_API_KEY");
    let bytes = std::fs::read(&file).expect("secret file");
    assert!(
        !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
        "the file holds the plaintext"
    );
    assert!(!bytes.windows(6).any(|w| w == b"sk-ant"));
    assert_eq!(mode(&v.home().join("secrets")), 0o700);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&v.home().join("keys")), 0o700);
    assert_eq!(mode(&v.home().join("keys/secrets.key")), 0o600);
    // No temporary files are left beside the secrets.
    let names: Vec<String> = std::fs::read_dir(v.home().join("secrets"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY.secret"]);
}

#[test]
fn a_key_file_kept_elsewhere_works_and_another_key_does_not_match() {
    let v = Vault::new();
    let usb = v.dir.path().join("usb");
    std::fs::create_dir(&usb).expect("usb");
    let key_file = usb.join("agentkernel.key");
    v.config(&format!(
        "[secrets]\nkey_file = \"{}\"\n",
        key_file.display()
    ));
    v.ok(&["set", "TOKEN", "t-123"]);
    assert_eq!(mode(&key_file), 0o600);
    assert!(
        !v.home().join("keys/secrets.key").exists(),
        "the key is only where the config says"
    );
    assert_eq!(v.ok(&["get", "TOKEN"]).stdout, "t-123\n");
    let stored = std::fs::read(v.secret_file("TOKEN")).expect("secret");

    // Another key file, named by the environment (which wins over the config).
    let other = v.dir.path().join("other.key");
    std::fs::write(&other, HEX_KEY).expect("other key");
    let out = v
        .cmd(&["get", "TOKEN"])
        .env("AGENTKERNEL_SECRETS_KEY_FILE", &other)
        .output()
        .expect("spawn");
    let out: Out = out.into();
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("does not match"), "{out:?}");
    assert!(out.stderr.contains(&other.display().to_string()), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // The secret is untouched and still reads with its own key.
    assert_eq!(
        std::fs::read(v.secret_file("TOKEN")).expect("secret"),
        stored
    );
    assert_eq!(v.ok(&["get", "TOKEN"]).stdout, "t-123\n");
}

#[test]
fn a_key_file_named_by_the_environment_works() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let key_file = elsewhere.path().join("ci.key");
    let v = Vault::new().with(
        "AGENTKERNEL_SECRETS_KEY_FILE",
        &key_file.display().to_string(),
    );
    v.ok(&["set", "CI_TOKEN", "from-env-key"]);
    assert!(key_file.is_file());
    assert!(!v.home().join("keys/secrets.key").exists());
    assert_eq!(v.ok(&["get", "CI_TOKEN"]).stdout, "from-env-key\n");
    // A key file made by hand (64 hex digits) is used as it is.
    let v = Vault::new();
    let own = v.dir.path().join("own.key");
    std::fs::write(&own, HEX_KEY).expect("key");
    let v = v.with("AGENTKERNEL_SECRETS_KEY_FILE", &own.display().to_string());
    v.ok(&["set", "OWN", "v"]);
    assert_eq!(
        std::fs::read_to_string(&own).expect("key"),
        HEX_KEY,
        "never rewritten"
    );
    assert_eq!(v.ok(&["get", "OWN"]).stdout, "v\n");
}

#[test]
fn a_missing_or_malformed_key_file_says_what_to_do() {
    let v = Vault::new();
    v.ok(&["set", "KEEP", "kept"]);
    let key_file = v.home().join("keys/secrets.key");
    let key = std::fs::read(&key_file).expect("key");
    std::fs::remove_file(&key_file).expect("remove key");
    let out = v.refused(&["get", "KEEP"], "is missing");
    assert!(out.stderr.contains("restore it"), "{out:?}");
    assert!(out.stderr.contains("[secrets] key_file"), "{out:?}");
    // No new key is made while secrets need the old one.
    v.refused(&["set", "OTHER", "x"], "is missing");
    assert!(!key_file.exists());
    std::fs::write(&key_file, "not hex\n").expect("bad key");
    v.refused(&["get", "KEEP"], "is not a secrets key file");
    std::fs::write(&key_file, key).expect("restore key");
    assert_eq!(v.ok(&["get", "KEEP"]).stdout, "kept\n");
}

#[test]
fn invalid_key_names_are_refused() {
    let v = Vault::new();
    for bad in ["1ABC", "A-B", "", "../ESCAPE", "A B"] {
        v.refused(&["set", bad, "value"], "not a secret key");
        v.refused(&["get", bad], "not a secret key");
        v.refused(&["delete", bad], "not a secret key");
    }
    assert!(!v.home().join("secrets").exists() || v.ok(&["list"]).stdout.is_empty());
}

#[test]
fn the_env_backend_reads_the_environment_and_refuses_writes() {
    let v = Vault::new()
        .with("AGENTKERNEL_SECRETS_BACKEND", "env")
        .with("AGENTKERNEL_SECRET_OPENAI_API_KEY", "sk-openai")
        .with("AGENTKERNEL_SECRET_BOTH", "prefixed wins")
        .with("BOTH", "plain")
        .with("PLAIN_ONLY", "plain value");
    assert_eq!(v.ok(&["get", "OPENAI_API_KEY"]).stdout, "sk-openai\n");
    assert_eq!(v.ok(&["get", "BOTH"]).stdout, "prefixed wins\n");
    assert_eq!(v.ok(&["get", "PLAIN_ONLY"]).stdout, "plain value\n");
    assert_eq!(v.ok(&["list"]).stdout, "BOTH\nOPENAI_API_KEY\n");
    v.refused(&["get", "ABSENT"], "AGENTKERNEL_SECRET_ABSENT");
    let out = v.refused(&["set", "NEW", "x"], "read-only");
    assert!(out.stderr.contains("CI's secret settings"), "{out:?}");
    v.refused(&["delete", "BOTH"], "CI's secret settings");
    assert!(!v.home().join("secrets").exists(), "nothing written");
    // The same from the config.
    let v = Vault::new().with("AGENTKERNEL_SECRET_FROM_CONFIG", "c");
    v.config("[secrets]\nbackend = \"env\"\n");
    assert_eq!(v.ok(&["get", "FROM_CONFIG"]).stdout, "c\n");
}

#[test]
fn the_keychain_backend_without_a_secret_service_is_unavailable() {
    const MESSAGE: &str = "no OS keychain is reachable (no Secret Service on the session bus): use the file backend ([secrets] backend = \"file\")";
    let v = Vault::new().with("AGENTKERNEL_SECRETS_BACKEND", "keychain");
    v.refused(&["set", "K", "v"], MESSAGE);
    v.refused(&["get", "K"], MESSAGE);
    v.refused(&["list"], MESSAGE);
    v.refused(&["delete", "K"], MESSAGE);
    assert!(!v.home().join("keychain-secrets.list").exists());
    let v = Vault::new();
    v.config("[secrets]\nbackend = \"keychain\"\n");
    v.refused(&["list"], MESSAGE);
}

#[test]
fn bad_backend_choices_are_refused() {
    let v = Vault::new();
    v.config("[secrets]\nbackend = \"vault\"\n");
    let out = v.refused(&["list"], "[secrets] backend");
    assert!(out.stderr.contains("file, env, keychain"), "{out:?}");
    v.config("[secrets]\nbakend = \"file\"\n");
    v.refused(&["list"], "bakend");
    v.config("[secrets]\nkey_file = \"relative.key\"\n");
    v.refused(&["set", "A", "b"], "absolute");
    let v = Vault::new().with("AGENTKERNEL_SECRETS_BACKEND", "vault");
    v.refused(&["list"], "use file, env or keychain");
}

#[test]
fn a_projects_config_does_not_choose_the_vault() {
    let v = Vault::new();
    std::fs::write(
        v.dir.path().join("cwd/agentkernel.toml"),
        "[secrets]\nbackend = \"env\"\n",
    )
    .expect("project config");
    v.ok(&["set", "MINE", "file-backed"]);
    assert!(v.secret_file("MINE").is_file());
}
