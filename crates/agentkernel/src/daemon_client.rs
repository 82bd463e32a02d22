//! The CLI's side of the daemon: HTTP/1.1 over its Unix socket (hyper), the same API an SDK
//! speaks, with JSON answers and the `/run/stream` event stream.

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

/// The daemon's socket, pid file and log under the state directory.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("daemon.sock")
}

pub fn pid_path(home: &Path) -> PathBuf {
    home.join("daemon.pid")
}

pub fn log_path(home: &Path) -> PathBuf {
    home.join("daemon.log")
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket: the daemon is not running.
    #[error("the daemon is not running ({0})")]
    Unavailable(std::io::Error),
    #[error("talking to the daemon failed: {0}")]
    Protocol(String),
    /// The daemon answered with an error envelope.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

/// A connection-per-request client on a single-threaded runtime: the CLI makes a few requests
/// and exits, and a runtime of its own costs well under a millisecond.
pub struct DaemonClient {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl DaemonClient {
    pub fn new(home: &Path) -> Result<DaemonClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol(format!("start a runtime: {e}")))?;
        Ok(DaemonClient {
            socket: socket_path(home),
            runtime,
        })
    }

    async fn connect(socket: &Path) -> Result<Sender, ClientError> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(ClientError::Unavailable)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Request<Full<Bytes>> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "agentkernel");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(bytes)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// A JSON request; the envelope's `data` on success.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        self.runtime.block_on(async {
            let mut sender = Self::connect(&self.socket).await?;
            let resp = sender
                .send_request(Self::request(method, path, body))
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            read_envelope(resp).await
        })
    }

    /// POSTs to an SSE endpoint and hands each event (name, data) to `on_event` as it arrives;
    /// an error envelope (the request was refused before anything ran) is returned as such.
    pub fn stream(
        &self,
        path: &str,
        body: &serde_json::Value,
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<(), ClientError> {
        use eventsource_stream::Eventsource;
        self.runtime.block_on(async {
            let mut sender = Self::connect(&self.socket).await?;
            let resp = sender
                .send_request(Self::request(Method::POST, path, Some(body)))
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if !resp.status().is_success() {
                return read_envelope(resp).await.map(drop);
            }
            let mut events = http_body_util::BodyDataStream::new(resp.into_body()).eventsource();
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| ClientError::Protocol(e.to_string()))?;
                on_event(&event.event, &event.data);
            }
            Ok(())
        })
    }
}

/// The envelope's `data` of a whole JSON answer, or its error.
async fn read_envelope(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<serde_json::Value, ClientError> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("bad answer ({status}): {e}")))?;
    envelope_data(status, value)
}

fn envelope_data(
    status: StatusCode,
    value: serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    if status.is_success() && value["success"] != false {
        return Ok(value
            .get("data")
            .cloned()
            .unwrap_or(serde_json::Value::Null));
    }
    let message = value["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the daemon answered {status}"));
    Err(ClientError::Api { status, message })
}
