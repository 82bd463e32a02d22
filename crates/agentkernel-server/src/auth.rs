//! Bearer-token authentication: every request but `GET /health` must carry one of the
//! configured keys, compared in constant time: neither a key's bytes nor its length show in
//! how long the comparison takes.

use crate::envelope::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured API keys, kept as SHA-256 digests; empty means no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<[u8; 32]>);

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> ApiKeys {
        ApiKeys(
            keys.into_iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .map(|k| digest(k.as_bytes()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `given` is one of the keys. The digest of `given` (32 bytes whatever its
    /// length) is compared with every key's digest in constant time, without stopping at a
    /// match: the time taken depends only on the length of `given` (hashing it) and the
    /// number of keys, never on the keys.
    pub fn accepts(&self, given: &[u8]) -> bool {
        let given = digest(given);
        let mut found = subtle::Choice::from(0u8);
        for key in &self.0 {
            found |= key.ct_eq(&given);
        }
        found.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.keys.is_empty() || (req.method() == Method::GET && req.uri().path() == "/health") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(key) if state.keys.accepts(key.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized("invalid API key: check the key given to `agentkernel serve`"),
        None => unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (the SDKs read AGENTKERNEL_API_KEY)",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = ApiKeys::new(["alpha".to_string(), " beta \n".to_string(), String::new()]);
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"alpha"));
        assert!(keys.accepts(b"beta"));
        assert!(!keys.accepts(b"alph"));
        assert!(!keys.accepts(b"alphaa"));
        assert!(!keys.accepts(b""));
        assert!(ApiKeys::new(Vec::<String>::new()).is_empty());
    }

    /// What a timing attack on the key's length needs is a comparison whose work depends on
    /// the stored key's length: an early return on a length mismatch. Timing cannot be
    /// asserted reliably, so this asserts the property that makes it impossible: what is
    /// compared has the same length whatever the key or the guess, and keys of any length
    /// (including ones that share a prefix with the guess) are told apart only by equality.
    #[test]
    fn the_comparison_never_depends_on_the_key_length() {
        for key in ["k", "key-of-medium-length", &"x".repeat(4096)] {
            let keys = ApiKeys::new([key.to_string()]);
            assert_eq!(keys.0[0].len(), 32, "stored as a fixed-size digest");
            for guess in [
                "",
                "k",
                "ke",
                "key",
                &key[..key.len() - 1],
                &format!("{key}x"),
            ] {
                assert_eq!(digest(guess.as_bytes()).len(), keys.0[0].len());
                assert_eq!(
                    keys.accepts(guess.as_bytes()),
                    guess == key,
                    "{key:?} vs {guess:?}"
                );
            }
            assert!(keys.accepts(key.as_bytes()));
        }
    }
}
