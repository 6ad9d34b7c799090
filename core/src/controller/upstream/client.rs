//! The HTTP fetcher: one pooled client per TLS setting, bodies capped while streaming.
//!
//! The cap applies to decoded bytes (reqwest asks for and decodes gzip and deflate; not brotli,
//! whose codec added 0.2 MB to the binary for no payload gzip cannot carry), so a small gzip bomb
//! is refused like a large body. Headers from a Secret are never sent to another origin: the
//! redirect policy of clients that carry them refuses redirects to another scheme, host or port.
//! Every hop obeys the [egress policy](crate::controller::upstream::egress), `fetch.require_https`
//! included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderMap, IF_NONE_MATCH, LINK, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode, Url, redirect};

use crate::controller::runtime::memory::Reservation;
use crate::controller::upstream::egress::{Denied, EgressPolicy};
use crate::controller::upstream::found_in_chain;
use crate::controller::upstream::https::PlainHttp;
use crate::controller::upstream::redact::redact_url;

/// What to fetch and how.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub url: Url,
    pub method: Method,
    /// Headers from the headers Secret.
    pub headers: HeaderMap,
    pub tls: TlsSettings,
    pub timeout: Duration,
    pub max_size: u64,
    /// The ETag of the stored artifact, sent as `If-None-Match`.
    pub if_none_match: Option<String>,
    pub proxy: Option<ProxySettings>,
}

/// TLS settings that need a client of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// PEM certificates added to the system roots.
    pub ca_bundle: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for upstreams that require mTLS.
    pub client_identity: Option<SecretBytes>,
    pub insecure_skip_verify: bool,
}

/// Bytes from a Secret that must not reach logs: `Debug` shows only their length.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// An HTTP proxy every request of the source goes through (`proxySecretRef`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxySettings {
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<SecretBytes>,
}

/// The outcome of a successful request.
#[derive(Debug)]
pub enum FetchOutcome {
    /// 304: the stored artifact is current.
    NotModified,
    Fetched {
        body: Bytes,
        etag: Option<String>,
        /// The `Link` header values (RFC 8288), for paged sources.
        links: Vec<String>,
        /// The response's `Content-Type`, as sent (`spec.validate.contentType` checks it).
        content_type: Option<String>,
    },
}

/// Why a fetch failed, classified the way the reconciler retries.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode, retry_after: Option<Duration> },
    #[error("the response of {url} exceeds the size limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("request to {url} refused: {denied}")]
    Denied { url: String, denied: Denied },
    /// `fetch.require_https` refused the URL or a redirect hop.
    #[error("request to {url} refused: {refused}")]
    PlainHttp { url: String, refused: PlainHttp },
    #[error("invalid CA bundle: {0}")]
    InvalidCaBundle(String),
    /// `certSecretRef`'s `tls.crt` / `tls.key` do not form a usable identity.
    #[error("invalid client certificate (tls.crt, tls.key): {0}")]
    InvalidClientCertificate(String),
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

impl FetchError {
    /// 4xx other than 408 and 429 will not change by retrying soon; wait for the next interval.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS
            }
            Self::TooLarge { .. }
            | Self::Denied { .. }
            | Self::PlainHttp { .. }
            | Self::InvalidCaBundle(_)
            | Self::InvalidClientCertificate(_)
            | Self::Client(_) => true,
            Self::Timeout { .. } | Self::Transport { .. } => false,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { .. } => "fetch_status",
            Self::TooLarge { .. } => "fetch_too_large",
            Self::Denied { .. } => "egress_denied",
            Self::PlainHttp { .. } => "https_required",
            Self::Timeout { .. } => "fetch_timeout",
            Self::Transport { .. } => "fetch_transport",
            Self::InvalidCaBundle(_) => "invalid_ca_bundle",
            Self::InvalidClientCertificate(_) => "invalid_client_certificate",
            Self::Client(_) => "fetch_client",
        }
    }

    /// A server-requested delay (429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    tls: TlsSettings,
    proxy: Option<ProxySettings>,
    /// Clients that carry Secret headers or a client certificate refuse cross-host redirects.
    confine_redirects: Option<Credential>,
}

/// What a request carries that must not reach another origin: named in the refusal, so a user
/// knows which of the source's Secrets the redirect would have exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Credential {
    /// From `headersSecretRef`, `secretRef` or `serviceAccountName` (an Authorization header).
    SecretHeaders,
    /// From `certSecretRef` (mTLS).
    ClientCertificate,
    Both,
}

impl Credential {
    fn of(headers: &HeaderMap, client_certificate: bool) -> Option<Self> {
        match (!headers.is_empty(), client_certificate) {
            (true, true) => Some(Self::Both),
            (true, false) => Some(Self::SecretHeaders),
            (false, true) => Some(Self::ClientCertificate),
            (false, false) => None,
        }
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SecretHeaders => "credential headers (headersSecretRef, secretRef or serviceAccountName)",
            Self::ClientCertificate => "a client certificate (certSecretRef)",
            Self::Both => {
                "credential headers (headersSecretRef, secretRef or serviceAccountName) and a client certificate (certSecretRef)"
            }
        })
    }
}

/// Clients kept at most; past it the pool starts afresh (rotated Secrets leave old keys behind).
const MAX_CLIENTS: usize = 256;

/// Pooled clients, rebuilt only when TLS settings differ.
pub struct Fetcher {
    user_agent: String,
    /// A proxy is set in the environment (`HTTPS_PROXY`, ...): targets are checked before the
    /// request, since the proxy resolves their names.
    environment_proxy: bool,
    policy: Arc<EgressPolicy>,
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

impl Fetcher {
    /// With the default egress policy (link-local and metadata addresses denied).
    pub fn new(user_agent: impl Into<String>) -> Self {
        Self::with_policy(user_agent, EgressPolicy::default())
    }

    pub fn with_policy(user_agent: impl Into<String>, policy: EgressPolicy) -> Self {
        let environment_proxy = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|value| !value.is_empty()));
        Self {
            user_agent: user_agent.into(),
            environment_proxy,
            policy: Arc::new(policy),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, key: ClientKey) -> Result<reqwest::Client, FetchError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let confine = key.confine_redirects;
        let egress = self.policy.clone();
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let scheme = attempt.url().scheme().to_owned();
            if !matches!(scheme.as_str(), "http" | "https") {
                return attempt.error(format!("redirect to non-HTTP scheme {scheme:?} refused"));
            }
            if let Err(refused) = egress.check_scheme(attempt.url(), true) {
                return attempt.error(refused);
            }
            if let Err(denied) = egress.check_literal(attempt.url()) {
                return attempt.error(denied);
            }
            // Secret headers stay with the origin they were meant for: same scheme (no https →
            // http downgrade), same host, same port.
            let origin = |u: &Url| (u.scheme().to_owned(), u.host_str().map(str::to_owned), u.port_or_known_default());
            let first = attempt.previous().first().map(origin);
            if let Some(credential) = confine.filter(|_| first.is_some_and(|f| f != origin(attempt.url()))) {
                return attempt.error(format!(
                    "redirect to another origin (scheme, host or port) refused: the request carries {credential}"
                ));
            }
            attempt.follow()
        });
        let mut builder = reqwest::Client::builder()
            .redirect(policy)
            .dns_resolver(self.policy.resolver())
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &key.tls.ca_bundle {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| FetchError::InvalidCaBundle(e.to_string()))?;
            if certs.is_empty() {
                return Err(FetchError::InvalidCaBundle("no PEM certificate found".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(pem) = &key.tls.client_identity {
            let identity = reqwest::Identity::from_pem(&pem.0)
                .map_err(|e| FetchError::InvalidClientCertificate(error_chain(&e)))?;
            builder = builder.identity(identity);
        }
        if key.tls.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        // A source's own proxy replaces the environment's (HTTPS_PROXY, NO_PROXY, ...), which
        // applies otherwise, as in Flux's controllers.
        if let Some(p) = &key.proxy {
            let mut proxy = reqwest::Proxy::all(p.url.clone()).map_err(|e| FetchError::Client(error_chain(&e)))?;
            if let (Some(user), Some(pass)) = (&p.username, &p.password) {
                proxy = proxy.basic_auth(user, &String::from_utf8_lossy(&pass.0));
            }
            builder = builder.no_proxy().proxy(proxy);
        }
        let client = builder.build().map_err(|e| FetchError::Client(error_chain(&e)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Whether `url` may be requested under `fetch.require_https`.
    pub(crate) fn check_scheme(&self, url: &Url) -> Result<(), PlainHttp> {
        self.policy.check_scheme(url, false)
    }

    /// Checks a target before its request: IP literals here (names when they are resolved, by
    /// the client's resolver), and through a proxy, which resolves names itself, the target's
    /// own resolution too, so a proxy is no way around the egress policy's denied ranges.
    pub(crate) async fn check_egress(&self, url: &Url, proxied: bool) -> Result<(), Denied> {
        self.policy.check_literal(url)?;
        if proxied || self.environment_proxy {
            self.policy.check_resolved(url).await?;
        }
        Ok(())
    }

    /// The pooled client of these settings. Every request of a source goes through it (the
    /// upstream fetch and the OAuth2 token request alike), so each obeys the same egress policy,
    /// CA bundle, client certificate and proxy; a request carrying `secret_headers` (non-empty)
    /// or a client certificate is not redirected to another origin.
    pub(crate) fn client_for(
        &self,
        tls: &TlsSettings,
        proxy: Option<&ProxySettings>,
        secret_headers: &HeaderMap,
    ) -> Result<reqwest::Client, FetchError> {
        self.client(ClientKey {
            tls: tls.clone(),
            proxy: proxy.cloned(),
            confine_redirects: Credential::of(secret_headers, tls.client_identity.is_some()),
        })
    }

    /// The `User-Agent` every request sends.
    pub(crate) fn user_agent(&self) -> &str {
        &self.user_agent
    }

    /// Performs the request; the body is read while counting decoded bytes against the cap.
    /// `memory` was reserved for a body of `req.max_size`; a declared length shrinks it.
    pub async fn fetch(&self, req: &FetchRequest, memory: &mut Reservation) -> Result<FetchOutcome, FetchError> {
        // The URL as messages show it: credentials in it are sent, never displayed.
        let url = redact_url(&req.url);
        self.check_scheme(&req.url).map_err(|refused| FetchError::PlainHttp { url: url.clone(), refused })?;
        self.check_egress(&req.url, req.proxy.is_some())
            .await
            .map_err(|denied| FetchError::Denied { url: url.clone(), denied })?;
        let client = self.client_for(&req.tls, req.proxy.as_ref(), &req.headers)?;
        let mut builder = client
            .request(req.method.clone(), req.url.clone())
            .timeout(req.timeout)
            .headers(req.headers.clone())
            .header(USER_AGENT, &self.user_agent);
        if let Some(etag) = &req.if_none_match {
            builder = builder.header(IF_NONE_MATCH, etag);
        }
        let transport = |e: reqwest::Error| {
            if let Some(denied) = found_in_chain::<Denied>(&e) {
                FetchError::Denied { url: url.clone(), denied: denied.clone() }
            } else if let Some(refused) = found_in_chain::<PlainHttp>(&e) {
                FetchError::PlainHttp { url: url.clone(), refused: refused.clone() }
            } else if e.is_timeout() {
                FetchError::Timeout { url: url.clone(), timeout: req.timeout }
            } else {
                FetchError::Transport { url: url.clone(), message: error_chain(&e.without_url()) }
            }
        };
        let mut response = builder.send().await.map_err(transport)?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(FetchOutcome::NotModified);
        }
        if !status.is_success() {
            let retry_after =
                response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            return Err(FetchError::Status { url, status, retry_after });
        }
        let too_large = || FetchError::TooLarge { url: url.clone(), limit: req.max_size };
        // A declared length only counts when the body is not encoded (decoded sizes differ).
        let encoded = response.headers().contains_key(reqwest::header::CONTENT_ENCODING);
        let declared = response.content_length().filter(|_| !encoded);
        if declared.is_some_and(|n| n > req.max_size) {
            return Err(too_large());
        }
        if let Some(n) = declared {
            memory.shrink_to_body(n);
        }
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let links =
            response.headers().get_all(LINK).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
        let content_type =
            response.headers().get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // Pre-sized when the length is declared: no reallocation holding two buffers at once.
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() as u64 + chunk.len() as u64 > req.max_size {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchOutcome::Fetched { body: body.freeze(), etag, links, content_type })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The error and its sources in one line (reqwest's top-level message hides the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn classification() {
        let status = |s: u16| FetchError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        assert!(status(404).is_permanent());
        assert!(status(403).is_permanent());
        assert!(!status(408).is_permanent());
        assert!(!status(429).is_permanent());
        assert!(!status(500).is_permanent());
        assert!(!status(503).is_permanent());
    }

    #[tokio::test]
    async fn require_https_refuses_a_plain_http_request_before_connecting() {
        use crate::controller::runtime::memory::MemoryBudget;
        let fetcher = Fetcher::with_policy("t", EgressPolicy::default().requiring_https(true));
        let budget = MemoryBudget::new(1 << 20);
        let mut memory = budget.reserve(1024).await;
        let request = |url: &str| FetchRequest {
            url: Url::parse(url).unwrap(),
            method: Method::GET,
            headers: HeaderMap::new(),
            tls: TlsSettings::default(),
            timeout: Duration::from_secs(1),
            max_size: 1024,
            if_none_match: None,
            proxy: None,
        };
        // Port 9 on a TEST-NET address: never contacted, the refusal comes first.
        let e = fetcher.fetch(&request("http://192.0.2.1:9/x?t=s3cret"), &mut memory).await.unwrap_err();
        assert!(matches!(&e, FetchError::PlainHttp { refused, .. } if !refused.redirect), "{e}");
        assert!(e.is_permanent());
        assert_eq!(e.kind(), "https_required");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
