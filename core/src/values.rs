//! Value types for a backend's serde settings: each one parses with the shared parsers of
//! [`units`], so a size, a duration or a URL reads the same in every backend's
//! table, in its environment variables and in the core configuration; and [`Secret`] keeps its
//! value out of logs, `--print-config` and error messages.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::units;

/// A byte count, written as an integer or with a unit (`64MiB`, `1GB`); printed with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => u64::try_from(n).map(Self).map_err(|_| de::Error::custom("must not be negative")),
            IntOrText::Text(s) => units::parse_size(&s).map(Self).map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_size(self.0))
    }
}

/// A duration in Go's syntax (`30s`, `1h30m`), or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan(pub Duration);

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)? {
            IntOrText::Int(n) => u64::try_from(n)
                .map(|s| Self(Duration::from_secs(s)))
                .map_err(|_| de::Error::custom("must not be negative")),
            IntOrText::Text(s) => units::parse_duration(&s).map(Self).map_err(de::Error::custom),
        }
    }
}

impl Serialize for TimeSpan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_duration(self.0))
    }
}

/// An absolute `http://` or `https://` URL without query, fragment, credentials or trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Validates and normalises (drops trailing slashes); the error is the rule broken.
    pub fn parse(input: &str) -> Result<Self, String> {
        units::parse_http_url(input).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A credential: printed and serialized as `<redacted>`. Any scalar is read as its text, so a
/// secret never fails to parse and is never quoted in an error.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T = String>(T);

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Self(match Scalar::deserialize(d).map_err(|_| de::Error::custom("must be a string"))? {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }))
    }
}

/// What a [`Secret`] shows instead of its value.
pub const REDACTED: &str = "<redacted>";

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that needs it (a client's credentials).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// TOML gives integers; the environment and quoted values give text.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(i64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Sample {
        size: ByteSize,
        wait: TimeSpan,
        url: HttpUrl,
        password: Secret,
    }

    #[test]
    fn values_parse_from_either_form_and_print_canonically_with_secrets_redacted() {
        let s: Sample = toml::from_str(
            "size = \"2MiB\"\nwait = 90\nurl = \"https://dav.example.com/store/\"\npassword = \"hunter2\"",
        )
        .unwrap();
        assert_eq!((s.size, s.wait), (ByteSize(2 << 20), TimeSpan(Duration::from_secs(90))));
        assert_eq!(s.url.as_str(), "https://dav.example.com/store");
        assert_eq!(s.password.expose(), "hunter2");
        let printed = toml::to_string(&s).unwrap();
        assert!(printed.contains("size = \"2MiB\"") && printed.contains("wait = \"1m30s\""), "{printed}");
        assert!(!printed.contains("hunter2") && !format!("{s:?}").contains("hunter2"), "{printed}");
    }

    #[test]
    fn bad_values_say_the_rule() {
        let err = toml::from_str::<Sample>("size = \"lots\"\nwait = 1\nurl = \"http://x\"\npassword = \"\"");
        assert!(err.unwrap_err().to_string().contains("is not a byte size"));
        let err = toml::from_str::<Sample>("size = 1\nwait = 1\nurl = \"ftp://x\"\npassword = \"\"");
        assert!(err.unwrap_err().to_string().contains("http://"));
        let err = toml::from_str::<Sample>("size = -1\nwait = 1\nurl = \"http://x\"\npassword = \"\"");
        assert!(err.unwrap_err().to_string().contains("negative"));
    }
}
