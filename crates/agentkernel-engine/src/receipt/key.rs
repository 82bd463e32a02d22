//! This installation's receipt signing key: an ed25519 seed, 64 hex digits and a newline, at
//! `<home>/keys/receipt-signing.key`, mode 0600 in a 0700 directory. It is made on first use:
//! written to a private temporary file and linked into place, so a reader never sees half a
//! key, and when two processes race the loser uses the winner's key.
//!
//! A key's id is the first 16 hex digits of the sha256 of its public key.

use super::{ReceiptError, io};
use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Where the key lives under the agentkernel home.
pub fn path(home: &Path) -> PathBuf {
    home.join("keys").join("receipt-signing.key")
}

/// This installation's signing key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// The installation's key, made now if there is none.
    pub fn load_or_create(home: &Path) -> Result<SigningKey, ReceiptError> {
        let file = path(home);
        match load(&file) {
            Err(ReceiptError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let dir = home.join("keys");
        private_dir(&dir)?;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut seed))
            .map_err(io(
                "read random bytes from /dev/urandom for the receipt key",
            ))?;
        let tmp = dir.join(format!(".receipt-signing.key.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
                f.sync_all()
            });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &file));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(SigningKey {
                key: ed25519_dalek::SigningKey::from_bytes(&seed),
            }),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(&file),
            Err(e) => Err(io(format!(
                "create the receipt signing key {} (check that {} is writable)",
                file.display(),
                dir.display()
            ))(e)),
        }
    }

    /// The key id: 16 hex digits.
    pub fn id(&self) -> String {
        id_of(&self.key.verifying_key())
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The signature of `message`, hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }
}

/// The id of a public key: the first 16 hex digits of its sha256.
pub fn id_of(key: &ed25519_dalek::VerifyingKey) -> String {
    let mut id = hex::encode(Sha256::digest(key.as_bytes()));
    id.truncate(16);
    id
}

/// Parses a hex public key.
pub(crate) fn parse_public(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let bytes = hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or("it is not 32 bytes of hex")?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// The id of this installation's key, if it has a readable one (never makes one).
pub fn local_id(home: &Path) -> Option<String> {
    load(&path(home)).ok().map(|k| k.id())
}

fn load(file: &Path) -> Result<SigningKey, ReceiptError> {
    let meta = std::fs::metadata(file).map_err(io(format!("read {}", file.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ReceiptError::KeyNotPrivate {
            path: file.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(file).map_err(io(format!("read {}", file.display())))?;
    let bad = |reason: &str| ReceiptError::BadKey {
        path: file.to_path_buf(),
        reason: reason.to_string(),
    };
    let seed = hex::decode(text.trim_end_matches('\n'))
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| bad("it must hold 64 hex digits"))?;
    Ok(SigningKey {
        key: ed25519_dalek::SigningKey::from_bytes(&seed),
    })
}

/// Creates `dir` 0700 if needed (with its parents).
fn private_dir(dir: &Path) -> Result<(), ReceiptError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("create {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_reused() {
        let home = tempfile::tempdir().expect("tempdir");
        let a = SigningKey::load_or_create(home.path()).expect("key");
        let b = SigningKey::load_or_create(home.path()).expect("key");
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path(home.path())), 0o600);
        assert_eq!(mode(&home.path().join("keys")), 0o700);
        assert_eq!(local_id(home.path()), Some(a.id()));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let home = tempfile::tempdir().expect("tempdir");
        SigningKey::load_or_create(home.path()).expect("key");
        std::fs::set_permissions(path(home.path()), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let e = SigningKey::load_or_create(home.path())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
