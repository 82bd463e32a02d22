//! The secrets vault behind `agentkernel secret set|get|list|delete`: named credentials
//! (`ANTHROPIC_API_KEY`) kept on the host, never in a sandbox.
//!
//! Three backends, chosen by `[secrets] backend` in the user config or
//! `AGENTKERNEL_SECRETS_BACKEND` (which wins):
//!
//! - `file` (the default): `<home>/secrets/KEY.secret` (directory 0700, files 0600, each
//!   written to a temporary file in the directory, synced and renamed into place), encrypted
//!   with XChaCha20-Poly1305 under a 32-byte key kept in a key file of its own
//!   (`[secrets] key_file`, `AGENTKERNEL_SECRETS_KEY_FILE`, else `<home>/keys/secrets.key`), so
//!   that a copy of the state directory without the key file reveals nothing. The key file is
//!   made by the first `set` into an empty vault and never overwritten.
//! - `env`: read-only, for CI: `get KEY` reads `AGENTKERNEL_SECRET_KEY`, then `KEY`, from
//!   agentkernel's own environment; `list` names the `AGENTKERNEL_SECRET_*` variables.
//! - `keychain`: the OS keychain (the Secret Service on Linux), service name `agentkernel`. A
//!   keychain cannot list its entries, so the names (never the values) are also kept in
//!   `<home>/keychain-secrets.list`.
//!
//! The on-disk format of a file secret: the magic `AKSV`, a version byte (1), a random 24-byte
//! nonce, then the ciphertext and its 16-byte tag. The associated data is the magic, the
//! version and the key name, so a file renamed to another key, or edited, does not decrypt.

use agentkernel_core::config::Config;
use agentkernel_core::egress::validate_secret_key;
use agentkernel_core::{ErrorKind, HasKind};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that chooses the backend over `[secrets] backend`.
pub const BACKEND_ENV: &str = "AGENTKERNEL_SECRETS_BACKEND";
/// Environment variable that names the file backend's key file over `[secrets] key_file`.
pub const KEY_FILE_ENV: &str = "AGENTKERNEL_SECRETS_KEY_FILE";
/// Prefix of the variables the `env` backend reads (`AGENTKERNEL_SECRET_<KEY>`).
pub const ENV_PREFIX: &str = "AGENTKERNEL_SECRET_";
/// The service name of keychain entries.
pub const KEYCHAIN_SERVICE: &str = "agentkernel";
/// Largest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

const MAGIC: &[u8; 4] = b"AKSV";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const SUFFIX: &str = ".secret";
const KEYCHAIN_INDEX: &str = "keychain-secrets.list";

/// What to do when the keychain cannot be reached, said by every keychain error.
const NO_KEYCHAIN: &str = "no OS keychain is reachable (no Secret Service on the session bus): use the file backend ([secrets] backend = \"file\")";

/// Errors of the vault. Each says what went wrong and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("invalid secret key: {0}")]
    InvalidKey(String),
    #[error("invalid secret value for {key}: {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("{BACKEND_ENV}={0:?} is not a secrets backend: use file, env or keychain")]
    UnknownBackend(String),
    #[error("{KEY_FILE_ENV}={0:?} is not an absolute path: give the key file's full path")]
    RelativeKeyFile(String),
    #[error("no secret named {key} {hint}")]
    NotFound { key: String, hint: String },
    #[error(
        "the secrets key file {} is missing: restore it or point [secrets] key_file (or {KEY_FILE_ENV}) at it; without it the secrets in {} cannot be read",
        path.display(), dir.display()
    )]
    KeyFileMissing { path: PathBuf, dir: PathBuf },
    #[error(
        "{} is not a secrets key file (it must hold 64 hex digits): point [secrets] key_file (or {KEY_FILE_ENV}) at the key file agentkernel made",
        path.display()
    )]
    BadKeyFile { path: PathBuf },
    #[error(
        "secret {key} cannot be decrypted with the key file {}: the key does not match the one it was written with (or the file was changed): point [secrets] key_file (or {KEY_FILE_ENV}) at the right key file, or set the secret again",
        key_file.display()
    )]
    KeyMismatch { key: String, key_file: PathBuf },
    #[error("{} is not a secret agentkernel wrote ({reason}): set the secret again", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the env secrets backend is read-only: set the variable {ENV_PREFIX}{key} (or {key}) in your CI's secret settings, or use the file backend ([secrets] backend = \"file\") to {action} secrets here"
    )]
    ReadOnly { key: String, action: &'static str },
    #[error("{NO_KEYCHAIN} ({detail})")]
    KeychainUnavailable { detail: String },
    #[error("the OS keychain refused to {action} secret {key}: {detail}")]
    Keychain {
        action: &'static str,
        key: String,
        detail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl HasKind for VaultError {
    fn kind(&self) -> ErrorKind {
        match self {
            VaultError::InvalidKey(_)
            | VaultError::InvalidValue { .. }
            | VaultError::UnknownBackend(_)
            | VaultError::RelativeKeyFile(_)
            | VaultError::BadKeyFile { .. } => ErrorKind::InvalidInput,
            VaultError::NotFound { .. } => ErrorKind::NotFound,
            VaultError::KeyMismatch { .. } | VaultError::Corrupt { .. } => ErrorKind::Conflict,
            VaultError::ReadOnly { .. } => ErrorKind::NotPermitted,
            VaultError::KeyFileMissing { .. } | VaultError::KeychainUnavailable { .. } => {
                ErrorKind::Unavailable
            }
            VaultError::Keychain { .. } => ErrorKind::Upstream,
            VaultError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
    let context = context.into();
    move |source| VaultError::Io { context, source }
}

pub type Result<T> = std::result::Result<T, VaultError>;

/// Which backend a vault uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultBackend {
    File,
    Env,
    Keychain,
}

impl VaultBackend {
    pub fn name(self) -> &'static str {
        match self {
            VaultBackend::File => "file",
            VaultBackend::Env => "env",
            VaultBackend::Keychain => "keychain",
        }
    }

    fn parse(name: &str) -> Option<VaultBackend> {
        match name {
            "file" => Some(VaultBackend::File),
            "env" => Some(VaultBackend::Env),
            "keychain" => Some(VaultBackend::Keychain),
            _ => None,
        }
    }
}

/// The secrets vault of a state directory.
#[derive(Debug)]
pub struct Vault {
    home: PathBuf,
    backend: VaultBackend,
    /// The file backend's key file.
    key_file: PathBuf,
}

impl Vault {
    /// The vault `config` (`[secrets]`) and the environment choose, on the state directory
    /// `home`. Opening touches nothing on disk.
    pub fn open(home: &Path, config: &Config) -> Result<Vault> {
        let backend = match std::env::var(BACKEND_ENV).ok().filter(|v| !v.is_empty()) {
            Some(name) => VaultBackend::parse(&name).ok_or(VaultError::UnknownBackend(name))?,
            // The config was validated when it was read; an unknown name there is refused the
            // same way.
            None => match config.secrets.backend.as_deref() {
                Some(name) => VaultBackend::parse(name)
                    .ok_or_else(|| VaultError::UnknownBackend(name.to_string()))?,
                None => VaultBackend::File,
            },
        };
        let key_file = match std::env::var(KEY_FILE_ENV).ok().filter(|v| !v.is_empty()) {
            Some(path) if Path::new(&path).is_absolute() => PathBuf::from(path),
            Some(path) => return Err(VaultError::RelativeKeyFile(path)),
            None => match &config.secrets.key_file {
                Some(path) => PathBuf::from(path),
                None => home.join("keys").join("secrets.key"),
            },
        };
        Ok(Vault {
            home: home.to_path_buf(),
            backend,
            key_file,
        })
    }

    pub fn backend(&self) -> VaultBackend {
        self.backend
    }

    /// The file backend's key file (whichever backend is in use).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Creates the state directory if needed and makes it 0700, as the engine does.
    fn secure_home(&self) -> Result<()> {
        std::fs::create_dir_all(&self.home)
            .map_err(io(format!("create {}", self.home.display())))?;
        private_dir(&self.home)
    }

    fn dir(&self) -> PathBuf {
        self.home.join("secrets")
    }

    fn secret_path(&self, key: &str) -> PathBuf {
        self.dir().join(format!("{key}{SUFFIX}"))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        check_key(key)?;
        check_value(key, value)?;
        match self.backend {
            VaultBackend::File => self.file_set(key, value),
            VaultBackend::Env => Err(VaultError::ReadOnly {
                key: key.to_string(),
                action: "set",
            }),
            VaultBackend::Keychain => self.keychain_set(key, value),
        }
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Result<String> {
        check_key(key)?;
        match self.backend {
            VaultBackend::File => self.file_get(key),
            VaultBackend::Env => env_get(key),
            VaultBackend::Keychain => self.keychain_get(key),
        }
    }

    /// The stored keys, sorted (never their values).
    pub fn list(&self) -> Result<Vec<String>> {
        let mut keys = match self.backend {
            VaultBackend::File => self.file_list()?,
            VaultBackend::Env => env_list(),
            VaultBackend::Keychain => self.keychain_list()?,
        };
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Removes the secret `key`; an unknown key is an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.backend {
            VaultBackend::File => self.file_delete(key),
            VaultBackend::Env => Err(VaultError::ReadOnly {
                key: key.to_string(),
                action: "delete",
            }),
            VaultBackend::Keychain => self.keychain_delete(key),
        }
    }

    fn not_found(&self, key: &str) -> VaultError {
        VaultError::NotFound {
            key: key.to_string(),
            hint: format!(
                "in the {} vault: see `agentkernel secret list`, or store it with `agentkernel secret set {key}`",
                self.backend.name()
            ),
        }
    }

    // --- file ---

    fn file_set(&self, key: &str, value: &str) -> Result<()> {
        self.secure_home()?;
        let dir = self.dir();
        private_dir(&dir)?;
        let cipher_key = match self.read_key()? {
            Some(k) => k,
            // A new key only for an empty vault: secrets written under a key file that is
            // now missing (an unmounted drive) must not be stranded by a new one.
            None if self.file_list()?.is_empty() => self.make_key()?,
            None => {
                return Err(VaultError::KeyFileMissing {
                    path: self.key_file.clone(),
                    dir,
                });
            }
        };
        let sealed = seal(&cipher_key, key, value.as_bytes())?;
        write_atomically(&dir, &self.secret_path(key), &sealed)
    }

    fn file_get(&self, key: &str) -> Result<String> {
        let path = self.secret_path(key);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_found(key));
            }
            Err(e) => return Err(io(format!("read {}", path.display()))(e)),
        };
        let cipher_key = self.read_key()?.ok_or_else(|| VaultError::KeyFileMissing {
            path: self.key_file.clone(),
            dir: self.dir(),
        })?;
        match unseal(&cipher_key, key, &data) {
            Ok(plain) => String::from_utf8(plain).map_err(|_| VaultError::Corrupt {
                path,
                reason: "the value is not UTF-8".into(),
            }),
            Err(FormatError::Decrypt) => Err(VaultError::KeyMismatch {
                key: key.to_string(),
                key_file: self.key_file.clone(),
            }),
            Err(e) => Err(VaultError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn file_list(&self) -> Result<Vec<String>> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("read {}", dir.display()))(e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("read {}", dir.display())))?;
            if let Some(key) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|k| validate_secret_key(k).is_ok())
            {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
    }

    fn file_delete(&self, key: &str) -> Result<()> {
        let path = self.secret_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(io(format!("remove {}", path.display()))(e)),
        }
    }

    /// The key in the key file; `None` when there is no key file.
    fn read_key(&self) -> Result<Option<[u8; KEY_LEN]>> {
        let text = match std::fs::read_to_string(&self.key_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(VaultError::BadKeyFile {
                    path: self.key_file.clone(),
                });
            }
            Err(e) => return Err(io(format!("read {}", self.key_file.display()))(e)),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| VaultError::BadKeyFile {
            path: self.key_file.clone(),
        })?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| VaultError::BadKeyFile {
            path: self.key_file.clone(),
        })?;
        Ok(Some(key))
    }

    /// Makes the key file (0600), or reads the one a concurrent `set` made first. Never
    /// replaces a key file.
    fn make_key(&self) -> Result<[u8; KEY_LEN]> {
        let path = &self.key_file;
        let parent = path.parent().unwrap_or(Path::new("/"));
        if *path == self.home.join("keys").join("secrets.key") {
            private_dir(parent)?;
        } else if !parent.is_dir() {
            return Err(VaultError::Io {
                context: format!(
                    "create the secrets key file {}: its directory {} does not exist (create it, or point [secrets] key_file elsewhere)",
                    path.display(),
                    parent.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut key = [0u8; KEY_LEN];
        random(&mut key)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.{}", std::process::id()));
        let text = format!("{}\n", hex::encode(key));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(io(format!("write {}", tmp.display())))?;
        // Linked, not renamed: a key file that appeared meanwhile is kept, never replaced.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(parent)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.read_key()?.ok_or_else(|| VaultError::KeyFileMissing {
                    path: path.clone(),
                    dir: self.dir(),
                })
            }
            Err(e) => Err(io(format!("create {}", path.display()))(e)),
        }
    }

    // --- keychain ---

    fn entry(&self, key: &str) -> Result<keyring::Entry> {
        keyring::Entry::new(KEYCHAIN_SERVICE, key).map_err(|e| keychain_error("open", key, e))
    }

    fn keychain_set(&self, key: &str, value: &str) -> Result<()> {
        self.entry(key)?
            .set_password(value)
            .map_err(|e| keychain_error("store", key, e))?;
        let mut keys = self.read_index()?;
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
            self.write_index(&keys)?;
        }
        Ok(())
    }

    fn keychain_get(&self, key: &str) -> Result<String> {
        match self.entry(key)?.get_password() {
            Ok(v) => Ok(v),
            Err(keyring::Error::NoEntry) => Err(self.not_found(key)),
            Err(e) => Err(keychain_error("read", key, e)),
        }
    }

    fn keychain_list(&self) -> Result<Vec<String>> {
        // The index is ours; asking the keychain once says whether it is reachable at all,
        // so that `list` fails as every other operation does where there is none.
        const PROBE: &str = "AGENTKERNEL_KEYCHAIN_PROBE";
        match self.entry(PROBE)?.get_password() {
            Ok(_) | Err(keyring::Error::NoEntry) => {}
            Err(e) => return Err(keychain_error("read", PROBE, e)),
        }
        self.read_index()
    }

    fn keychain_delete(&self, key: &str) -> Result<()> {
        let result = self.entry(key)?.delete_credential();
        let mut keys = self.read_index()?;
        let indexed = keys.iter().any(|k| k == key);
        match result {
            Ok(()) => {}
            Err(keyring::Error::NoEntry) => {
                // Gone from the keychain (removed by another tool): forget the name too.
                if indexed {
                    keys.retain(|k| k != key);
                    self.write_index(&keys)?;
                }
                return Err(self.not_found(key));
            }
            Err(e) => return Err(keychain_error("delete", key, e)),
        }
        if indexed {
            keys.retain(|k| k != key);
            self.write_index(&keys)?;
        }
        Ok(())
    }

    fn index_path(&self) -> PathBuf {
        self.home.join(KEYCHAIN_INDEX)
    }

    fn read_index(&self) -> Result<Vec<String>> {
        let path = self.index_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|k| validate_secret_key(k).is_ok())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    fn write_index(&self, keys: &[String]) -> Result<()> {
        self.secure_home()?;
        let mut keys = keys.to_vec();
        keys.sort();
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        write_atomically(&self.home, &self.index_path(), text.as_bytes())
    }
}

fn check_key(key: &str) -> Result<()> {
    validate_secret_key(key).map_err(VaultError::InvalidKey)
}

fn check_value(key: &str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "the value is empty: give the secret's value".to_string()
    } else if value.len() > MAX_VALUE_BYTES {
        format!(
            "the value is {} bytes long: give at most {MAX_VALUE_BYTES}",
            value.len()
        )
    } else {
        return Ok(());
    };
    Err(VaultError::InvalidValue {
        key: key.to_string(),
        reason,
    })
}

fn keychain_error(action: &'static str, key: &str, e: keyring::Error) -> VaultError {
    match e {
        keyring::Error::PlatformFailure(_) | keyring::Error::NoStorageAccess(_) => {
            VaultError::KeychainUnavailable {
                detail: e.to_string(),
            }
        }
        other => VaultError::Keychain {
            action,
            key: key.to_string(),
            detail: other.to_string(),
        },
    }
}

// --- env ---

fn env_get(key: &str) -> Result<String> {
    let prefixed = format!("{ENV_PREFIX}{key}");
    for name in [prefixed.as_str(), key] {
        if let Some(value) = std::env::var_os(name).filter(|v| !v.is_empty()) {
            return value.into_string().map_err(|_| VaultError::InvalidValue {
                key: key.to_string(),
                reason: format!("the variable {name} is not UTF-8: set it to UTF-8 text"),
            });
        }
    }
    Err(VaultError::NotFound {
        key: key.to_string(),
        hint: format!(
            "in the environment: set {prefixed} (or {key}) in your CI's secret settings, or choose another backend with [secrets] backend"
        ),
    })
}

fn env_list() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| {
            name.to_str()
                .and_then(|n| n.strip_prefix(ENV_PREFIX))
                .filter(|k| validate_secret_key(k).is_ok())
                .map(str::to_string)
        })
        .collect()
}

// --- format ---

/// Why stored bytes are not a secret.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum FormatError {
    #[error("it is too short")]
    Short,
    #[error("it does not start with the secret header")]
    Magic,
    #[error("it is format version {0}, which this agentkernel does not know: upgrade agentkernel")]
    Version(u8),
    #[error("it does not decrypt")]
    Decrypt,
}

fn aad(name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + name.len());
    aad.extend_from_slice(MAGIC);
    aad.push(VERSION);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Encrypts `plain` as the secret `name`: header, nonce, ciphertext and tag.
fn seal(key: &[u8; KEY_LEN], name: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce)?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad(name),
            },
        )
        .map_err(|_| VaultError::Io {
            context: format!("encrypt secret {name}"),
            source: std::io::Error::other("the cipher refused the message"),
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts what [`seal`] wrote for the secret `name`.
fn unseal(
    key: &[u8; KEY_LEN],
    name: &str,
    data: &[u8],
) -> std::result::Result<Vec<u8>, FormatError> {
    if data.len() < HEADER_LEN {
        return Err(FormatError::Short);
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Magic);
    }
    if data[MAGIC.len()] != VERSION {
        return Err(FormatError::Version(data[MAGIC.len()]));
    }
    if data.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(FormatError::Short);
    }
    let (nonce, sealed) = data[HEADER_LEN..].split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad(name),
            },
        )
        .map_err(|_| FormatError::Decrypt)
}

// --- files ---

fn random(buf: &mut [u8]) -> Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(buf))
        .map_err(io("read random bytes from /dev/urandom"))
}

/// Creates `dir` (0700) if needed, and makes it 0700 if it is not.
fn private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
    }
    let meta = std::fs::metadata(dir).map_err(io(format!("read {}", dir.display())))?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("make {} private (chmod 0700)", dir.display())))?;
    }
    Ok(())
}

/// Writes `data` to `path` (0600) through a temporary file in `dir`, synced and renamed into
/// place: a reader sees the old content or the new, never a part.
fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    let mut suffix = [0u8; 8];
    random(&mut suffix)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("write {}", path.display()))(e));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("sync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    #[test]
    fn sealed_secrets_round_trip_with_a_fresh_nonce_each_time() {
        let a = seal(&KEY, "API_KEY", b"sk-123").expect("seal");
        let b = seal(&KEY, "API_KEY", b"sk-123").expect("seal");
        assert_eq!(&a[..4], b"AKSV");
        assert_eq!(a[4], 1);
        assert_eq!(a.len(), HEADER_LEN + NONCE_LEN + 6 + TAG_LEN);
        assert_ne!(a, b, "each write has its own nonce");
        assert!(!a.windows(6).any(|w| w == b"sk-123"));
        assert_eq!(unseal(&KEY, "API_KEY", &a).expect("open"), b"sk-123");
    }

    #[test]
    fn tampered_or_misnamed_or_wrongly_keyed_secrets_are_rejected() {
        let sealed = seal(&KEY, "API_KEY", b"sk-123").expect("seal");
        for at in [HEADER_LEN, HEADER_LEN + NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert_eq!(unseal(&KEY, "API_KEY", &bad), Err(FormatError::Decrypt));
        }
        assert_eq!(unseal(&KEY, "OTHER", &sealed), Err(FormatError::Decrypt));
        assert_eq!(
            unseal(&[8; KEY_LEN], "API_KEY", &sealed),
            Err(FormatError::Decrypt)
        );
        let mut newer = sealed.clone();
        newer[4] = 2;
        assert_eq!(
            unseal(&KEY, "API_KEY", &newer),
            Err(FormatError::Version(2))
        );
        assert_eq!(unseal(&KEY, "API_KEY", b"AKS"), Err(FormatError::Short));
        assert_eq!(
            unseal(&KEY, "API_KEY", &sealed[..HEADER_LEN + NONCE_LEN]),
            Err(FormatError::Short)
        );
        assert_eq!(
            unseal(&KEY, "API_KEY", b"plaintext value here, not a secret file"),
            Err(FormatError::Magic)
        );
    }

    fn file_vault(home: &Path) -> Vault {
        let config = Config::parse(&format!(
            "[secrets]\nbackend = \"file\"\nkey_file = \"{}\"\n",
            home.join("keys/secrets.key").display()
        ))
        .expect("config");
        Vault::open(home, &config).expect("vault")
    }

    #[test]
    fn a_secret_file_renamed_to_another_key_does_not_decrypt() {
        let home = tempfile::tempdir().expect("tempdir");
        let vault = file_vault(home.path());
        vault.set("FIRST", "one").expect("set");
        assert_eq!(vault.get("FIRST").expect("get"), "one");
        let dir = home.path().join("secrets");
        std::fs::rename(dir.join("FIRST.secret"), dir.join("SECOND.secret")).expect("rename");
        let e = vault
            .get("SECOND")
            .expect_err("renamed file must not decrypt");
        assert!(matches!(e, VaultError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            vault.get("FIRST").expect_err("gone").kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn a_missing_key_file_is_never_replaced_while_secrets_exist() {
        let home = tempfile::tempdir().expect("tempdir");
        let vault = file_vault(home.path());
        vault.set("A", "one").expect("set");
        std::fs::remove_file(home.path().join("keys/secrets.key")).expect("remove key");
        let e = vault
            .set("B", "two")
            .expect_err("no new key under old secrets");
        assert!(matches!(e, VaultError::KeyFileMissing { .. }), "{e}");
        assert!(e.to_string().contains("restore it"), "{e}");
        assert!(!home.path().join("keys/secrets.key").exists());
        assert_eq!(vault.list().expect("list"), ["A"]);
    }

    #[test]
    fn keys_and_values_are_checked() {
        let home = tempfile::tempdir().expect("tempdir");
        let vault = file_vault(home.path());
        for bad in ["", "1ABC", "A-B", "../x"] {
            assert_eq!(
                vault.set(bad, "v").expect_err(bad).kind(),
                ErrorKind::InvalidInput
            );
        }
        assert_eq!(
            vault.set("EMPTY", "").expect_err("empty").kind(),
            ErrorKind::InvalidInput
        );
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(
            vault.set("BIG", &big).expect_err("big").kind(),
            ErrorKind::InvalidInput
        );
    }
}
