//! Bearer-token authentication: every request but `GET /health` must carry one of the
//! configured keys, compared in constant time.

use crate::envelope::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The configured API keys; empty means no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> ApiKeys {
        ApiKeys(
            keys.into_iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .map(String::into_bytes)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `given` is one of the keys. Every key is compared, and each comparison takes
    /// the same time whatever the bytes, so timing tells nothing about the keys.
    pub fn accepts(&self, given: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0u8);
        for key in &self.0 {
            found |= key.as_slice().ct_eq(given);
        }
        found.into()
    }
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
}
