//! Go-style durations (`30s`, `1h30m`, `1.5h`), byte sizes (`64MiB`, `1GB`, `1048576`) and
//! booleans, as the core and every backend read them from files and the environment.
//!
//! The duration syntax is the one of the ExternalSource CRD's `interval` pattern, so the same
//! parser serves the API and the configuration file.

use std::time::Duration;

/// Why a duration or size was refused; the caller adds the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a duration: expected a sequence of <number><unit> with unit ms, s, m or h (e.g. 30s, 1h30m)")]
    Duration(String),
    #[error("{0:?} is not a byte size: expected an integer with an optional unit B, KB, MB, GB, KiB, MiB or GiB")]
    Size(String),
}

/// A boolean as written in a file or an environment variable: Go's `strconv.ParseBool`
/// spellings (which the predecessor's variables used) and yes/no, in any case.
pub fn parse_bool(input: &str) -> Option<bool> {
    match input.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Some(true),
        "false" | "f" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parses the CRD's `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$` syntax.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(input.to_owned());
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        let (seconds, tail) = if let Some(t) = tail.strip_prefix("ms") {
            (value / 1000.0, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (value, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (value * 60.0, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (value * 3600.0, t)
        } else {
            return Err(err());
        };
        total += seconds;
        rest = tail;
    }
    if !total.is_finite() || total > u32::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Renders a duration in the same syntax, for `--print-config` and status messages.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

/// Parses a byte size; binary (KiB) and decimal (KB) units are both accepted.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(input.to_owned());
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: u64 = number.parse().map_err(|_| err())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "KiB" | "Ki" => 1024,
        "MiB" | "Mi" => 1024_u64.pow(2),
        "GiB" | "Gi" => 1024_u64.pow(3),
        _ => return Err(err()),
    };
    value.checked_mul(factor).ok_or_else(err)
}

/// Renders a byte size with the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, factor) in [("GiB", 1024_u64.pow(3)), ("MiB", 1024_u64.pow(2)), ("KiB", 1024)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// The rule [`check_http_url`] enforces, for error messages.
pub const HTTP_URL_RULE: &str =
    "must be an absolute http:// or https:// URL with a host and no credentials, query or fragment";

/// Checks an absolute `http(s)://host[:port][/path]` URL without credentials, query or fragment:
/// the one URL rule of the configuration and every backend's settings.
pub fn check_http_url(input: &str) -> Result<(), &'static str> {
    let rest = input.strip_prefix("http://").or_else(|| input.strip_prefix("https://")).ok_or(HTTP_URL_RULE)?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || input.contains(['?', '#', ' ', '\\']) {
        return Err(HTTP_URL_RULE);
    }
    Ok(())
}

/// [`check_http_url`], then trailing slashes dropped: the form of a base that keys are appended to.
pub fn parse_http_url(input: &str) -> Result<String, String> {
    let trimmed = input.trim_end_matches('/');
    check_http_url(trimmed)?;
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {

    #[test]
    fn booleans_take_gos_spellings_and_yes_no_in_any_case() {
        for t in ["true", "TRUE", "True", "t", "T", "1", "yes", "YES", " Yes "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "FALSE", "f", "F", "0", "no", "No"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "2", "on", "y", "truth"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "10", "s", "1d", "1.s", "-1s", "1h 30m", ".5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(format_duration(Duration::from_millis(5_400_250)), "1h30m250ms");
        assert_eq!(parse_duration(&format_duration(Duration::from_secs(61))), Ok(Duration::from_secs(61)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn http_urls_are_absolute_without_credentials_query_or_fragment() {
        assert_eq!(parse_http_url("https://h.example:8443/base//").as_deref(), Ok("https://h.example:8443/base"));
        assert_eq!(check_http_url("http://nc.flux-system.svc./"), Ok(()));
        for bad in [
            "ftp://h",
            "http://",
            "http:///x",
            "https://u:p@h",
            "http://h/?q",
            "http://h/#f",
            "h.example",
            "http://h/a b",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
