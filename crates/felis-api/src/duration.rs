//! Go-style durations (`90s`, `5m`, `1h0m0s`, `500ms`) as Calico writes them.

use crate::error::ValidationError;

/// Parses a Go duration into seconds (fractional). `"0"` is zero.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let bad = || format!("invalid duration {s:?}: expected e.g. \"90s\", \"5m\", \"1h30m\"");
    if t == "0" {
        return Ok(0.0);
    }
    let (negative, mut rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Ok(if negative { -total } else { total })
}

/// Checks an optional duration field.
pub(crate) fn check(path: &str, value: Option<&str>) -> Result<(), ValidationError> {
    match value {
        Some(v) => parse_duration(v)
            .map(|_| ())
            .map_err(|r| ValidationError::new(path, r)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("1h0m0s"), Ok(3600.0));
        assert_eq!(parse_duration("1m30s"), Ok(90.0));
        assert_eq!(parse_duration("500ms"), Ok(0.5));
        assert_eq!(parse_duration("0"), Ok(0.0));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
