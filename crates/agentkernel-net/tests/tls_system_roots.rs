//! `Interceptor::with_system_roots` reads the roots `SSL_CERT_FILE` names. It changes the
//! process environment, so it is the only test in this binary.

use std::sync::Arc;

use agentkernel_net::tls::{Ca, Interceptor, TlsError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

#[test]
fn ssl_cert_file_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(Ca::load_or_create(&dir.path().join("keys")).expect("ca"));

    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "roots test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).expect("root");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, root.pem()).expect("write bundle");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write empty");

    // SAFETY: this binary runs this one test and starts no other thread that reads the
    // environment while it is changed.
    unsafe {
        std::env::remove_var("SSL_CERT_DIR");
        std::env::set_var("SSL_CERT_FILE", &bundle);
    }
    Interceptor::with_system_roots(ca.clone()).expect("roots from SSL_CERT_FILE");

    // SAFETY: as above.
    unsafe { std::env::set_var("SSL_CERT_FILE", &empty) };
    let err = Interceptor::with_system_roots(ca).expect_err("no roots");
    assert!(matches!(err, TlsError::NoRoots { .. }), "{err}");
    assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
}
