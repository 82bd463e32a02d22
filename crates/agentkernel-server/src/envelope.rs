//! The response envelope of every JSON answer: `{"success": true, "data": …}` or
//! `{"success": false, "error": "…"}` with a 4xx/5xx status.

use agentkernel_engine::EngineError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A successful answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ok<T> {
    pub success: bool,
    pub data: T,
}

/// `Ok` with `data`.
pub fn ok<T: Serialize>(data: T) -> Json<Ok<T>> {
    Json(Ok {
        success: true,
        data,
    })
}

/// A success envelope around `data` that holds command output, serialized into a buffer of
/// about its final size (`text_bytes`, the length of its text): no doubling growth, and no
/// spare capacity, over a large answer.
pub fn large_ok<T: Serialize>(data: &T, text_bytes: usize) -> Response {
    let mut json = Vec::with_capacity(text_bytes.saturating_add(512));
    let envelope = Ok {
        success: true,
        data,
    };
    if let Err(e) = serde_json::to_writer(&mut json, &envelope) {
        return ApiError::internal(format!("render the answer: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

/// The error envelope, as documented in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// What went wrong and what to do about it.
    pub error: String,
}

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for 429 and 503 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// The error answers every endpoint may give, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its OpenAPI description is used
pub enum ErrorAnswers {
    /// Bad input: the message says which field and what to send instead.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// Missing or wrong API key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Forbidden by the sandbox's policy (e.g. writing into a read-only root).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Unknown sandbox, file or command.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The command did not finish within the timeout and was killed.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// Name taken, or the sandbox is in the wrong state (e.g. not running).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// Request body (or file) too large.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not JSON.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Too many requests at once: retry after the `Retry-After` seconds.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// The server failed.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// Not implemented by this server's backends yet.
    #[response(status = 501)]
    NotImplemented(ErrorBody),
    /// An image registry the request named did not answer properly.
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// The backend cannot run sandboxes on this host now.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                success: false,
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError::new(status_of(&e), e.to_string())
    }
}

/// The HTTP status for an engine error, from its kind (`agentkernel_core::ErrorKind`): the
/// client's mistakes are 4xx, the server's 5xx. The kind is decided once, where the error is
/// defined; no surface looks inside a backend's errors.
pub fn status_of(e: &EngineError) -> StatusCode {
    use agentkernel_core::HasKind;
    StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
