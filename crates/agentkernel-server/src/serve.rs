//! Serving the router on a TCP listener or a Unix socket with hyper, connection by connection,
//! with the timeouts `axum::serve` lacks, and a graceful shutdown.
//!
//! - A client gets [`HEADER_READ_TIMEOUT`] to send a request's line and headers, or its
//!   connection is closed (a slowloris client cannot hold connections open by trickling
//!   headers). hyper starts this timer whenever it waits for a request head, which on a
//!   keep-alive connection is right after the previous answer went out: so the same timeout
//!   closes idle keep-alive connections. A request in progress (a long buffered command, an
//!   SSE stream) is not waiting for a head and is never cut by it.
//! - A request body must keep arriving: [`BODY_STALL_TIMEOUT`] without a byte of it ends the
//!   request (408).
//! - On shutdown the listener closes, idle connections close, and requests in progress
//!   (streams included) are finished before the server returns.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Time a client has to send a request's line and headers; also how long an idle keep-alive
/// connection stays open. Ten seconds is far more than any client on a working network needs
/// (a request head is one packet), and more than the idle time after which the SDKs' HTTP
/// clients drop pooled connections themselves (httpx 5 s, Node's undici 4 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a request body may go without a byte arriving, once the handler reads it (nginx's
/// `client_body_timeout`, shorter). A client sending a body sends it continuously.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener the server accepts connections from.
trait Listener {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn accept(&mut self) -> std::io::Result<Self::Io>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Small writes (SSE events) leave at once rather than wait for the previous ACK.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok(stream)
    }
}

/// Serves `app` on a TCP listener until `shutdown` resolves, then finishes the requests in
/// progress.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, app, shutdown).await
}

/// Serves `app` on a Unix socket until `shutdown` resolves, then finishes the requests in
/// progress.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, app, shutdown).await
}

async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection that fails (the client went away, a timeout) concerns only itself.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// After a failed accept: the failures of one connection (it was reset before it was
/// accepted) are skipped; for the others (out of file descriptors) the server waits a moment
/// rather than spin, as connections that end free them.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        return;
    }
    tracing::warn!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A request body that fails once [`BODY_STALL_TIMEOUT`] passes without a byte of it.
pub struct StallTimeoutBody {
    inner: axum::body::Body,
    /// Running while the reader waits for the next frame.
    stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The error of a [`StallTimeoutBody`] that gave up.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body stopped arriving for {}s: send the whole body at once",
    BODY_STALL_TIMEOUT.as_secs()
)]
pub struct BodyStalled;

impl StallTimeoutBody {
    pub fn wrap(inner: axum::body::Body) -> axum::body::Body {
        axum::body::Body::new(StallTimeoutBody { inner, stall: None })
    }
}

impl http_body::Body for StallTimeoutBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.stall = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_STALL_TIMEOUT)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: every request body is a [`StallTimeoutBody`].
pub async fn time_bodies(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    next.run(req.map(StallTimeoutBody::wrap)).await
}
