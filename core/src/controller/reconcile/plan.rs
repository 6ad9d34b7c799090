//! Turns a spec into a validated fetch plan, or a configuration problem that names the field.
//!
//! Configuration problems are not retried: the object waits for a spec or Secret change.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use crate::config::FetchConfig;
use crate::controller::api::{ExternalSourceSpec, GeneratorType, PayloadFormat};
use crate::controller::conditions::Reason;
use crate::controller::hooks::spec::{HookDefaults, HookPlan};
use crate::controller::outcome::Outcome;
use crate::controller::reconcile::pages::spec::Pagination;
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::receiver::spec::{self as receiver, ReceiverPlan};
use crate::controller::reconcile::scope::Scope;
use crate::controller::reconcile::validate::rules::Rules;
use crate::controller::reconcile::workload_identity::spec::{self as workload_identity, WorkloadIdentity};
use crate::controller::upstream::https;
use crate::controller::upstream::redact::redact_url;
use crate::package::DestinationPath;
use crate::package::archive::Layout;
use crate::units::{format_duration, parse_duration, parse_size};

/// The first step: a suspended source ends here (nothing is fetched, the last artifact stays
/// published).
#[allow(
    clippy::result_large_err,
    reason = "an outcome is how a step ends a reconcile, once per reconcile: boxing it buys nothing"
)]
pub fn unless_suspended(scope: &Scope<'_>) -> Result<(), Outcome> {
    match scope.source.spec.suspend {
        Some(true) => Err(Outcome::Suspended),
        _ => Ok(()),
    }
}

/// The plan step: the spec, validated against the operator's defaults and limits
/// (`Settings::defaults`). A problem stalls the source until its spec changes.
#[allow(
    clippy::result_large_err,
    reason = "an outcome is how a step ends a reconcile, once per reconcile: boxing it buys nothing"
)]
pub fn plan(scope: &Scope<'_>, defaults: &Defaults) -> Result<Plan, Outcome> {
    Plan::from_spec(&scope.source.spec, defaults)
        .map_err(|problem| Outcome::Stalled { problem, recheck_at_interval: false })
}

/// Default `destinationPath` (the predecessor's).
pub const DEFAULT_DESTINATION: &str = "data";

/// Controller-wide defaults a plan falls back to.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub min_interval: Duration,
    pub timeout: Duration,
    /// The longest `spec.timeout` accepted (`fetch.max_timeout`).
    pub max_timeout: Duration,
    pub max_size: u64,
    /// `[hooks]`: whether an executor runs `spec.hooks`, and their timeouts.
    pub hooks: HookDefaults,
    /// `fetch.workload_identity`: whether `serviceAccountName` is honoured.
    pub workload_identity: bool,
    /// `fetch.require_https`: a plain `http://` source URL is a configuration problem.
    pub require_https: bool,
    /// `fetch.max_pages`: the most pages a paged source may ask for.
    pub max_pages: u32,
}

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: Url,
    pub method: Method,
    pub interval: Duration,
    /// Set when `interval` was below the minimum and raised to it.
    pub interval_raised_from: Option<String>,
    pub packaging: Packaging,
    pub timeout: Duration,
    pub max_size: u64,
    pub headers_secret: Option<String>,
    pub ca_bundle: Option<(String, String)>,
    /// `secretRef`: basic or bearer credentials.
    pub auth_secret: Option<String>,
    /// `certSecretRef`: client certificate and CA.
    pub cert_secret: Option<String>,
    /// `proxySecretRef`: the proxy and its credentials.
    pub proxy_secret: Option<String>,
    pub insecure_skip_verify: bool,
    /// The jq filter, compiled and run in the transform sandbox (compiling tenant code can
    /// recurse as deep as the code nests, so not even that happens in the controller).
    pub transform: Option<Arc<str>>,
    /// `spec.hooks`, run through the hook executor.
    pub hooks: HookPlan,
    /// `serviceAccountName`: a ServiceAccount token sent as a bearer token.
    pub identity: Option<WorkloadIdentity>,
    /// `spec.generator.http.pagination`: the pages to follow and merge.
    pub pagination: Option<Pagination>,
    /// `spec.receiver`: the webhook that asks for a fetch at once.
    pub receiver: Option<ReceiverPlan>,
    /// `spec.validate`.
    pub validation: Rules,
}

/// How the payload becomes the artifact (`spec.format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packaging {
    /// The payload is the one file at this path.
    File(DestinationPath),
    /// The payload is an archive; this part of it, placed so, is the artifact.
    Archive(Layout),
}

impl Packaging {
    fn from_spec(spec: &ExternalSourceSpec) -> Result<Self, ConfigProblem> {
        let format = spec.format.unwrap_or_default();
        if spec.archive.is_some() && format != PayloadFormat::Archive {
            return Err(ConfigProblem::invalid("spec.archive", "set", "applies only with spec.format: archive"));
        }
        match format {
            PayloadFormat::File => {
                let raw = spec.destination_path.as_deref().unwrap_or(DEFAULT_DESTINATION);
                let path =
                    DestinationPath::parse(raw).map_err(|e| ConfigProblem::invalid("spec.destinationPath", raw, e))?;
                Ok(Self::File(path))
            }
            PayloadFormat::Archive => {
                if spec.transform.is_some() {
                    return Err(ConfigProblem::invalid(
                        "spec.transform",
                        "set",
                        "cannot reshape an archive; it applies only with spec.format: file",
                    ));
                }
                let dir = |field: &str, raw: &str| {
                    DestinationPath::parse(raw.strip_suffix('/').unwrap_or(raw))
                        .map_err(|e| ConfigProblem::invalid(field, raw, e))
                };
                let prefix =
                    spec.destination_path.as_deref().map(|raw| dir("spec.destinationPath", raw)).transpose()?;
                let archive = spec.archive.clone().unwrap_or_default();
                let path = archive.path.as_deref().map(|raw| dir("spec.archive.path", raw)).transpose()?;
                let strip = archive.strip_components.unwrap_or(0);
                let strip_components = usize::try_from(strip).ok().filter(|n| *n <= 32).ok_or_else(|| {
                    ConfigProblem::invalid("spec.archive.stripComponents", &strip.to_string(), "must be from 0 to 32")
                })?;
                Ok(Self::Archive(Layout { strip_components, path, prefix }))
            }
        }
    }
}

/// Methods accepted for `generator.http.method`.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl Plan {
    pub fn from_spec(spec: &ExternalSourceSpec, defaults: &Defaults) -> Result<Self, ConfigProblem> {
        let requested = parse_duration(&spec.interval).map_err(|_| {
            ConfigProblem::invalid("spec.interval", &spec.interval, "is not a Go duration such as 30s, 5m or 1h30m")
        })?;
        let (interval, interval_raised_from) = if requested < defaults.min_interval {
            (defaults.min_interval, Some(spec.interval.clone()))
        } else {
            (requested, None)
        };
        let packaging = Packaging::from_spec(spec)?;
        let hooks = HookPlan::from_spec(spec, &defaults.hooks)?;
        let GeneratorType::Http = spec.generator.type_;
        let http = spec.generator.http.as_ref().ok_or_else(|| {
            ConfigProblem::invalid("spec.generator.http", "", "is required when spec.generator.type is http")
        })?;
        let url = source_url(&http.url, defaults.require_https)?;
        let method_text = http.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        if !METHODS.contains(&method_text.as_str()) {
            return Err(ConfigProblem::invalid(
                "spec.generator.http.method",
                &method_text,
                format!("must be one of {}", METHODS.join(", ")),
            ));
        }
        let method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| ConfigProblem::invalid("spec.generator.http.method", &method_text, "is not an HTTP method"))?;
        let timeout = match &spec.timeout {
            None => defaults.timeout,
            Some(t) => parse_duration(t)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1) && *d <= defaults.max_timeout)
                .ok_or_else(|| {
                    ConfigProblem::invalid(
                        "spec.timeout",
                        t,
                        format!(
                            "must be a duration from 1s to the controller's limit of {}",
                            format_duration(defaults.max_timeout)
                        ),
                    )
                })?,
        };
        let max_size = match &spec.max_size {
            None => defaults.max_size,
            Some(s) => parse_size(s).ok().filter(|n| *n > 0 && *n <= defaults.max_size).ok_or_else(|| {
                ConfigProblem::invalid(
                    "spec.maxSize",
                    s,
                    format!("must be a byte size from 1 to the controller's limit of {} bytes", defaults.max_size),
                )
            })?,
        };
        Ok(Self {
            identity: workload_identity::from_spec(http, &url, defaults.workload_identity)?,
            url,
            method,
            interval,
            interval_raised_from,
            packaging,
            timeout,
            max_size,
            headers_secret: http.headers_secret_ref.as_ref().map(|r| r.name.clone()),
            ca_bundle: http.ca_bundle_secret_ref.as_ref().map(|r| (r.name.clone(), r.key.clone())),
            auth_secret: http.secret_ref.as_ref().map(|r| r.name.clone()),
            cert_secret: http.cert_secret_ref.as_ref().map(|r| r.name.clone()),
            proxy_secret: http.proxy_secret_ref.as_ref().map(|r| r.name.clone()),
            insecure_skip_verify: http.insecure_skip_verify.unwrap_or(false),
            transform: spec.transform.as_ref().map(|t| Arc::from(t.jq.as_str())),
            hooks,
            pagination: Pagination::from_spec(spec, defaults.max_pages)?,
            receiver: receiver::plan(spec)?,
            validation: Rules::from_spec(spec)?,
        })
    }

    /// Message of the `IntervalRaised` condition, when it applies.
    pub fn interval_warning(&self) -> Option<String> {
        self.interval_raised_from.as_ref().map(|from| {
            format!("spec.interval {from:?} is below the controller minimum; using {}", format_duration(self.interval))
        })
    }
}

/// `spec.generator.http.url`: an absolute `http(s)://` URL with a host, and `https://` under
/// `fetch.require_https`. Shown redacted once parsed.
fn source_url(raw: &str, require_https: bool) -> Result<Url, ConfigProblem> {
    const FIELD: &str = "spec.generator.http.url";
    let url = Url::parse(raw).map_err(|e| ConfigProblem::invalid(FIELD, raw, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigProblem::invalid(FIELD, &redact_url(&url), "must be an http:// or https:// URL with a host"));
    }
    https::check(require_https, &url, false).map_err(|refused| {
        ConfigProblem::invalid(
            FIELD,
            &refused.url,
            format!("is plain http://; {} allows only https:// URLs", FetchConfig::require_https),
        )
    })?;
    Ok(url)
}

/// Builds request headers from a Secret's data; names and values are checked, values never shown.
pub fn headers_from_secret(
    secret_name: &str,
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
) -> Result<HeaderMap, ConfigProblem> {
    let mut headers = HeaderMap::new();
    for (key, value) in data {
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| ConfigProblem {
            reason: Reason::InvalidSpec,
            message: format!("Secret {secret_name:?} key {key:?} is not a valid HTTP header name"),
        })?;
        let value = HeaderValue::from_bytes(&value.0).map_err(|_| ConfigProblem {
            reason: Reason::InvalidSpec,
            message: format!("Secret {secret_name:?} key {key:?} holds a value that is not a valid HTTP header value"),
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::api::{GeneratorSpec, HttpGeneratorSpec};

    fn spec(interval: &str, path: Option<&str>, url: &str) -> ExternalSourceSpec {
        ExternalSourceSpec {
            interval: interval.into(),
            suspend: None,
            destination_path: path.map(Into::into),
            format: None,
            archive: None,
            max_retries: None,
            hooks: None,
            generator: GeneratorSpec {
                type_: GeneratorType::Http,
                http: Some(HttpGeneratorSpec { url: url.into(), ..Default::default() }),
            },
            timeout: None,
            max_size: None,
            receiver: None,
            transform: None,
            validate: None,
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            hooks: HookDefaults {
                enabled: false,
                default_timeout: Duration::from_secs(30),
                max_timeout: Duration::from_secs(300),
            },
            min_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(120),
            max_size: 1 << 20,
            workload_identity: true,
            require_https: false,
            max_pages: 100,
        }
    }

    #[test]
    fn valid_spec_with_raised_interval() {
        let p = Plan::from_spec(&spec("10s", None, "http://example.invalid/x"), &defaults()).unwrap();
        assert_eq!(p.interval, Duration::from_secs(60));
        assert_eq!(p.packaging, Packaging::File(DestinationPath::parse("data").unwrap()));
        assert!(p.interval_warning().unwrap().contains("\"10s\""));
        let p = Plan::from_spec(&spec("5m", Some("a/b.yaml"), "https://example.invalid/x"), &defaults()).unwrap();
        assert_eq!(p.interval, Duration::from_secs(300));
        assert!(p.interval_warning().is_none());
    }

    #[test]
    fn problems_name_the_field_and_value() {
        let e = Plan::from_spec(&spec("5m", Some("../etc/passwd"), "http://x.invalid/"), &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.destinationPath: \"../etc/passwd\""), "{}", e.message);
        assert_eq!(e.message.matches("etc/passwd").count(), 1, "the value is quoted once: {}", e.message);
        let e = Plan::from_spec(&spec("often", None, "http://x.invalid/"), &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.interval: \"often\""), "{}", e.message);
        let e = Plan::from_spec(&spec("5m", None, "file:///etc/passwd"), &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.generator.http.url: \"file:///etc/passwd\""), "{}", e.message);
        let mut s = spec("5m", None, "http://x.invalid/");
        s.max_size = Some("2MiB".into());
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.maxSize: \"2MiB\""), "{}", e.message);
        let mut s = spec("5m", None, "http://x.invalid/");
        s.timeout = Some("5m".into());
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert_eq!(e.message, "spec.timeout: \"5m\" must be a duration from 1s to the controller's limit of 2m");
        s.timeout = Some("2m".into());
        assert_eq!(Plan::from_spec(&s, &defaults()).unwrap().timeout, Duration::from_secs(120));
    }

    #[test]
    fn archive_format_and_its_layout() {
        use crate::controller::api::{ArchiveSpec, PayloadFormat, TransformSpec};
        let mut s = spec("5m", Some("charts/"), "http://x.invalid/c.tgz");
        s.format = Some(PayloadFormat::Archive);
        s.archive = Some(ArchiveSpec { strip_components: Some(1), path: Some("./deploy/".into()) });
        let Packaging::Archive(layout) = Plan::from_spec(&s, &defaults()).unwrap().packaging else {
            panic!("not an archive")
        };
        assert_eq!(layout.strip_components, 1);
        assert_eq!(layout.path.unwrap().as_str(), "deploy");
        assert_eq!(layout.prefix.unwrap().as_str(), "charts");

        s.destination_path = None;
        s.archive = None;
        let Packaging::Archive(layout) = Plan::from_spec(&s, &defaults()).unwrap().packaging else {
            panic!("not an archive")
        };
        assert_eq!(layout, Layout::default(), "no destinationPath: the tree sits at the root");

        s.archive = Some(ArchiveSpec { strip_components: Some(-1), path: None });
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert_eq!(e.message, "spec.archive.stripComponents: \"-1\" must be from 0 to 32");
        s.archive = Some(ArchiveSpec { strip_components: None, path: Some("../up".into()) });
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.archive.path: \"../up\""), "{}", e.message);
        s.archive = None;
        s.transform = Some(TransformSpec { jq: ".".into() });
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert!(e.message.starts_with("spec.transform:"), "{}", e.message);

        let mut s = spec("5m", None, "http://x.invalid/c.tgz");
        s.archive = Some(ArchiveSpec::default());
        let e = Plan::from_spec(&s, &defaults()).unwrap_err();
        assert!(e.message.contains("applies only with spec.format: archive"), "{}", e.message);
    }

    #[test]
    fn require_https_refuses_a_plain_http_url_naming_field_value_and_rule() {
        let strict = Defaults { require_https: true, ..defaults() };
        let p = Plan::from_spec(&spec("5m", None, "https://api.example/items"), &strict).unwrap();
        assert_eq!(p.url.as_str(), "https://api.example/items");
        let e = Plan::from_spec(&spec("5m", None, "http://bob:pw@api.example/items?key=k3y"), &strict).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert_eq!(
            e.message,
            "spec.generator.http.url: \"http://redacted@api.example/items?key=redacted\" is plain http://; \
             fetch.require_https allows only https:// URLs"
        );
        assert!(Plan::from_spec(&spec("5m", None, "http://api.example/items"), &defaults()).is_ok(), "off by default");
    }
}
