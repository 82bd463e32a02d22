//! Authentication codes (HMAC-SHA-256) on what the engine stores about sandboxes: the rows of
//! `state.db` and the `running.json` views. A stored spec decides what a sandbox may do when
//! it is started again, and a stored runtime which process `exec` joins; a record that
//! something other than the engine wrote (a sandbox that reached the state directory, another
//! program) fails verification and is not used.
//!
//! The key is 32 random bytes in `keys/state.key` (0600, in the 0700 state directory), made on
//! first use.

use crate::error::{EngineError, Result};
use hmac::{Hmac, Mac};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

type HmacSha256 = Hmac<sha2::Sha256>;

const KEY_LEN: usize = 32;

/// Signs and verifies stored records with the state directory's key.
pub struct Seal {
    key: [u8; KEY_LEN],
}

impl Seal {
    /// The key of the state directory `home`, made if there is none yet.
    pub fn open(home: &Path) -> Result<Seal> {
        let dir = home.join("keys");
        let path = dir.join("state.key");
        let err = |action: &str| EngineError::io(format!("{action} {}", path.display()));
        match std::fs::File::open(&path) {
            Ok(file) => return Seal::read(file).map_err(err("read")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("open")(e)),
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::io(format!("create {}", dir.display()))(e)),
        }
        let mut key = [0u8; KEY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .map_err(EngineError::io("read random bytes from /dev/urandom"))?;
        // Written under a temporary name and linked into place: a concurrent first use either
        // wins the link or reads the winner's key, never a half-written one.
        let tmp = dir.join(format!(".state.key.{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
            .map_err(err("write"))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Seal { key }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::File::open(&path)
                .and_then(Seal::read)
                .map_err(err("read")),
            Err(e) => Err(err("write")(e)),
        }
    }

    fn read(mut file: std::fs::File) -> std::io::Result<Seal> {
        let mut key = [0u8; KEY_LEN];
        file.read_exact(&mut key)?;
        Ok(Seal { key })
    }

    fn mac(&self, parts: &[Option<&[u8]>]) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC accepts a {KEY_LEN}-byte key"),
        };
        // Each part is length-prefixed (absent ones marked), so no two lists of parts sign
        // the same bytes.
        for part in parts {
            match part {
                Some(bytes) => {
                    mac.update(&(bytes.len() as u64).to_le_bytes());
                    mac.update(bytes);
                }
                None => mac.update(&u64::MAX.to_le_bytes()),
            }
        }
        mac
    }

    /// The code of `parts`, as hex.
    pub fn sign(&self, parts: &[Option<&[u8]>]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    /// Whether `code` (hex) is the code of `parts`; compared in constant time.
    pub fn verify(&self, parts: &[Option<&[u8]>], code: &str) -> bool {
        match hex::decode(code) {
            Ok(bytes) => self.mac(parts).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_verify_only_their_own_parts_and_the_key_is_private() {
        let home = tempfile::tempdir().expect("tempdir");
        let seal = Seal::open(home.path()).expect("key");
        let code = seal.sign(&[Some(b"a"), None, Some(b"bc")]);
        assert!(seal.verify(&[Some(b"a"), None, Some(b"bc")], &code));
        assert!(!seal.verify(&[Some(b"a"), Some(b""), Some(b"bc")], &code));
        assert!(!seal.verify(&[Some(b"ab"), None, Some(b"c")], &code));
        assert!(!seal.verify(&[Some(b"a"), None, Some(b"bc")], "00"));
        let again = Seal::open(home.path()).expect("same key");
        assert!(again.verify(&[Some(b"a"), None, Some(b"bc")], &code));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("keys/state.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
