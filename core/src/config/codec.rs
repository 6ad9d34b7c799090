//! The value rules of the core's keys. Each reads a file's native TOML value or the text of an
//! environment variable or a flag, so a key is checked by the same rule with the same message
//! wherever it was set. Sizes and durations are the [`ByteSize`] and [`TimeSpan`] every backend
//! reads.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Value;

use super::declare::Codec;
use super::{label_selector, parse_cidr};
use crate::units::{self, format_duration};
use crate::values::{ByteSize, TimeSpan};

/// A string's text, or the rule when the value is not a non-empty string (trimmed).
fn text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err("must be a non-empty string".to_owned()),
    }
}

/// `true` or `false`; as text also Go's spellings and yes/no ([`units::parse_bool`]).
pub struct Bool;

impl Codec for Bool {
    type Value = bool;
    fn describe() -> String {
        "boolean".to_owned()
    }
    fn placeholder() -> &'static str {
        "BOOL"
    }
    fn decode(value: Value) -> Result<bool, String> {
        match value {
            Value::Boolean(b) => Some(b),
            Value::String(s) => units::parse_bool(&s),
            _ => None,
        }
        .ok_or_else(|| "must be true or false".to_owned())
    }
    fn encode(value: &bool) -> Option<Value> {
        Some(Value::Boolean(*value))
    }
}

/// An integer from `MIN` to `MAX`, stored as `T`.
pub struct Int<T, const MIN: i64, const MAX: i64>(PhantomData<T>);

impl<T, const MIN: i64, const MAX: i64> Codec for Int<T, MIN, MAX>
where
    T: TryFrom<i64> + Copy,
    i64: TryFrom<T>,
{
    type Value = T;
    fn describe() -> String {
        format!("integer, {MIN} to {MAX}")
    }
    fn placeholder() -> &'static str {
        "N"
    }
    fn decode(value: Value) -> Result<T, String> {
        let rule = || format!("must be an integer from {MIN} to {MAX}");
        let n = match value {
            Value::Integer(i) => i,
            Value::String(s) => s.trim().parse().map_err(|_| rule())?,
            _ => return Err(rule()),
        };
        if !(MIN..=MAX).contains(&n) {
            return Err(rule());
        }
        T::try_from(n).map_err(|_| rule())
    }
    fn encode(value: &T) -> Option<Value> {
        i64::try_from(*value).ok().map(Value::Integer)
    }
}

/// A TCP port.
pub type Port = Int<u16, 1, 65535>;

/// A non-empty string (trimmed).
pub struct Text;

impl Codec for Text {
    type Value = String;
    fn describe() -> String {
        "string".to_owned()
    }
    fn placeholder() -> &'static str {
        "TEXT"
    }
    fn decode(value: Value) -> Result<String, String> {
        text(value)
    }
    fn encode(value: &String) -> Option<Value> {
        Some(Value::String(value.clone()))
    }
}

/// A DNS label: a Service, namespace or Lease name.
pub struct DnsLabel;

impl Codec for DnsLabel {
    type Value = String;
    fn describe() -> String {
        "DNS label".to_owned()
    }
    fn placeholder() -> &'static str {
        "NAME"
    }
    fn decode(value: Value) -> Result<String, String> {
        let value = text(value)?;
        let ok = value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if ok { Ok(value) } else { Err("must be a DNS label (lowercase letters, digits and '-', at most 63)".into()) }
    }
    fn encode(value: &String) -> Option<Value> {
        Some(Value::String(value.clone()))
    }
}

/// An absolute `http(s)://` URL ([`units::check_http_url`]), kept as written.
pub struct Url;

impl Codec for Url {
    type Value = String;
    fn describe() -> String {
        "http(s) URL".to_owned()
    }
    fn placeholder() -> &'static str {
        "URL"
    }
    fn decode(value: Value) -> Result<String, String> {
        let url = text(value)?;
        units::check_http_url(&url)?;
        Ok(url)
    }
    fn encode(value: &String) -> Option<Value> {
        Some(Value::String(value.clone()))
    }
}

/// A Kubernetes label selector ([`label_selector::problem`]).
pub struct Selector;

impl Codec for Selector {
    type Value = String;
    fn describe() -> String {
        "label selector".to_owned()
    }
    fn placeholder() -> &'static str {
        "SELECTOR"
    }
    fn decode(value: Value) -> Result<String, String> {
        let selector = text(value)?;
        match label_selector::problem(&selector) {
            None => Ok(selector),
            Some(problem) => Err(format!("is not a label selector: {problem}")),
        }
    }
    fn encode(value: &String) -> Option<Value> {
        Some(Value::String(value.clone()))
    }
}

/// An absolute path (a relative one would depend on the working directory).
pub struct AbsPath;

impl Codec for AbsPath {
    type Value = PathBuf;
    fn describe() -> String {
        "absolute path".to_owned()
    }
    fn placeholder() -> &'static str {
        "PATH"
    }
    fn decode(value: Value) -> Result<PathBuf, String> {
        let path = PathBuf::from(text(value)?);
        if path.is_absolute() { Ok(path) } else { Err("must be an absolute path".to_owned()) }
    }
    fn encode(value: &PathBuf) -> Option<Value> {
        Some(Value::String(value.display().to_string()))
    }
}

/// A [`TimeSpan`] of at least `MIN_MS` milliseconds.
pub struct Span<const MIN_MS: u64>;

impl<const MIN_MS: u64> Codec for Span<MIN_MS> {
    type Value = Duration;
    fn describe() -> String {
        match MIN_MS {
            0 => "duration".to_owned(),
            min => format!("duration, at least {}", format_duration(Duration::from_millis(min))),
        }
    }
    fn placeholder() -> &'static str {
        "DURATION"
    }
    fn decode(value: Value) -> Result<Duration, String> {
        let min = Duration::from_millis(MIN_MS);
        let span = match value {
            Value::String(_) | Value::Integer(_) => TimeSpan::deserialize(value).map_err(|e| e.message().to_owned())?,
            _ => return Err("must be a duration such as 30s or 1h30m".to_owned()),
        };
        if span.0 < min {
            return Err(format!("must be at least {}", format_duration(min)));
        }
        Ok(span.0)
    }
    fn encode(value: &Duration) -> Option<Value> {
        Value::try_from(TimeSpan(*value)).ok()
    }
}

/// A [`ByteSize`] of at least `MIN` bytes.
pub struct Size<const MIN: u64>;

impl<const MIN: u64> Codec for Size<MIN> {
    type Value = u64;
    fn describe() -> String {
        match MIN {
            0 => "byte size".to_owned(),
            min => format!("byte size, at least {}", units::format_size(min)),
        }
    }
    fn placeholder() -> &'static str {
        "SIZE"
    }
    fn decode(value: Value) -> Result<u64, String> {
        let size = match value {
            Value::String(_) | Value::Integer(_) => ByteSize::deserialize(value).map_err(|e| e.message().to_owned())?,
            _ => return Err("must be a byte size such as 64MiB".to_owned()),
        };
        if size.0 < MIN {
            return Err(format!("must be at least {MIN} bytes"));
        }
        Ok(size.0)
    }
    fn encode(value: &u64) -> Option<Value> {
        Value::try_from(ByteSize(*value)).ok()
    }
}

/// A list of CIDRs: a TOML array of strings, or one comma-separated string (environment). A
/// bare address is a single-address network.
pub struct Cidrs;

impl Codec for Cidrs {
    type Value = Vec<IpNet>;
    fn describe() -> String {
        "list of CIDRs".to_owned()
    }
    fn placeholder() -> &'static str {
        "CIDRS"
    }
    fn decode(value: Value) -> Result<Vec<IpNet>, String> {
        let rule = "must be a list of CIDRs such as [\"10.0.0.0/8\", \"fd00::/8\"]";
        let items: Vec<String> = match value {
            Value::String(s) => s.split(',').map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect(),
            Value::Array(values) => values
                .into_iter()
                .map(|v| v.as_str().map(|s| s.trim().to_owned()).ok_or_else(|| format!("{v} {rule}")))
                .collect::<Result<_, _>>()?,
            _ => return Err(rule.to_owned()),
        };
        items.iter().map(|item| parse_cidr(item).ok_or_else(|| format!("{item:?} {rule}"))).collect()
    }
    fn encode(value: &Vec<IpNet>) -> Option<Value> {
        Some(Value::Array(value.iter().map(|n| Value::String(n.to_string())).collect()))
    }
}

/// One of the names of an enum's variants (its serde form).
pub struct Choice<T>(PhantomData<T>);

impl<T: DeserializeOwned + Serialize + Choices> Codec for Choice<T> {
    type Value = T;
    fn describe() -> String {
        format!("one of {}", T::NAMES.join(", "))
    }
    fn placeholder() -> &'static str {
        "NAME"
    }
    fn decode(value: Value) -> Result<T, String> {
        let names = T::NAMES.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" or ");
        T::deserialize(value).map_err(|_| format!("must be {names}"))
    }
    fn encode(value: &T) -> Option<Value> {
        Value::try_from(value).ok()
    }
}

/// The names an enum read by [`Choice`] accepts.
pub trait Choices {
    const NAMES: &'static [&'static str];
}

/// An optional key read by `C`: unset by default, left out of the printed configuration.
pub struct Opt<C>(PhantomData<C>);

impl<C: Codec> Codec for Opt<C> {
    type Value = Option<C::Value>;
    fn describe() -> String {
        C::describe()
    }
    fn placeholder() -> &'static str {
        C::placeholder()
    }
    fn decode(value: Value) -> Result<Self::Value, String> {
        C::decode(value).map(Some)
    }
    fn encode(value: &Self::Value) -> Option<Value> {
        value.as_ref().and_then(C::encode)
    }
}
