use crate::CoreError;
use std::time::Duration;

/// Parses durations the way the CLI documents them: `90s`, `30m`, `1h`, `3d`, or combinations
/// such as `1h30m`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, CoreError> {
    let err = || CoreError::InvalidDuration(text.to_string());
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
    }

    #[test]
    fn rejects_garbage() {
        for t in ["", "m", "1x", "1h5", "0m", "-1h"] {
            assert!(parse_duration(t).is_err(), "{t}");
        }
    }
}
