//! `[storage.s3]` and the predecessor's `S3_*` environment: parsed, validated and redacted here,
//! because core knows no backend and hands each one its own table.
//!
//! Every field is read as a raw [`toml::Value`] rather than a typed serde field, so a wrong value
//! fails with the exact key, the value, where it came from and the rule, whatever its TOML type.
//! Unknown keys are still refused by serde (`deny_unknown_fields`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use externalsource_core::config::ConfigError;
use externalsource_core::registry::{BackendContext, BackendSettings, BuildError};
use externalsource_core::units::{format_duration, parse_duration};
use externalsource_core::{ObjectKey, Storage};

use crate::NAME;
use crate::storage::S3Storage;

/// Region used when none is configured; also what most S3-compatible servers expect.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Bound on one operation including its retries: long enough for a 64 MiB upload on a slow link,
/// short enough that a dead store surfaces as `Unavailable` before the reconcile gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A reachable store accepts a TCP connection in milliseconds; waiting longer only delays the error.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One retry: enough to ride over a dropped keep-alive connection, few enough that an outage is
/// reported quickly (the reconciler has its own backoff).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;

/// How consumers reach the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Flux downloads from the bucket (or `public_url`); the controller's artifact routes stay
    /// unmounted. Needs a bucket readable by Flux.
    Direct,
    /// The controller streams objects from the bucket through its own server, so Flux needs no
    /// S3 access and every replica can serve.
    Proxy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Proxy => "proxy",
        }
    }
}

/// Static credentials from the configuration; without them the standard AWS chain is used.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Validated settings of the s3 backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// Full endpoint URL (`scheme://host[:port]`, no trailing slash); `None` means AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Defaults to true when an endpoint is set,
    /// because S3-compatible servers (MinIO, SeaweedFS, Garage, Ceph) rarely have the wildcard DNS
    /// virtual-host style needs, and the predecessor always used path style; false on AWS.
    pub path_style: bool,
    /// Scheme used when `endpoint` has none (the predecessor's bare-host endpoints).
    pub use_ssl: bool,
    /// Key prefix inside the bucket, empty or ending in `/`.
    pub prefix: String,
    pub mode: Mode,
    /// Base URL of direct-mode object URLs (a CDN or gateway in front of the bucket), no trailing
    /// slash; the object URL is `{public_url}/{prefix}{key}`.
    pub public_url: Option<String>,
    /// Bound on one operation including retries, until the response headers arrive.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub credentials: Option<StaticCredentials>,
}

impl S3Settings {
    /// Settings with defaults for everything but the bucket (for tests and embedding).
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: DEFAULT_REGION.to_owned(),
            endpoint: None,
            path_style: false,
            use_ssl: true,
            prefix: String::new(),
            mode: Mode::Direct,
            public_url: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            credentials: None,
        }
    }
}

/// The raw table; every field is checked by hand in [`parse`].
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    bucket: Option<toml::Value>,
    region: Option<toml::Value>,
    endpoint: Option<toml::Value>,
    path_style: Option<toml::Value>,
    use_ssl: Option<toml::Value>,
    prefix: Option<toml::Value>,
    mode: Option<toml::Value>,
    public_url: Option<toml::Value>,
    timeout: Option<toml::Value>,
    connect_timeout: Option<toml::Value>,
    max_attempts: Option<toml::Value>,
    access_key_id: Option<toml::Value>,
    secret_access_key: Option<toml::Value>,
}

/// One setting's value as found, with its origin for error messages.
struct Found {
    field: &'static str,
    text: String,
    source: String,
    /// The TOML value when it came from the file, to accept native booleans and integers.
    toml: Option<toml::Value>,
}

impl Found {
    fn invalid(&self, rule: impl Into<String>) -> ConfigError {
        // Secrets never appear in error messages, not even when they are the invalid value.
        let shown = if self.field == "secret_access_key" { "<redacted>".to_owned() } else { self.text.clone() };
        ConfigError::Invalid {
            key: format!("storage.{NAME}.{}", self.field),
            value: format!("{shown:?} (from {})", self.source),
            rule: rule.into(),
        }
    }
}

/// Environment variables, the predecessor's names first; the environment overrides the file.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("S3_BUCKET", "bucket"),
    ("S3_REGION", "region"),
    ("S3_ENDPOINT", "endpoint"),
    ("S3_PATH_STYLE", "path_style"),
    ("S3_USE_SSL", "use_ssl"),
    ("S3_PREFIX", "prefix"),
    ("S3_MODE", "mode"),
    ("S3_PUBLIC_URL", "public_url"),
    ("S3_TIMEOUT", "timeout"),
    ("S3_CONNECT_TIMEOUT", "connect_timeout"),
    ("S3_MAX_ATTEMPTS", "max_attempts"),
    ("S3_ACCESS_KEY_ID", "access_key_id"),
    ("S3_SECRET_ACCESS_KEY", "secret_access_key"),
];

struct Inputs<'a> {
    raw: RawSettings,
    ctx: &'a BackendContext<'a>,
}

impl Inputs<'_> {
    fn file_value(&self, field: &str) -> Option<&toml::Value> {
        let r = &self.raw;
        match field {
            "bucket" => r.bucket.as_ref(),
            "region" => r.region.as_ref(),
            "endpoint" => r.endpoint.as_ref(),
            "path_style" => r.path_style.as_ref(),
            "use_ssl" => r.use_ssl.as_ref(),
            "prefix" => r.prefix.as_ref(),
            "mode" => r.mode.as_ref(),
            "public_url" => r.public_url.as_ref(),
            "timeout" => r.timeout.as_ref(),
            "connect_timeout" => r.connect_timeout.as_ref(),
            "max_attempts" => r.max_attempts.as_ref(),
            "access_key_id" => r.access_key_id.as_ref(),
            "secret_access_key" => r.secret_access_key.as_ref(),
            _ => None,
        }
    }

    /// The value of a setting: environment first, then the file; `None` when neither has it.
    fn get(&self, field: &'static str) -> Option<Found> {
        if let Some((var, _)) = ENV_VARS.iter().find(|(_, f)| *f == field)
            && let Some(v) = self.ctx.env.get(var)
        {
            return Some(Found { field, text: v.trim().to_owned(), source: format!("env {var}"), toml: None });
        }
        let value = self.file_value(field)?;
        let text = match value {
            toml::Value::String(s) => s.trim().to_owned(),
            other => other.to_string(),
        };
        Some(Found { field, text, source: "file".to_owned(), toml: Some(value.clone()) })
    }

    fn string(&self, field: &'static str) -> Result<Option<(String, Found)>, ConfigError> {
        let Some(found) = self.get(field) else { return Ok(None) };
        match &found.toml {
            Some(toml::Value::String(_)) | None if !found.text.is_empty() => Ok(Some((found.text.clone(), found))),
            Some(toml::Value::String(_)) | None => Err(found.invalid("must be a non-empty string")),
            Some(_) => Err(found.invalid("must be a string")),
        }
    }

    fn bool(&self, field: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(found) = self.get(field) else { return Ok(None) };
        if let Some(toml::Value::Boolean(b)) = found.toml {
            return Ok(Some(b));
        }
        if matches!(found.toml, Some(ref v) if !v.is_str()) {
            return Err(found.invalid("must be true or false"));
        }
        // The one spelling rule of every boolean setting (Go's ParseBool, plus yes/no).
        externalsource_core::units::parse_bool(&found.text)
            .map(Some)
            .ok_or_else(|| found.invalid("must be true or false"))
    }

    fn duration(&self, field: &'static str, default: Duration, min: Duration) -> Result<Duration, ConfigError> {
        let Some(found) = self.get(field) else { return Ok(default) };
        if matches!(found.toml, Some(ref v) if !v.is_str()) {
            return Err(found.invalid("must be a duration string such as \"30s\""));
        }
        let value = parse_duration(&found.text).map_err(|e| found.invalid(e.to_string()))?;
        if value < min {
            return Err(found.invalid(format!("must be at least {}", format_duration(min))));
        }
        Ok(value)
    }

    fn int_in(&self, field: &'static str, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
        let Some(found) = self.get(field) else { return Ok(default) };
        let rule = format!("must be an integer from {min} to {max}");
        let value: i64 = match found.toml {
            Some(toml::Value::Integer(i)) => i,
            Some(ref v) if !v.is_str() => return Err(found.invalid(rule)),
            _ => found.text.parse().map_err(|_| found.invalid(rule.clone()))?,
        };
        match u32::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(found.invalid(rule)),
        }
    }
}

/// Parses and validates `[storage.s3]` plus the `S3_*` environment.
pub(crate) fn parse(ctx: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
    Ok(Box::new(parse_settings(ctx)?))
}

/// Parses `[storage.s3]` and the `S3_*` environment into the concrete settings type (the
/// registered parser boxes this), for tests and embedding.
pub fn parse_settings(ctx: &BackendContext<'_>) -> Result<S3Settings, ConfigError> {
    let raw: RawSettings = ctx.deserialize(NAME)?;
    let inputs = Inputs { raw, ctx };

    let Some((bucket, found)) = inputs.string("bucket")? else {
        return Err(ConfigError::Invalid {
            key: format!("storage.{NAME}.bucket"),
            value: "\"\" (from default)".to_owned(),
            rule: "is required: set bucket in [storage.s3] or S3_BUCKET".to_owned(),
        });
    };
    if !valid_bucket(&bucket) {
        return Err(found.invalid(
            "must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a \
             letter or digit",
        ));
    }

    let region = match inputs.string("region")? {
        None => DEFAULT_REGION.to_owned(),
        Some((r, found)) => {
            if !r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(found.invalid("must be a region name of lowercase letters, digits and '-'"));
            }
            r
        }
    };

    let use_ssl_explicit = inputs.bool("use_ssl")?;
    let use_ssl = use_ssl_explicit.unwrap_or(true);
    let endpoint = match inputs.string("endpoint")? {
        None => None,
        Some((e, found)) => {
            Some(normalise_endpoint(&e, use_ssl_explicit, use_ssl).map_err(|rule| found.invalid(rule))?)
        }
    };
    let path_style = inputs.bool("path_style")?.unwrap_or(endpoint.is_some());

    let prefix = match inputs.string("prefix")? {
        None => String::new(),
        Some((p, found)) => {
            let trimmed = p.trim_end_matches('/');
            ObjectKey::parse(trimmed).map_err(|e| found.invalid(format!("must be a relative key prefix: {e}")))?;
            format!("{trimmed}/")
        }
    };

    let mode = match inputs.string("mode")? {
        None => Mode::Direct,
        Some((m, found)) => match m.as_str() {
            "direct" => Mode::Direct,
            "proxy" => Mode::Proxy,
            _ => return Err(found.invalid("must be \"direct\" or \"proxy\"")),
        },
    };

    let public_url = match inputs.string("public_url")? {
        None => None,
        Some((u, found)) => Some(normalise_url(&u).map_err(|rule| found.invalid(rule))?),
    };

    let timeout = inputs.duration("timeout", DEFAULT_TIMEOUT, Duration::from_millis(100))?;
    let connect_timeout = inputs.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT, Duration::from_millis(10))?;
    if connect_timeout > timeout {
        return Err(ConfigError::Invalid {
            key: format!("storage.{NAME}.connect_timeout"),
            value: format!("{:?}", format_duration(connect_timeout)),
            rule: format!("must not exceed storage.{NAME}.timeout ({})", format_duration(timeout)),
        });
    }
    let max_attempts = inputs.int_in("max_attempts", DEFAULT_MAX_ATTEMPTS, 1, 10)?;

    let credentials = match (inputs.string("access_key_id")?, inputs.string("secret_access_key")?) {
        (None, None) => None,
        (Some((access_key_id, _)), Some((secret_access_key, _))) => {
            Some(StaticCredentials { access_key_id, secret_access_key })
        }
        (Some((_, found)), None) => {
            return Err(found.invalid("needs secret_access_key (S3_SECRET_ACCESS_KEY) as well"));
        }
        (None, Some((_, found))) => return Err(found.invalid("needs access_key_id (S3_ACCESS_KEY_ID) as well")),
    };

    Ok(S3Settings {
        bucket,
        region,
        endpoint,
        path_style,
        use_ssl,
        prefix,
        mode,
        public_url,
        timeout,
        connect_timeout,
        max_attempts,
        credentials,
    })
}

/// AWS's bucket naming rules (the strict, DNS-compatible ones every S3 server accepts).
fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&b.len())
        && bytes.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !b.contains("..")
}

/// Adds a scheme to a bare host (`https` unless `use_ssl` is false, as in the predecessor), and
/// refuses a `use_ssl` set explicitly against the scheme given, which would otherwise be ignored.
fn normalise_endpoint(input: &str, use_ssl_explicit: Option<bool>, use_ssl: bool) -> Result<String, String> {
    let has_scheme = input.contains("://");
    if has_scheme && let Some(explicit) = use_ssl_explicit {
        let https = input.starts_with("https://");
        if explicit != https {
            return Err(format!(
                "has scheme {} but use_ssl is {explicit}; drop use_ssl or make them agree",
                if https { "https" } else { "http" }
            ));
        }
    }
    let url =
        if has_scheme { input.to_owned() } else { format!("{}://{input}", if use_ssl { "https" } else { "http" }) };
    let url = normalise_url(&url)?;
    if let Some((_, rest)) = url.split_once("://")
        && rest.contains('/')
    {
        return Err("must be scheme://host[:port] without a path".to_owned());
    }
    Ok(url)
}

/// An absolute http(s) URL without query, fragment or trailing slash.
fn normalise_url(input: &str) -> Result<String, String> {
    const RULE: &str = "must be an absolute http:// or https:// URL without query or fragment";
    let trimmed = input.trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://")).ok_or(RULE)?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || trimmed.contains(['?', '#', ' ', '\\']) || host.contains('@') {
        return Err(RULE.to_owned());
    }
    Ok(trimmed.to_owned())
}

#[async_trait]
impl BackendSettings for S3Settings {
    fn redacted(&self) -> toml::Table {
        use toml::Value as V;
        let mut t = toml::Table::new();
        let s = |x: &str| V::String(x.to_owned());
        t.insert("bucket".into(), s(&self.bucket));
        t.insert("region".into(), s(&self.region));
        if let Some(e) = &self.endpoint {
            t.insert("endpoint".into(), s(e));
        }
        t.insert("path_style".into(), V::Boolean(self.path_style));
        t.insert("use_ssl".into(), V::Boolean(self.use_ssl));
        if !self.prefix.is_empty() {
            t.insert("prefix".into(), s(&self.prefix));
        }
        t.insert("mode".into(), s(self.mode.as_str()));
        if let Some(u) = &self.public_url {
            t.insert("public_url".into(), s(u));
        }
        t.insert("timeout".into(), s(&format_duration(self.timeout)));
        t.insert("connect_timeout".into(), s(&format_duration(self.connect_timeout)));
        t.insert("max_attempts".into(), V::Integer(self.max_attempts.into()));
        if let Some(c) = &self.credentials {
            t.insert("access_key_id".into(), s(&c.access_key_id));
            t.insert("secret_access_key".into(), s("<redacted>"));
        }
        t
    }

    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, BuildError> {
        Ok(Arc::new(S3Storage::new(self.clone(), base_url).await?))
    }
}
