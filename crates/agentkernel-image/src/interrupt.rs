//! Stopping image preparation when the user asks for it (Ctrl-C, `kill`).
//!
//! The CLI catches SIGINT and SIGTERM itself (to pass them to the sandboxed command), so a
//! pull or an unpack would otherwise carry on regardless. Its signal handlers call [`request`],
//! one atomic store and so async-signal-safe; downloads and unpacking check the request between
//! chunks and stop with [`ImageError::Interrupted`], which unwinds normally: a staging directory
//! is removed on the way out, a partial download is kept (unlocked) for the next pull to resume.
//! A process that never calls [`request`] (the HTTP server, the daemon) is never interrupted.

use crate::ImageError;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The first signal that asked to stop, or 0.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// How often a download waiting on the network looks at the request.
const POLL: Duration = Duration::from_millis(50);

/// Asks image preparation in this process to stop. Async-signal-safe: call it from a signal
/// handler with the signal's number.
pub fn request(signal: i32) {
    let _ = REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// The signal that asked to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Fails once a stop was requested.
pub(crate) fn check() -> Result<(), ImageError> {
    match requested() {
        Some(signal) => Err(ImageError::Interrupted { signal }),
        None => Ok(()),
    }
}

/// Completes (with the error to return) once a stop is requested: race it against work that
/// may wait on the network for a long time.
pub async fn stopped() -> ImageError {
    loop {
        if let Some(signal) = requested() {
            return ImageError::Interrupted { signal };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `work` until it completes or a stop is requested, whichever comes first; the work is
/// dropped (its files closed, their locks released) when it loses.
pub async fn until_stopped<T, E: From<ImageError>>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use futures_util::future::{Either, select};
    let work = std::pin::pin!(work);
    let stop = std::pin::pin!(stopped());
    match select(work, stop).await {
        Either::Left((result, _)) => result,
        Either::Right((interrupted, _)) => Err(interrupted.into()),
    }
}

/// `SIGINT`, `SIGTERM`, … for messages.
pub(crate) fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".to_string(),
        2 => "SIGINT (Ctrl-C)".to_string(),
        3 => "SIGQUIT".to_string(),
        15 => "SIGTERM".to_string(),
        n => format!("signal {n}"),
    }
}
