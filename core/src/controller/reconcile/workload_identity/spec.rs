//! The plan's part of workload identity: `serviceAccountName` and `audience` checked against the
//! operator's switch and the other credential fields, and the key its tokens are cached under.
//! Nothing here reaches the API server (see the parent module for that).

use reqwest::Url;

use crate::config::FetchConfig;
use crate::controller::api::HttpGeneratorSpec;
use crate::controller::conditions::Reason;
use crate::controller::reconcile::problem::ConfigProblem;

pub const ACCOUNT_FIELD: &str = "spec.generator.http.serviceAccountName";
pub const AUDIENCE_FIELD: &str = "spec.generator.http.audience";
/// The longest audience accepted.
const MAX_AUDIENCE: usize = 1024;

/// A validated `serviceAccountName` and the audience its tokens are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub account: String,
    pub audience: String,
}

/// The cache key of a ServiceAccount's token: it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub namespace: String,
    pub account: String,
    pub audience: String,
}

impl AccountKey {
    pub fn new(namespace: &str, account: &str, audience: &str) -> Self {
        Self { namespace: namespace.to_owned(), account: account.to_owned(), audience: audience.to_owned() }
    }
}

/// The audience a token is for when `spec.generator.http.audience` is unset: the URL's origin
/// (`https://api.example.com`, the port only when it is not the scheme's default).
pub fn default_audience(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The plan's part: `serviceAccountName` and `audience` validated against the operator's switch
/// (`enabled`, `fetch.workload_identity`) and the other credential fields.
pub fn from_spec(
    http: &HttpGeneratorSpec,
    url: &Url,
    enabled: bool,
) -> Result<Option<WorkloadIdentity>, ConfigProblem> {
    let Some(account) = http.service_account_name.as_deref() else {
        return match &http.audience {
            Some(audience) => {
                Err(ConfigProblem::invalid(AUDIENCE_FIELD, audience, format!("applies only with {ACCOUNT_FIELD}")))
            }
            None => Ok(None),
        };
    };
    if !enabled {
        return Err(ConfigProblem {
            reason: Reason::Unsupported,
            message: format!(
                "{ACCOUNT_FIELD}: {account:?} asks for workload identity, which this controller has turned off \
                 ({} = false); ask the operator to turn it on, or use spec.generator.http.secretRef",
                FetchConfig::workload_identity
            ),
        });
    }
    if http.secret_ref.is_some() {
        return Err(ConfigProblem::invalid(
            ACCOUNT_FIELD,
            account,
            "cannot be combined with spec.generator.http.secretRef (basic, bearer or OAuth2 credentials): a source \
             sends one credential; keep one of them",
        ));
    }
    if !is_dns_subdomain(account) {
        return Err(ConfigProblem::invalid(
            ACCOUNT_FIELD,
            account,
            "is not a ServiceAccount name (a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253)",
        ));
    }
    let audience = match http.audience.as_deref().map(str::trim) {
        None => default_audience(url),
        Some(a) if a.is_empty() || a.len() > MAX_AUDIENCE || a.chars().any(char::is_control) => {
            return Err(ConfigProblem::invalid(
                AUDIENCE_FIELD,
                a,
                format!("must be 1 to {MAX_AUDIENCE} characters without control characters"),
            ));
        }
        Some(a) => a.to_owned(),
    };
    Ok(Some(WorkloadIdentity { account: account.to_owned(), audience }))
}

/// RFC 1123 subdomain, as Kubernetes names most objects.
fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}
