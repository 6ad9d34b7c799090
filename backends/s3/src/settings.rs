//! `[storage.s3]` and the predecessor's `S3_*` environment: [`S3Config`] is the table as core
//! reads it (serde, environment over file, secrets redacted when printed); [`S3Settings`] is
//! what the storage runs with, resolved and validated from it.

use std::time::Duration;

use externalsource_core::ObjectKey;
use externalsource_core::backend::{EnvVar, HttpUrl, Invalid, Secret, TimeSpan};
use externalsource_core::units::format_duration;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Flux downloads from the bucket (or `public_url`); the controller's artifact routes stay
    /// unmounted. Needs a bucket readable by Flux.
    #[default]
    Direct,
    /// The controller streams objects from the bucket through its own server, so Flux needs no
    /// S3 access and every replica can serve.
    Proxy,
}

/// Environment variables, the predecessor's names; the environment overrides the file.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar::text("S3_BUCKET", "bucket"),
    EnvVar::text("S3_REGION", "region"),
    EnvVar::text("S3_ENDPOINT", "endpoint"),
    EnvVar::bool("S3_PATH_STYLE", "path_style"),
    EnvVar::bool("S3_USE_SSL", "use_ssl"),
    EnvVar::text("S3_PREFIX", "prefix"),
    EnvVar::text("S3_MODE", "mode"),
    EnvVar::text("S3_PUBLIC_URL", "public_url"),
    EnvVar::text("S3_TIMEOUT", "timeout"),
    EnvVar::text("S3_CONNECT_TIMEOUT", "connect_timeout"),
    EnvVar::integer("S3_MAX_ATTEMPTS", "max_attempts"),
    EnvVar::text("S3_ACCESS_KEY_ID", "access_key_id"),
    EnvVar::text("S3_SECRET_ACCESS_KEY", "secret_access_key"),
];

/// `[storage.s3]` as written (see the crate documentation for each key).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub use_ssl: Option<bool>,
    pub prefix: Option<String>,
    pub mode: Mode,
    pub public_url: Option<HttpUrl>,
    pub timeout: TimeSpan,
    pub connect_timeout: TimeSpan,
    pub max_attempts: u32,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: DEFAULT_REGION.to_owned(),
            endpoint: None,
            path_style: None,
            use_ssl: None,
            prefix: None,
            mode: Mode::Direct,
            public_url: None,
            timeout: TimeSpan(DEFAULT_TIMEOUT),
            connect_timeout: TimeSpan(DEFAULT_CONNECT_TIMEOUT),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// Static credentials from the configuration; without them the standard AWS chain is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// What the storage runs with.
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
            prefix: String::new(),
            mode: Mode::Direct,
            public_url: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            credentials: None,
        }
    }

    /// Validates the table and resolves what depends on several keys (an endpoint's scheme, the
    /// addressing style, the prefix's form).
    pub fn resolve(c: &S3Config) -> Result<Self, Invalid> {
        // In the order the keys are documented, so the first problem reported is the first key.
        let bucket = checked_bucket(&c.bucket)?;
        let region = checked_region(&c.region)?;
        let endpoint = match c.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(e) => Some(
                normalise_endpoint(e, c.use_ssl, c.use_ssl.unwrap_or(true))
                    .map_err(|rule| Invalid::new("endpoint", e, rule))?,
            ),
        };
        let prefix = checked_prefix(c.prefix.as_deref())?;
        check_timeouts(c.timeout.0, c.connect_timeout.0)?;
        if !(1..=10).contains(&c.max_attempts) {
            return Err(Invalid::new("max_attempts", c.max_attempts, "must be an integer from 1 to 10"));
        }
        Ok(Self {
            bucket,
            region,
            path_style: c.path_style.unwrap_or(endpoint.is_some()),
            endpoint,
            prefix,
            mode: c.mode,
            public_url: c.public_url.as_ref().map(|u| u.as_str().to_owned()),
            timeout: c.timeout.0,
            connect_timeout: c.connect_timeout.0,
            max_attempts: c.max_attempts,
            credentials: static_credentials(c)?,
        })
    }
}

fn checked_bucket(raw: &str) -> Result<String, Invalid> {
    let bucket = raw.trim().to_owned();
    if bucket.is_empty() {
        return Err(Invalid::new("bucket", "", "is required: set bucket in [storage.s3] or S3_BUCKET"));
    }
    if !valid_bucket(&bucket) {
        return Err(Invalid::new(
            "bucket",
            &bucket,
            "must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending \
             with a letter or digit",
        ));
    }
    Ok(bucket)
}

fn checked_region(region: &str) -> Result<String, Invalid> {
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(Invalid::new("region", region, "must be a region name of lowercase letters, digits and '-'"));
    }
    Ok(region.to_owned())
}

/// The key prefix with one trailing `/`, or empty.
fn checked_prefix(raw: Option<&str>) -> Result<String, Invalid> {
    match raw.map(|p| p.trim().trim_end_matches('/')).filter(|p| !p.is_empty()) {
        None => Ok(String::new()),
        Some(p) => {
            ObjectKey::parse(p)
                .map_err(|e| Invalid::new("prefix", p, format!("must be a relative key prefix: {e}")))?;
            Ok(format!("{p}/"))
        }
    }
}

fn check_timeouts(timeout: Duration, connect_timeout: Duration) -> Result<(), Invalid> {
    for (key, value, min) in [
        ("timeout", timeout, Duration::from_millis(100)),
        ("connect_timeout", connect_timeout, Duration::from_millis(10)),
    ] {
        if value < min {
            return Err(Invalid::new(
                key,
                format_duration(value),
                format!("must be at least {}", format_duration(min)),
            ));
        }
    }
    if connect_timeout > timeout {
        let rule = format!("must not exceed storage.s3.timeout ({})", format_duration(timeout));
        return Err(Invalid::new("connect_timeout", format_duration(connect_timeout), rule));
    }
    Ok(())
}

/// Both keys or neither: half a key pair is a mistake, not a request for the default chain.
fn static_credentials(c: &S3Config) -> Result<Option<StaticCredentials>, Invalid> {
    match (&c.access_key_id, &c.secret_access_key) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => {
            Ok(Some(StaticCredentials { access_key_id: id.clone(), secret_access_key: secret.clone() }))
        }
        (Some(id), None) => {
            Err(Invalid::new("access_key_id", id, "needs secret_access_key (S3_SECRET_ACCESS_KEY) as well"))
        }
        (None, Some(_)) => Err(Invalid::new("secret_access_key", "", "needs access_key_id (S3_ACCESS_KEY_ID) as well")),
    }
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
    let url = externalsource_core::units::parse_http_url(&url)?;
    if let Some((_, rest)) = url.split_once("://")
        && rest.contains('/')
    {
        return Err("must be scheme://host[:port] without a path".to_owned());
    }
    Ok(url)
}
