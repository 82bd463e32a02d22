//! STAND-IN for the TLS interceptor another helper writes (branch h-tls): the same public
//! signatures, every call refused, so that the proxy compiles before it lands. Replace this
//! file with the real one at merge.

use std::fmt;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// A secret to add to requests for `host`.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The host whose requests get the secret.
    pub host: String,
    /// The header the secret goes into.
    pub header: String,
    /// The header's value.
    pub value: String,
    /// What the sandbox sees in place of the secret.
    pub placeholder: Option<String>,
}

/// Terminates TLS for bound hosts (stand-in: refuses every call).
#[derive(Debug, Default)]
pub struct Interceptor {
    _private: (),
}

/// Why an interception failed.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl Interceptor {
    /// Stand-in: always an error.
    pub async fn intercept_tls<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        _client: S,
        host: &str,
        _port: u16,
        _upstream: SocketAddr,
        _bindings: &[Binding],
    ) -> Result<(), TlsError> {
        Err(TlsError(format!(
            "TLS interception for {host} is not built in (stand-in)"
        )))
    }

    /// Stand-in: always an error.
    pub async fn intercept_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        _client: S,
        host: &str,
        _port: u16,
        _upstream: SocketAddr,
        _bindings: &[Binding],
    ) -> Result<(), TlsError> {
        Err(TlsError(format!(
            "HTTP interception for {host} is not built in (stand-in)"
        )))
    }
}
