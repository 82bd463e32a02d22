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

/// The HTTP status for an engine error: the client's mistakes are 4xx, the server's 5xx.
/// Images: what does not exist is 404, what the request got wrong 400, a registry that did not
/// answer properly 502.
fn image_status(e: &agentkernel_image::ImageError) -> StatusCode {
    use agentkernel_image::ImageError;
    match e {
        // Nothing usable where the request pointed.
        ImageError::DirectoryMissing { .. }
        | ImageError::LayoutMissing { .. }
        | ImageError::NotADirectory { .. }
        | ImageError::NotALayout { .. }
        | ImageError::TagNotFound { .. }
        | ImageError::ImageNotFound { .. } => StatusCode::NOT_FOUND,
        ImageError::PullUnauthorized { .. } => StatusCode::FORBIDDEN,
        // A local image path that cannot be read: too long, not there, or a loop of links.
        ImageError::Io { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENAMETOOLONG | libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            StatusCode::NOT_FOUND
        }
        ImageError::PullFailed { .. } => StatusCode::BAD_GATEWAY,
        e if e.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn status_of(e: &EngineError) -> StatusCode {
    use agentkernel_native::NativeError;
    use agentkernel_native::exec::ExecError;
    use agentkernel_native::files::FileError;
    match e {
        EngineError::Input(agentkernel_core::CoreError::NotPermitted(_)) => StatusCode::FORBIDDEN,
        EngineError::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
        EngineError::Input(_)
        | EngineError::NoCommand
        | EngineError::BadCopyArg(_)
        | EngineError::BadLogStream(_)
        | EngineError::NotRegularFile { .. }
        | EngineError::BackendUnavailable(_) => StatusCode::BAD_REQUEST,
        EngineError::NotFound(_)
        | EngineError::UuidNotFound(_)
        | EngineError::FileNotFound(_)
        | EngineError::DetachedNotFound { .. } => StatusCode::NOT_FOUND,
        EngineError::NameTaken(_)
        | EngineError::NotRunning(_)
        | EngineError::DetachedStillRunning { .. }
        | EngineError::Tampered(_) => StatusCode::CONFLICT,
        EngineError::BackendNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::Image(e) => image_status(e),
        // Reached only where no exit code can carry it (a detached command that cannot start).
        EngineError::Native(NativeError::Exec(ExecError::NotFound(_))) => StatusCode::NOT_FOUND,
        EngineError::Native(NativeError::Exec(ExecError::NotExecutable(_))) => {
            StatusCode::FORBIDDEN
        }
        EngineError::Native(NativeError::Exec(ExecError::NoCommand)) => StatusCode::BAD_REQUEST,
        EngineError::Native(NativeError::Exec(ExecError::NotRunning)) => StatusCode::CONFLICT,
        EngineError::Native(NativeError::Files(f)) => match f {
            FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FileError::DirectoryNotEmpty(_) => StatusCode::CONFLICT,
            FileError::IsDirectory(_)
            | FileError::NotRegular { .. }
            | FileError::HostNotRegular { .. }
            | FileError::DanglingLink { .. }
            | FileError::LinkNotFollowed(_) => StatusCode::BAD_REQUEST,
            FileError::KernelFilesystem { .. } => StatusCode::FORBIDDEN,
            FileError::NoWorkdir(_) => StatusCode::NOT_FOUND,
            FileError::NotRunning => StatusCode::CONFLICT,
            FileError::Sandbox { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StatusCode::FORBIDDEN
                }
                std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::IsADirectory
                | std::io::ErrorKind::AlreadyExists
                | std::io::ErrorKind::InvalidFilename => StatusCode::BAD_REQUEST,
                // A magic link (/proc/PID/root, /proc/PID/fd/N) or a loop of links in the path.
                _ if source.raw_os_error() == Some(libc::ELOOP) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            FileError::Host { .. } | FileError::HostDest(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
