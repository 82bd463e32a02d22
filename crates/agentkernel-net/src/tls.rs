//! Secret injection: the proxy's HTTP and TLS interception for hosts that have secrets bound.
//!
//! A sandbox never holds a bound secret: its environment variable holds
//! [`agentkernel_core::egress::PLACEHOLDER`], and the proxy adds the credential to requests
//! for the bound host only ([`Binding`]). For HTTPS the proxy terminates the sandbox's TLS
//! with a leaf certificate for the host, signed by a per-installation CA ([`Ca`]) that the
//! sandbox trusts, and opens its own TLS connection to the real host, verified against the
//! host machine's roots. The upstream handshake comes first: if the host's certificate is not
//! trusted, no request (and so no secret) is ever sent, and the sandbox gets a `502` that
//! says why ([`Interceptor::intercept_tls`]).
//!
//! Requests are relayed with hyper (HTTP/1.1, keep-alive, bodies streamed both ways); a
//! request whose `Host` is not the intercepted host is answered `421` locally, so a secret
//! bound to one host never reaches another through a shared connection.

mod ca;
mod http;
mod intercept;

pub use ca::Ca;
pub use intercept::Interceptor;

use agentkernel_core::egress::SecretBinding;

/// A secret as the proxy applies it to requests for one host.
///
/// `Debug` shows the host and header only: the value and the placeholder never appear in
/// logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    /// The only host (lowercase, no port) whose requests get the secret.
    pub host: String,
    /// The header it goes into, lowercase (`authorization` by default).
    pub header: String,
    /// The whole header value to set, e.g. `Bearer sk-...`.
    pub value: String,
    /// A token (from `--placeholder-secrets`) replaced by the real secret wherever it appears
    /// in a request's header values. The real secret is `value`, without the `Bearer ` scheme
    /// when `header` is `authorization` (see [`Binding::secret`]).
    pub placeholder: Option<String>,
}

impl Binding {
    /// The binding of `secret` as `binding` describes it: `Authorization: Bearer SECRET` when
    /// no header is named, otherwise the named header (lowercased) with the raw secret.
    pub fn from_secret(
        binding: &SecretBinding,
        secret: &str,
        placeholder: Option<String>,
    ) -> Binding {
        let (header, value) = match &binding.header {
            Some(header) => (header.to_ascii_lowercase(), secret.to_string()),
            None => ("authorization".to_string(), format!("Bearer {secret}")),
        };
        Binding {
            host: normalize_host(&binding.host),
            header,
            value,
            placeholder,
        }
    }

    /// The raw secret, what a placeholder token is replaced by: `value` without a leading
    /// `Bearer ` when the header is `authorization`, otherwise `value` itself.
    pub fn secret(&self) -> &str {
        if self.header.eq_ignore_ascii_case("authorization")
            && let Some(raw) = self.value.strip_prefix("Bearer ")
        {
            return raw;
        }
        &self.value
    }

    /// Whether this binding applies to requests for `host` (case and a trailing dot ignored).
    pub(crate) fn applies_to(&self, host: &str) -> bool {
        normalize_host(&self.host) == normalize_host(host)
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("host", &self.host)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .field(
                "placeholder",
                &self.placeholder.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A host name as compared for bindings and `Host` checks: lowercase, no trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// What went wrong in the CA, the leaf certificates or an intercepted connection.
///
/// No message ever contains a secret or the CA key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory of the CA could not be read or written.
    #[error(
        "{what} {path}: {source}; check that the directory exists and is writable by this user"
    )]
    CaFile {
        /// What was being done (e.g. "cannot write").
        what: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The stored CA cannot be used.
    #[error(
        "the agentkernel egress CA in {dir} cannot be used: {reason}; remove ca.pem and ca.key \
         there to create a new one (running sandboxes must then be restarted to trust it)"
    )]
    CaInvalid {
        /// The key directory.
        dir: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA key file is readable by other users.
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` (the key \
         signs certificates every sandbox trusts)",
        path = .path.display()
    )]
    CaKeyPermissions {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate or key could not be generated.
    #[error("cannot generate a certificate for {what}: {source}")]
    Generate {
        /// For what (a host, or the CA).
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A TLS configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Config(#[from] rustls::Error),
    /// No trusted root certificate is available for verifying upstream hosts.
    #[error(
        "no trusted root certificates found on this machine{detail}; install the \
         ca-certificates package or point SSL_CERT_FILE / SSL_CERT_DIR at a CA bundle"
    )]
    NoRoots {
        /// What the loader reported, if anything (starts with "; ").
        detail: String,
    },
    /// The host name cannot be used as a TLS server name.
    #[error("{host:?} is not a valid TLS server name")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
    /// The upstream could not be reached.
    #[error("cannot connect to {host}:{port} at {addr}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The upstream's certificate failed verification against the host's roots. Nothing was
    /// sent to it.
    #[error(
        "the certificate of {host} is not trusted ({reason}); no secret was sent. If the host \
         is meant to be trusted, add its CA to this machine's trust store (or SSL_CERT_FILE)"
    )]
    UpstreamUntrusted {
        /// The host.
        host: String,
        /// Why verification failed.
        reason: String,
    },
    /// The TLS handshake with the upstream failed for another reason. Nothing was sent to it.
    #[error("the TLS handshake with {host}:{port} failed: {source}; no secret was sent")]
    UpstreamHandshake {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The sandboxed client did not complete the TLS handshake with the proxy.
    #[error(
        "the sandboxed client's TLS handshake for {host} failed: {source}; the client must \
         trust the agentkernel egress CA (ca.pem in the keys directory)"
    )]
    ClientHandshake {
        /// The host.
        host: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A step took too long.
    #[error("timed out after {secs}s while {what}")]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// Serving HTTP to the sandboxed client failed.
    #[error("HTTP relay for {host} failed: {source}")]
    Http {
        /// The host.
        host: String,
        /// The underlying error.
        source: hyper::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_binding(spec: &str) -> SecretBinding {
        spec.parse().expect("valid binding")
    }

    #[test]
    fn default_binding_is_bearer_authorization() {
        let b = Binding::from_secret(&secret_binding("K:API.example.com"), "sk-1", None);
        assert_eq!(b.host, "api.example.com");
        assert_eq!(b.header, "authorization");
        assert_eq!(b.value, "Bearer sk-1");
        assert_eq!(b.secret(), "sk-1");
    }

    #[test]
    fn named_header_gets_raw_value() {
        let b = Binding::from_secret(
            &secret_binding("K:api.example.com:X-Api-Key"),
            "sk-2",
            Some("ak-ph-1".into()),
        );
        assert_eq!(b.header, "x-api-key");
        assert_eq!(b.value, "sk-2");
        assert_eq!(b.secret(), "sk-2");
        assert!(b.applies_to("API.example.com."));
        assert!(!b.applies_to("example.com"));
    }

    #[test]
    fn debug_redacts_values() {
        let b = Binding::from_secret(
            &secret_binding("K:api.example.com"),
            "sk-very-secret",
            Some("ak-ph-token".into()),
        );
        let shown = format!("{b:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(!shown.contains("ak-ph-token"), "{shown}");
    }
}
