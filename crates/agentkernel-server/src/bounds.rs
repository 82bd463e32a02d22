//! Bounds on what one request may ask for, beyond the engine's own checks: how long (TTLs,
//! extensions) and how many (environment entries, labels, files, batch commands); a path's rule
//! (and its length) is the engine's (`agentkernel_engine::check_path`), for MCP alike. Each is far above what a client needs and far below what could hurt the server;
//! going over one is a 400 that names the bound.

use crate::envelope::ApiError;
use std::time::Duration;

/// The longest TTL or extension: as far as the engine lets an expiry reach.
pub const MAX_TTL: Duration =
    Duration::from_secs(agentkernel_engine::metadata::MAX_TTL_DAYS as u64 * 86400);
/// Environment entries of one command or sandbox.
pub const MAX_ENV: usize = 1024;
/// Labels of one sandbox, or of one `?label=` filter.
pub const MAX_LABELS: usize = 64;
/// Files of one `POST /sandboxes/{name}/files`.
pub const MAX_FILES: usize = 1024;
/// Commands of one `POST /batch/run`.
pub const MAX_BATCH: usize = 64;

/// A duration field (`ttl`, `by`), at most [`MAX_TTL`].
pub fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    agentkernel_core::duration::parse_duration_at_most(text, MAX_TTL)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// At most `max` items in the list `field`.
pub fn count(field: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::bad_request(format!(
            "{field} has {n} entries: give at most {max}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document promises that every duration its pattern matches is accepted.
    #[test]
    fn the_largest_duration_the_schema_allows_is_within_the_bound() {
        assert_eq!(
            crate::schema::DURATION_PATTERN,
            r"^([1-9][0-9]{0,2}[smhd]){1,3}$"
        );
        let largest = duration("ttl", "999d999d999d").expect("within the bound");
        assert!(largest <= MAX_TTL);
        assert!(duration("ttl", "3651d").is_err());
    }
}
