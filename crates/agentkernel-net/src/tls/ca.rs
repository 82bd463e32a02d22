//! The per-installation egress CA and the leaf certificates it signs for intercepted hosts.
//!
//! `ca.key` and `ca.pem` are each published with an exclusive hard link from a fully written
//! temporary file, so a reader never sees a partial file and, when two processes create the
//! CA at once, the first link wins and the other loads the winner's. The certificate is
//! derived from the key, so a crash between the two files is repaired by the next start.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use super::TlsError;

/// The CA's common name.
const CA_NAME: &str = "agentkernel egress CA";
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// How long a leaf certificate is valid after it is made.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How far back a certificate's validity starts, for clocks slightly behind the host's.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A cached leaf is replaced after this long, well before it expires.
const LEAF_REUSE: Duration = Duration::from_secs(12 * 3600);
/// At most this many hosts' leaves are kept in memory.
const LEAF_CACHE_MAX: usize = 1024;

/// The egress CA: its certificate (what sandboxes trust) and the key that signs leaves.
///
/// `Debug` shows the certificate only; the key never leaves this type.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
}

struct CachedLeaf {
    made: Instant,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir` (`ca.pem`, `ca.key`), creating it the first time: an ECDSA
    /// P-256 key (mode 0600) and a 10-year certificate (mode 0644), `CA:true, pathlen 0`.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::CaFile {
                what: "cannot create",
                path: dir.to_path_buf(),
                source,
            })?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        let invalid = |reason: String| TlsError::CaInvalid {
            dir: dir.to_path_buf(),
            reason,
        };

        let key_pem = match read_if_exists(&key_path)? {
            Some(pem) => pem,
            None => {
                let key =
                    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                        TlsError::Generate {
                            what: "the egress CA".into(),
                            source,
                        }
                    })?;
                publish(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                read_if_exists(&key_path)?
                    .ok_or_else(|| invalid("ca.key vanished right after it was written".into()))?
            }
        };
        let mode = fs::metadata(&key_path)
            .map_err(|source| TlsError::CaFile {
                what: "cannot read",
                path: key_path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::CaKeyPermissions {
                path: key_path,
                mode: mode & 0o777,
            });
        }
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(format!("ca.key is not a PEM private key ({e})")))?;
        drop(key_pem);

        let cert_pem = match read_if_exists(&cert_path)? {
            Some(pem) => pem,
            None => {
                let cert = ca_params()?
                    .self_signed(&key)
                    .map_err(|source| TlsError::Generate {
                        what: "the egress CA".into(),
                        source,
                    })?;
                publish(&cert_path, cert.pem().as_bytes(), 0o644)?;
                read_if_exists(&cert_path)?
                    .ok_or_else(|| invalid("ca.pem vanished right after it was written".into()))?
            }
        };
        let cert_der = pem_certificate(&cert_pem)
            .ok_or_else(|| invalid("ca.pem does not hold a PEM certificate".into()))?;

        let ca = Ca {
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params()?, key),
            leaves: Mutex::new(HashMap::new()),
        };
        ca.self_check().map_err(invalid)?;
        Ok(ca)
    }

    /// The CA certificate, PEM: what a sandbox adds to its trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A TLS server configuration presenting a leaf for `host` signed by this CA (ALPN
    /// `http/1.1`), made on first use and cached for a while.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let host = super::normalize_host(host);
        let now = Instant::now();
        {
            let leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(leaf) = leaves.get(&host)
                && now.duration_since(leaf.made) < LEAF_REUSE
            {
                return Ok(leaf.config.clone());
            }
        }
        let config = Arc::new(self.make_server_config(&host)?);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        leaves.retain(|_, leaf| now.duration_since(leaf.made) < LEAF_REUSE);
        if leaves.len() >= LEAF_CACHE_MAX
            && let Some(oldest) = leaves
                .iter()
                .min_by_key(|(_, leaf)| leaf.made)
                .map(|(name, _)| name.clone())
        {
            leaves.remove(&oldest);
        }
        leaves.insert(
            host,
            CachedLeaf {
                made: now,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// The number of leaves cached (for tests).
    #[cfg(test)]
    fn cached_leaves(&self) -> usize {
        self.leaves.lock().map(|l| l.len()).unwrap_or_default()
    }

    fn make_leaf(
        &self,
        host: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        let generate = |source| TlsError::Generate {
            what: host.to_string(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(generate)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }

    fn make_server_config(&self, host: &str) -> Result<rustls::ServerConfig, TlsError> {
        let (leaf, key) = self.make_leaf(host)?;
        let mut config = rustls::ServerConfig::builder_with_provider(super::intercept::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf, self.cert_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Checks that the stored certificate and key belong together and are in date, by
    /// verifying a fresh leaf against the certificate alone.
    fn self_check(&self) -> Result<(), String> {
        const PROBE: &str = "self-check.agentkernel.invalid";
        let (leaf, _) = self.make_leaf(PROBE).map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| format!("ca.pem is not a usable CA certificate ({e})"))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::intercept::provider(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(PROBE).map_err(|e| e.to_string())?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &leaf,
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| format!("a certificate it signs does not verify ({e}): ca.pem and ca.key do not match, or ca.pem has expired"))
    }
}

/// The CA's parameters. `Issuer` takes the subject and key identifier method from these, so
/// they must stay what the stored certificate was made with.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| TlsError::Generate {
            what: "the egress CA".into(),
            source,
        })?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

/// The first certificate of a PEM text, DER.
fn pem_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

fn read_if_exists(path: &Path) -> Result<Option<String>, TlsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::CaFile {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `contents` to a temporary file next to `path` with exactly `mode`, syncs it, and
/// links it to `path` unless `path` already exists (then the existing file wins).
fn publish(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = temp_path(path);
    let io_err = |what, p: &Path| {
        let p: PathBuf = p.to_path_buf();
        move |source| TlsError::CaFile {
            what,
            path: p,
            source,
        }
    };
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        // The umask may have cleared bits of `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set the mode of", &tmp))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cannot write", &tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(io_err("cannot create", path)(source)),
        }
        if let Some(parent) = path.parent() {
            // Make the new name durable; failure here only loses it on a crash.
            let _ = fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// A temporary name next to `path`, unique to this process and call.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}.{nanos}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_per_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let a = ca.server_config("a.example.com").expect("leaf");
        let b = ca.server_config("A.example.com.").expect("leaf");
        assert!(Arc::ptr_eq(&a, &b));
        ca.server_config("b.example.com").expect("leaf");
        assert_eq!(ca.cached_leaves(), 2);
    }

    #[test]
    fn mismatched_key_is_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        Ca::load_or_create(one.path()).expect("ca one");
        Ca::load_or_create(two.path()).expect("ca two");
        fs::copy(one.path().join("ca.pem"), two.path().join("ca.pem")).expect("copy");
        let err = Ca::load_or_create(two.path()).expect_err("mismatch");
        assert!(err.to_string().contains("do not match"), "{err}");
    }

    #[test]
    fn missing_certificate_is_remade_from_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key1 = {
            Ca::load_or_create(dir.path()).expect("ca");
            fs::read(dir.path().join("ca.key")).expect("key")
        };
        fs::remove_file(dir.path().join("ca.pem")).expect("rm");
        Ca::load_or_create(dir.path()).expect("ca again");
        assert_eq!(fs::read(dir.path().join("ca.key")).expect("key"), key1);
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Ca::load_or_create(dir.path()).expect("ca");
        fs::set_permissions(dir.path().join("ca.key"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = Ca::load_or_create(dir.path()).expect_err("readable key");
        assert!(matches!(err, TlsError::CaKeyPermissions { .. }), "{err}");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let key = fs::read_to_string(dir.path().join("ca.key")).expect("key");
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!format!("{ca:?}").contains(&body[..20]));
    }
}
