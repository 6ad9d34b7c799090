//! Workload identity for `spec.generator.http.serviceAccountName` (and `audience`): the
//! controller asks the API server for a short-lived token of that ServiceAccount, in the
//! source's namespace, with the TokenRequest API, and sends it as a bearer token.
//!
//! A token is asked for [`REQUESTED_LIFETIME`] and renewed once less than a fifth of the lifetime
//! the API server granted is left ([`usable_for`], the kubelet's rule for projected tokens), or
//! once after the upstream refused it with a 401 (the shared path of
//! [`bearer`](crate::controller::reconcile::bearer)). Tokens are cached per namespace, account
//! and audience. The audience defaults to the URL's origin, so a token meant for one API is not
//! accepted by another that checks its audience; like every credential it is only sent to the
//! URL's origin (redirects elsewhere are refused).
//!
//! Operators turn the feature off with `fetch.workload_identity = false`; a source that asks for
//! it is then `Unsupported`, naming the key. The token never appears in a message: the failures
//! name the account, the audience and what to fix (a missing account, a denied request, a token
//! the upstream refuses).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use reqwest::header::HeaderValue;

use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::outcome::{Failure, Outcome, Retry};
use crate::controller::reconcile::bearer::token_cache::TokenKey;
use crate::controller::reconcile::bearer::{self, Bearer, Issuer};
use crate::controller::runtime::memory::Reservation;
use crate::controller::upstream::client::{FetchError, FetchOutcome, FetchRequest};
use crate::controller::upstream::redact::redact_url;

pub mod spec;

use self::spec::{ACCOUNT_FIELD, AUDIENCE_FIELD, AccountKey, WorkloadIdentity};

/// The lifetime a token is asked for (the API server may grant less; never under 10 minutes).
pub const REQUESTED_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a token the API server granted for `lifetime` is sent: until a fifth of its
/// lifetime is left.
pub fn usable_for(lifetime: Duration) -> Duration {
    lifetime - lifetime / 5
}

/// Why no token was had, or the upstream refused it. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "ServiceAccount {account:?} not found in namespace {namespace:?} (the TokenRequest API answered 404); \
         create it, or name an existing one"
    )]
    AccountNotFound { namespace: String, account: String },
    #[error(
        "the API server denied the controller a token of ServiceAccount {account:?} in namespace {namespace:?} \
         (HTTP 403: {detail}); the controller needs RBAC permission to create serviceaccounts/token (granted by \
         its ClusterRole in deploy/base/rbac and the Helm chart)"
    )]
    Denied { namespace: String, account: String, detail: String },
    #[error(
        "{url} refused a newly issued token of ServiceAccount {account:?} for audience {audience:?} (HTTP 401): the \
         upstream takes it as expired or not meant for it; set {AUDIENCE_FIELD} to the audience the upstream \
         expects"
    )]
    Rejected { url: String, account: String, audience: String },
    #[error("the TokenRequest for ServiceAccount {account:?} failed: {detail}")]
    ApiServer { account: String, detail: String, permanent: bool },
    #[error("the API server answered the TokenRequest for ServiceAccount {account:?} with {problem}")]
    Malformed { account: String, problem: &'static str },
}

impl IdentityError {
    fn from_kube(namespace: &str, account: &str, e: kube::Error) -> Self {
        let (namespace, account) = (namespace.to_owned(), account.to_owned());
        match e {
            kube::Error::Api(s) if s.code == 404 => Self::AccountNotFound { namespace, account },
            kube::Error::Api(s) if s.code == 403 => Self::Denied { namespace, account, detail: s.message },
            kube::Error::Api(s) => Self::ApiServer {
                account,
                detail: format!("HTTP {}: {}", s.code, s.message),
                permanent: (400..500).contains(&s.code) && s.code != 408 && s.code != 429,
            },
            other => Self::ApiServer { account, detail: other.to_string(), permanent: false },
        }
    }

    /// The `kind` label of the reconcile metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AccountNotFound { .. } => "service_account_not_found",
            Self::Denied { .. } => "token_request_denied",
            Self::Rejected { .. } => "token_rejected",
            Self::ApiServer { .. } | Self::Malformed { .. } => "token_request",
        }
    }

    /// Retrying soon gives the same answer: wait for the interval (or a spec change).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::AccountNotFound { .. } | Self::Denied { .. } | Self::Rejected { .. } => true,
            Self::ApiServer { permanent, .. } => *permanent,
            Self::Malformed { .. } => false,
        }
    }

    /// `Ready=False` naming the field and what to fix; the last good artifact stays published.
    pub fn failure(&self) -> Outcome {
        Outcome::Failed(Failure {
            reason: Reason::FetchFailed,
            kind: self.kind(),
            message: format!("{ACCOUNT_FIELD}: {self}"),
            retry: if self.is_permanent() { Retry::AtInterval } else { Retry::Backoff { after: None } },
        })
    }
}

/// The TokenRequest API of the source's namespace, as the issuer of its bearer tokens.
struct TokenRequests<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    identity: &'a WorkloadIdentity,
}

impl std::fmt::Display for TokenRequests<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let WorkloadIdentity { account, audience } = self.identity;
        write!(f, "ServiceAccount {}/{account} for audience {audience:?}", self.namespace)
    }
}

impl Issuer for TokenRequests<'_> {
    type Error = IdentityError;

    fn key(&self) -> TokenKey {
        TokenKey::ServiceAccount(AccountKey::new(self.namespace, &self.identity.account, &self.identity.audience))
    }

    async fn issue(&self, _request: &FetchRequest) -> Result<Bearer, IdentityError> {
        let account = &self.identity.account;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.identity.audience.clone()],
                expiration_seconds: Some(REQUESTED_LIFETIME.as_secs() as i64),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let granted = api
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .map_err(|e| IdentityError::from_kube(self.namespace, account, e))?;
        let malformed = |problem| IdentityError::Malformed { account: account.clone(), problem };
        let status = granted.status.ok_or_else(|| malformed("no status"))?;
        if status.token.is_empty() {
            return Err(malformed("an empty token"));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", status.token))
            .map_err(|_| malformed("a token that is not a header value"))?;
        authorization.set_sensitive(true);
        let lifetime = lifetime_until(status.expiration_timestamp.0, k8s_openapi::jiff::Timestamp::now());
        tracing::debug!(issuer = %self, ?lifetime, "obtained a ServiceAccount token");
        Ok(Bearer { authorization, usable_for: usable_for(lifetime) })
    }
}

/// The lifetime left from `now` until `expiration`: none when it has passed (a clock far ahead of
/// the API server's: such a token is used once, not cached), and never more than was asked for
/// (a clock behind the API server's would otherwise keep a token past its renewal).
fn lifetime_until(expiration: k8s_openapi::jiff::Timestamp, now: k8s_openapi::jiff::Timestamp) -> Duration {
    let secs = expiration.duration_since(now).as_secs();
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(REQUESTED_LIFETIME)
}

/// Fetches `request` with a token of `identity` (see the module). `Err` when no token could be
/// had, or when the upstream refused a newly issued one.
pub async fn fetch_with_identity(
    ctx: &Context,
    namespace: &str,
    identity: &WorkloadIdentity,
    request: &mut FetchRequest,
    memory: &mut Reservation,
) -> Result<Result<FetchOutcome, FetchError>, IdentityError> {
    let issuer = TokenRequests { client: &ctx.client, namespace, identity };
    let fetched = bearer::fetch_with_bearer(&ctx.fetcher, &ctx.tokens, &issuer, request, memory).await?;
    if bearer::is_unauthorized(&fetched) {
        return Err(IdentityError::Rejected {
            url: redact_url(&request.url),
            account: identity.account.clone(),
            audience: identity.audience.clone(),
        });
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use reqwest::Url;

    use super::spec::{default_audience, from_spec};
    use super::*;
    use crate::controller::api::HttpGeneratorSpec;
    use crate::controller::api::SecretReference;
    use crate::controller::reconcile::bearer::token_cache::TokenCache;

    fn http(account: Option<&str>, audience: Option<&str>) -> HttpGeneratorSpec {
        HttpGeneratorSpec {
            url: "https://api.example.com/v1/items".into(),
            service_account_name: account.map(Into::into),
            audience: audience.map(Into::into),
            ..Default::default()
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_default_audience_is_the_urls_origin() {
        assert_eq!(default_audience(&url("https://api.example.com/v1/items?page=2")), "https://api.example.com");
        assert_eq!(default_audience(&url("https://api.example.com:443/x")), "https://api.example.com");
        assert_eq!(default_audience(&url("http://127.0.0.1:8080/x")), "http://127.0.0.1:8080");
        assert_eq!(default_audience(&url("https://user:pw@API.Example.com/")), "https://api.example.com");
        let spec = http(Some("reader"), None);
        let identity = from_spec(&spec, &url(&spec.url), true).unwrap().unwrap();
        assert_eq!(identity, WorkloadIdentity { account: "reader".into(), audience: "https://api.example.com".into() });
        let spec = http(Some("reader"), Some(" api://inventory \n"));
        assert_eq!(from_spec(&spec, &url(&spec.url), true).unwrap().unwrap().audience, "api://inventory");
    }

    #[test]
    fn a_token_is_renewed_when_a_fifth_of_its_lifetime_is_left() {
        assert_eq!(usable_for(REQUESTED_LIFETIME), Duration::from_secs(2880));
        assert_eq!(usable_for(Duration::from_secs(600)), Duration::from_secs(480), "a shorter grant");
        assert_eq!(usable_for(Duration::ZERO), Duration::ZERO, "an expired token is not kept");
        let now = k8s_openapi::jiff::Timestamp::now();
        let in_an_hour = now + k8s_openapi::jiff::SignedDuration::from_secs(3600);
        assert_eq!(lifetime_until(in_an_hour, now), REQUESTED_LIFETIME);
        assert_eq!(lifetime_until(now, in_an_hour), Duration::ZERO, "a clock ahead of the API server's");
        let in_ten_minutes = now + k8s_openapi::jiff::SignedDuration::from_secs(600);
        assert_eq!(lifetime_until(in_ten_minutes, now), Duration::from_secs(600), "a shorter grant");
        let in_two_hours = now + k8s_openapi::jiff::SignedDuration::from_secs(7200);
        assert_eq!(lifetime_until(in_two_hours, now), REQUESTED_LIFETIME, "a clock behind the API server's");

        let cache = TokenCache::default();
        let key = TokenKey::ServiceAccount(AccountKey::new("ns", "reader", "https://api.example.com"));
        let t0 = std::time::Instant::now();
        cache.insert(key.clone(), HeaderValue::from_static("Bearer t"), usable_for(REQUESTED_LIFETIME), t0);
        assert!(cache.get(&key, t0 + Duration::from_secs(2879)).is_some(), "more than a fifth left");
        assert!(cache.get(&key, t0 + Duration::from_secs(2880)).is_none(), "a fifth left: renewed");
    }

    #[test]
    fn problems_name_the_fields() {
        let check = |spec: HttpGeneratorSpec, enabled: bool| from_spec(&spec, &url(&spec.url), enabled).unwrap_err();
        let e = check(http(None, Some("api")), true);
        assert_eq!(e.message, format!("{AUDIENCE_FIELD}: \"api\" applies only with {ACCOUNT_FIELD}"));
        let e = check(http(Some("reader"), None), false);
        assert_eq!(e.reason, Reason::Unsupported);
        assert!(
            e.message.starts_with(ACCOUNT_FIELD) && e.message.contains("fetch.workload_identity = false"),
            "{}",
            e.message
        );
        let mut spec = http(Some("reader"), None);
        spec.secret_ref = Some(SecretReference { name: "creds".into() });
        let e = check(spec, true);
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(
            e.message.starts_with(&format!(
                "{ACCOUNT_FIELD}: \"reader\" cannot be combined with spec.generator.http.secretRef"
            )),
            "{}",
            e.message
        );
        for bad in ["Reader", "-reader", "a..b", "reader_1", ""] {
            let e = check(http(Some(bad), None), true);
            assert!(e.message.contains("is not a ServiceAccount name"), "{bad}: {}", e.message);
        }
        assert!(from_spec(&http(Some("ci.reader-2"), None), &url("https://x.example/"), true).is_ok());
        let e = check(http(Some("reader"), Some("  ")), true);
        assert!(e.message.starts_with(AUDIENCE_FIELD), "{}", e.message);
        assert_eq!(
            from_spec(&http(None, None), &url("https://x.example/"), false),
            Ok(None),
            "the switch only matters when asked for"
        );
    }

    #[test]
    fn each_failure_has_its_own_message_and_none_holds_a_token() {
        let not_found =
            IdentityError::from_kube("team", "reader", api_error(404, "serviceaccounts \"reader\" not found"));
        let denied = IdentityError::from_kube(
            "team",
            "reader",
            api_error(403, "User \"ctl\" cannot create resource \"serviceaccounts/token\""),
        );
        let rejected = IdentityError::Rejected {
            url: "https://api.example.com/v1".into(),
            account: "reader".into(),
            audience: "https://api.example.com".into(),
        };
        let flaky = IdentityError::from_kube("team", "reader", api_error(503, "etcd timeout"));
        let messages: Vec<String> = [&not_found, &denied, &rejected, &flaky]
            .iter()
            .map(|e| match e.failure() {
                Outcome::Failed(f) => {
                    assert!(f.message.starts_with("spec.generator.http.serviceAccountName: "), "{}", f.message);
                    assert_eq!(f.reason, Reason::FetchFailed, "a failure keeps the last artifact");
                    assert_eq!(
                        f.retry,
                        if e.is_permanent() { Retry::AtInterval } else { Retry::Backoff { after: None } }
                    );
                    f.message
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(messages[0].contains("not found in namespace \"team\""), "{}", messages[0]);
        assert!(messages[1].contains("HTTP 403") && messages[1].contains("serviceaccounts/token"), "{}", messages[1]);
        assert!(messages[2].contains("HTTP 401") && messages[2].contains(AUDIENCE_FIELD), "{}", messages[2]);
        assert!(messages[3].contains("HTTP 503") && !flaky.is_permanent(), "{}", messages[3]);
        let kinds: std::collections::BTreeSet<_> = [&not_found, &denied, &rejected].iter().map(|e| e.kind()).collect();
        assert_eq!(kinds.len(), 3, "distinct metric kinds");
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            serde_json::from_value(
                serde_json::json!({"status": "Failure", "code": code, "message": message, "reason": ""}),
            )
            .unwrap(),
        ))
    }
}
