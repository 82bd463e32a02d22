//! At most N requests are served at once; beyond that the answer is 429 with Retry-After, so
//! clients back off instead of piling up work the host cannot do.

use crate::envelope::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub async fn limit_concurrency(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let Ok(permit) = state.concurrency.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests at once (this server runs at most {}): retry after a second",
                state.limits.max_concurrent
            ),
        );
        e.retry_after = Some(1);
        return e.into_response();
    };
    let response = next.run(req).await;
    // A streamed body keeps its slot until the stream ends.
    guard_body(response, permit)
}

/// `response` with `guard` held until its body has been sent (or dropped).
pub fn guard_body<G: Send + Unpin + 'static>(response: Response, guard: G) -> Response {
    let (parts, body) = response.into_parts();
    let body = axum::body::Body::new(GuardedBody {
        inner: body,
        _guard: guard,
    });
    Response::from_parts(parts, body)
}

/// A response body that holds something (a concurrency permit, a share of the output budget)
/// until it is dropped.
struct GuardedBody<G> {
    inner: axum::body::Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
