//! Durations as the CLI, the config and the HTTP API write them (`90s`, `30m`, `1h30m`, `3d`),
//! bounded: nothing agentkernel waits for or keeps lies further away than [`MAX_DURATION`], so
//! adding a parsed duration to a clock can never overflow.

use crate::CoreError;
use std::time::Duration;

/// The longest duration [`parse_duration`] accepts: ten years (as far as a sandbox's TTL may
/// reach). Callers with a tighter bound use [`parse_duration_at_most`].
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// Parses durations the way the CLI documents them: `90s`, `30m`, `1h`, `3d`, or combinations
/// such as `1h30m`. A bare number is seconds. At most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, CoreError> {
    parse_duration_at_most(text, MAX_DURATION)
}

/// [`parse_duration`], refusing anything longer than `max` with a message that says the bound.
pub fn parse_duration_at_most(text: &str, max: Duration) -> Result<Duration, CoreError> {
    let parsed = parse_unbounded(text)?;
    if parsed > max.min(MAX_DURATION) {
        return Err(CoreError::DurationTooLong {
            text: text.trim().chars().take(64).collect(),
            max: describe(max.min(MAX_DURATION)),
        });
    }
    Ok(parsed)
}

/// `max` as the largest whole unit that writes it: `3650d`, `24h`, `90s`.
fn describe(max: Duration) -> String {
    let secs = max.as_secs();
    match secs {
        s if s > 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn parse_unbounded(text: &str) -> Result<Duration, CoreError> {
    let err = || CoreError::InvalidDuration(text.chars().take(64).collect());
    let text = text.trim();
    if text.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(err()),
        };
        let n: u64 = number.parse().map_err(|_| err())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
    }

    #[test]
    fn rejects_garbage() {
        for t in ["", "m", "1x", "1h5", "0m", "-1h", "1.5h", "NaN", "1e9s"] {
            assert!(
                matches!(parse_duration(t), Err(CoreError::InvalidDuration(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn rejects_what_is_longer_than_the_bound() {
        for t in ["3651d", "999999999999d", "18446744073709551615", "3650d1s"] {
            let e = parse_duration(t).expect_err(t);
            assert!(
                matches!(&e, CoreError::DurationTooLong { max, .. } if max == "3650d"),
                "{t}: {e}"
            );
        }
        // Past u64 seconds: still an error, never a wrapped or panicking sum.
        assert!(parse_duration("99999999999999999999999d").is_err());
        let e = parse_duration_at_most("25h", Duration::from_secs(24 * 3600)).expect_err("25h");
        assert_eq!(
            e.to_string(),
            "duration \"25h\" is longer than 24h: give at most 24h"
        );
        assert_eq!(
            parse_duration_at_most("24h", Duration::from_secs(24 * 3600)),
            Ok(Duration::from_secs(24 * 3600))
        );
    }
}
