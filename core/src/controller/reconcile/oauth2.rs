//! OAuth2 client credentials (RFC 6749 §4.4) for `spec.generator.http.secretRef`.
//!
//! A `secretRef` Secret that holds `tokenURL`, `clientID` and `clientSecret` (optionally
//! `scopes`, space or comma separated, and `audience`) makes the controller get an access token
//! from the token endpoint and send it as a bearer token. The token request goes through the
//! source's own HTTP client (see `Fetcher::client_for`): the egress policy (`fetch.require_https`
//! included), the CA bundle, the
//! client certificate and the proxy of the source apply to it as to the upstream fetch. The
//! client authenticates with HTTP Basic (RFC 6749 §2.3.1), the parameters go in a form body.
//!
//! Tokens are cached (see [`client_key`]) until shortly before they expire; an upstream 401 to a
//! cached token drops it, and the fetch is retried once with a new one. A 401 to a token just
//! issued is the upstream's answer and is reported as such (a new token would be refused too).
//!
//! Neither the client secret nor a token is ever part of a message: errors name the Secret, the
//! token endpoint (redacted like every URL shown) and the OAuth2 `error` code.

pub mod client_key;

use std::time::Duration;

use bytes::BytesMut;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{StatusCode, Url};

use client_key::{ClientKey, usable_for};

use crate::controller::conditions::Reason;
use crate::controller::outcome::{Failure, Outcome, Retry};
use crate::controller::reconcile::bearer::token_cache::{TokenCache, TokenKey};
use crate::controller::reconcile::bearer::{self, Bearer, Issuer};
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::secret_data::{AUTH_FIELD, Data, invalid, missing_key, text};
use crate::controller::runtime::memory::Reservation;
use crate::controller::upstream::client::{
    FetchError, FetchOutcome, FetchRequest, Fetcher, ProxySettings, SecretBytes, TlsSettings, error_chain,
};
use crate::controller::upstream::egress::Denied;
use crate::controller::upstream::found_in_chain;
use crate::controller::upstream::https::PlainHttp;
use crate::controller::upstream::redact::redact_url;

pub const TOKEN_URL: &str = "tokenURL";
pub const CLIENT_ID: &str = "clientID";
pub const CLIENT_SECRET: &str = "clientSecret";
pub const SCOPES: &str = "scopes";
pub const AUDIENCE: &str = "audience";
/// The keys that ask for the client credentials grant.
const OAUTH2_KEYS: [&str; 5] = [TOKEN_URL, CLIENT_ID, CLIENT_SECRET, SCOPES, AUDIENCE];
/// The keys of static credentials, which cannot be combined with the grant.
const STATIC_KEYS: [&str; 3] = ["username", "password", "bearerToken"];

/// The largest token response read: a token response is a few hundred bytes.
pub const MAX_TOKEN_RESPONSE: u64 = 64 * 1024;
/// The longest a token request may take (the source's `timeout` when shorter).
pub const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest part of an `error_description` shown in a condition.
const MAX_DESCRIPTION: usize = 200;

/// The client of a `secretRef` Secret that asks for the client credentials grant.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The Secret's name, for messages.
    pub secret: String,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretBytes,
    /// In the order written, without repeats.
    pub scopes: Vec<String>,
    pub audience: Option<String>,
}

/// Whether a `secretRef` Secret asks for the client credentials grant: it holds any OAuth2 key.
pub fn requested(data: &Data) -> bool {
    OAUTH2_KEYS.iter().any(|k| data.contains_key(*k))
}

/// The client of a Secret that [`requested`] the grant. `tokenURL`, `clientID` and
/// `clientSecret` are required; static credentials (`username`, `password`, `bearerToken`) in
/// the same Secret are a conflict naming both sets of keys, never guessed between.
pub fn from_secret(secret: &str, data: &Data) -> Result<ClientCredentials, ConfigProblem> {
    let f = AUTH_FIELD;
    let statics: Vec<&str> = STATIC_KEYS.into_iter().filter(|k| data.contains_key(*k)).collect();
    if !statics.is_empty() {
        return Err(invalid(
            f,
            secret,
            &format!(
                "has both OAuth2 client credentials keys (tokenURL, clientID, clientSecret, scopes, audience) and {}; \
                 keep one kind of credential",
                statics.join(", ")
            ),
        ));
    }
    let why = "OAuth2 client credentials need tokenURL, clientID and clientSecret";
    let required = |key: &str| -> Result<&str, ConfigProblem> {
        text(f, secret, data, key)?.filter(|v| !v.is_empty()).ok_or_else(|| missing_key(f, secret, key, why))
    };
    let raw_url = required(TOKEN_URL)?.trim();
    let client_id = required(CLIENT_ID)?.to_owned();
    let client_secret = SecretBytes(required(CLIENT_SECRET)?.as_bytes().to_vec());
    let token_url = Url::parse(raw_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(f, secret, "key \"tokenURL\" must be an http:// or https:// URL with a host"))?;
    if !token_url.username().is_empty() || token_url.password().is_some() {
        return Err(invalid(
            f,
            secret,
            "key \"tokenURL\" must not hold credentials; use the clientID and clientSecret keys",
        ));
    }
    let scopes = parse_scopes(text(f, secret, data, SCOPES)?.unwrap_or("")).map_err(|()| {
        invalid(
            f,
            secret,
            "key \"scopes\" holds a character a scope may not have (RFC 6749 §3.3: printable ASCII except space, \
             '\"' and '\\'; scopes are separated by spaces or commas)",
        )
    })?;
    let audience = text(f, secret, data, AUDIENCE)?.map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned);
    Ok(ClientCredentials { secret: secret.to_owned(), token_url, client_id, client_secret, scopes, audience })
}

/// Scopes separated by spaces or commas, in order, without repeats; `Err` for a character
/// RFC 6749 §3.3 does not allow in a scope.
fn parse_scopes(raw: &str) -> Result<Vec<String>, ()> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in raw.split(|c: char| c == ',' || c.is_ascii_whitespace()).filter(|s| !s.is_empty()) {
        if !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
            return Err(());
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    Ok(scopes)
}

impl ClientCredentials {
    fn key(&self, namespace: &str) -> ClientKey {
        ClientKey::new(
            namespace,
            &self.secret,
            self.token_url.as_str(),
            &self.scopes,
            self.audience.as_deref(),
            &self.client_id,
            &self.client_secret.0,
        )
    }

    /// `Authorization: Basic …` of the client (RFC 6749 §2.3.1: each part form-encoded first).
    fn basic_authorization(&self) -> HeaderValue {
        use base64::Engine as _;
        let id: String = form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
        let secret: String = form_urlencoded::byte_serialize(&self.client_secret.0).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        // Base64 is always a valid header value.
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// The form body of the token request (RFC 6749 §4.4.2, and `audience` as most servers take it).
    fn form(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !self.scopes.is_empty() {
            form.append_pair("scope", &self.scopes.join(" "));
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        form.finish()
    }

    /// The outcome of a failed token request: `Ready=False` naming the Secret, the endpoint and
    /// the rule; the last good artifact stays published.
    pub fn failure(&self, e: &TokenError) -> Outcome {
        Outcome::Failed(Failure {
            reason: Reason::FetchFailed,
            kind: e.kind(),
            message: format!(
                "{AUTH_FIELD}: Secret {:?} (OAuth2 client credentials grant, RFC 6749 §4.4): {e}",
                self.secret
            ),
            retry: if e.is_permanent() { Retry::AtInterval } else { Retry::Backoff { after: None } },
        })
    }
}

/// Why no token was obtained. Never holds the client secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint {url} is refused: {denied}")]
    Denied { url: String, denied: Denied },
    /// `fetch.require_https` refused the token URL or a redirect of it.
    #[error("the token endpoint is refused: {0}")]
    PlainHttp(PlainHttp),
    #[error("the token endpoint {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("the token endpoint {url} is unreachable: {message}")]
    Transport { url: String, message: String },
    #[error("the token endpoint {url} answered HTTP {status} with OAuth2 error {error:?}{}",
        description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected { url: String, status: StatusCode, error: String, description: Option<String> },
    #[error("the token endpoint {url} answered HTTP {status} without an OAuth2 error response (RFC 6749 §5.2)")]
    Status { url: String, status: StatusCode },
    #[error("the token endpoint {url} answered HTTP {status} with {problem} (RFC 6749 §5.1)")]
    Malformed { url: String, status: StatusCode, problem: &'static str },
    #[error("the token response of {url} exceeds {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("the token endpoint {url} issued a token of type {token_type:?}; only Bearer tokens (RFC 6750) are sent")]
    UnsupportedTokenType { url: String, token_type: String },
    /// The source's CA bundle or client certificate is unusable, for the token request as for
    /// the fetch.
    #[error("{0}")]
    Client(FetchError),
}

impl TokenError {
    /// Retrying soon gives the same answer: wait for the interval (or a Secret change).
    pub fn is_permanent(&self) -> bool {
        let permanent_status = |s: &StatusCode| {
            s.is_client_error() && *s != StatusCode::REQUEST_TIMEOUT && *s != StatusCode::TOO_MANY_REQUESTS
        };
        match self {
            Self::Rejected { status, .. } | Self::Status { status, .. } => permanent_status(status),
            Self::Malformed { status, .. } => status.is_success(),
            Self::Denied { .. }
            | Self::PlainHttp(_)
            | Self::TooLarge { .. }
            | Self::UnsupportedTokenType { .. }
            | Self::Client(_) => true,
            Self::Timeout { .. } | Self::Transport { .. } => false,
        }
    }

    /// The `kind` label of the reconcile metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "egress_denied",
            Self::PlainHttp(_) => "https_required",
            Self::Client(e) => e.kind(),
            _ => "oauth2_token",
        }
    }
}

/// A token as the endpoint issued it (`Debug` shows the sensitive value as `Sensitive`).
#[derive(Debug)]
struct Issued {
    authorization: HeaderValue,
    expires_in: Option<Duration>,
}

/// Asks the token endpoint for a token (RFC 6749 §4.4.2) through the source's client.
async fn request_token(
    fetcher: &Fetcher,
    client: &ClientCredentials,
    tls: &TlsSettings,
    proxy: Option<&ProxySettings>,
    timeout: Duration,
) -> Result<Issued, TokenError> {
    let url = redact_url(&client.token_url);
    fetcher.check_scheme(&client.token_url).map_err(TokenError::PlainHttp)?;
    fetcher
        .check_egress(&client.token_url, proxy.is_some())
        .await
        .map_err(|denied| TokenError::Denied { url: url.clone(), denied })?;
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, client.basic_authorization());
    let http = fetcher.client_for(tls, proxy, &headers).map_err(TokenError::Client)?;
    let transport = |e: reqwest::Error| {
        if let Some(denied) = found_in_chain::<Denied>(&e) {
            TokenError::Denied { url: url.clone(), denied: denied.clone() }
        } else if let Some(refused) = found_in_chain::<PlainHttp>(&e) {
            TokenError::PlainHttp(refused.clone())
        } else if e.is_timeout() {
            TokenError::Timeout { url: url.clone(), timeout }
        } else {
            TokenError::Transport { url: url.clone(), message: error_chain(&e.without_url()) }
        }
    };
    let mut response = http
        .post(client.token_url.clone())
        .timeout(timeout)
        .headers(headers)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, fetcher.user_agent())
        .body(client.form())
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let too_large = || TokenError::TooLarge { url: url.clone(), limit: MAX_TOKEN_RESPONSE };
    if response.content_length().is_some_and(|n| n > MAX_TOKEN_RESPONSE) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > MAX_TOKEN_RESPONSE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    interpret(&url, status, &body, &client.client_secret)
}

/// The token, or the error, in a token endpoint's answer. Values from the body are only ever
/// shown when they are the OAuth2 `error` code or a description that does not hold the secret.
fn interpret(url: &str, status: StatusCode, body: &[u8], client_secret: &SecretBytes) -> Result<Issued, TokenError> {
    let url = url.to_owned();
    let json: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        let error = json.as_ref().and_then(|j| j.get("error")).and_then(|e| e.as_str()).filter(|e| is_error_code(e));
        return Err(match error {
            Some(error) => {
                let description = json
                    .as_ref()
                    .and_then(|j| j.get("error_description"))
                    .and_then(|d| d.as_str())
                    .and_then(|d| shown_description(d, client_secret));
                TokenError::Rejected { url, status, error: error.to_owned(), description }
            }
            None => TokenError::Status { url, status },
        });
    }
    let Some(json) = json else {
        return Err(TokenError::Malformed { url, status, problem: "a body that is not a JSON object" });
    };
    let Some(token) = json.get("access_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) else {
        return Err(TokenError::Malformed { url, status, problem: "no access_token" });
    };
    match json.get("token_type").and_then(|t| t.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => {
            let token_type = if is_error_code(t) { t.to_owned() } else { "(not shown)".to_owned() };
            return Err(TokenError::UnsupportedTokenType { url, token_type });
        }
        None => return Err(TokenError::Malformed { url, status, problem: "no token_type" }),
    }
    // A number, or (some servers) a number in a string.
    let expires_in = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
            Some(secs) => Some(Duration::from_secs(secs)),
            None => return Err(TokenError::Malformed { url, status, problem: "an expires_in that is not seconds" }),
        },
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| TokenError::Malformed {
        url,
        status,
        problem: "an access_token that is not a header value",
    })?;
    authorization.set_sensitive(true);
    Ok(Issued { authorization, expires_in })
}

/// An OAuth2 `error` value as RFC 6749 §5.2 allows it (printable ASCII but '"' and '\'), short.
fn is_error_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// An `error_description` fit to show: printable, cut short, and never one that quotes the
/// client secret back.
fn shown_description(d: &str, client_secret: &SecretBytes) -> Option<String> {
    let secret = std::str::from_utf8(&client_secret.0).unwrap_or("");
    if !secret.is_empty() && d.contains(secret) {
        return None;
    }
    let shown: String = d.chars().filter(|c| !c.is_control()).take(MAX_DESCRIPTION).collect();
    (!shown.trim().is_empty()).then_some(shown)
}

/// The token endpoint of one client, as the issuer of a source's bearer tokens.
struct Endpoint<'a> {
    fetcher: &'a Fetcher,
    client: &'a ClientCredentials,
    namespace: &'a str,
}

impl std::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the OAuth2 client of Secret {:?}", self.client.secret)
    }
}

impl Issuer for Endpoint<'_> {
    type Error = TokenError;

    fn key(&self) -> TokenKey {
        TokenKey::Client(self.client.key(self.namespace))
    }

    async fn issue(&self, request: &FetchRequest) -> Result<Bearer, TokenError> {
        let timeout = request.timeout.min(MAX_TOKEN_TIMEOUT);
        let issued = request_token(self.fetcher, self.client, &request.tls, request.proxy.as_ref(), timeout).await?;
        tracing::debug!(secret = %self.client.secret, expires_in = ?issued.expires_in, "obtained an OAuth2 access token");
        Ok(Bearer { authorization: issued.authorization, usable_for: usable_for(issued.expires_in) })
    }
}

/// Fetches `request` with a bearer token of `client`: a cached one while it is usable, else a
/// new one; a 401 to a cached token drops it and the fetch is retried once with a new token
/// (see [`bearer`](crate::controller::reconcile::bearer)). `Err` when no token could be had
/// (see [`ClientCredentials::failure`]).
pub async fn fetch_with_token(
    fetcher: &Fetcher,
    tokens: &TokenCache,
    namespace: &str,
    client: &ClientCredentials,
    request: &mut FetchRequest,
    memory: &mut Reservation,
) -> Result<Result<FetchOutcome, FetchError>, TokenError> {
    bearer::fetch_with_bearer(fetcher, tokens, &Endpoint { fetcher, client, namespace }, request, memory).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Data {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect()
    }

    const SECRET: &str = "cl1ent-s3cret";

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![("tokenURL", "https://idp.example/oauth2/token\n"), ("clientID", "flux"), ("clientSecret", SECRET)]
    }

    #[test]
    fn the_grant_is_asked_for_by_any_oauth2_key() {
        assert!(requested(&data(&[("tokenURL", "x")])));
        assert!(requested(&data(&[("scopes", "x")])));
        assert!(!requested(&data(&[("username", "u"), ("password", "p")])));
    }

    #[test]
    fn a_full_secret_gives_the_client() {
        let mut pairs = full();
        pairs.push(("scopes", "read, write read\tadmin:all"));
        pairs.push(("audience", " https://api.example \n"));
        let c = from_secret("oauth", &data(&pairs)).unwrap();
        assert_eq!(c.token_url.as_str(), "https://idp.example/oauth2/token");
        assert_eq!(c.scopes, ["read", "write", "admin:all"], "split on spaces and commas, repeats dropped");
        assert_eq!(c.audience.as_deref(), Some("https://api.example"));
        assert_eq!(
            c.form(),
            "grant_type=client_credentials&scope=read+write+admin%3Aall&audience=https%3A%2F%2Fapi.example"
        );
        assert!(!format!("{c:?}").contains(SECRET), "no secret in Debug: {c:?}");
    }

    #[test]
    fn basic_client_authentication_form_encodes_both_parts() {
        let pairs = [("tokenURL", "https://idp.example/t"), ("clientID", "my client"), ("clientSecret", "a:b/c")];
        let c = from_secret("oauth", &data(&pairs)).unwrap();
        let v = c.basic_authorization();
        assert!(v.is_sensitive());
        use base64::Engine as _;
        let encoded = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:a%3Ab%2Fc");
        assert_eq!(c.form(), "grant_type=client_credentials", "no scope or audience parameter when unset");
    }

    #[test]
    fn missing_and_conflicting_keys_name_the_keys_not_the_values() {
        for missing in ["tokenURL", "clientID", "clientSecret"] {
            let pairs: Vec<_> = full().into_iter().filter(|(k, _)| *k != missing).collect();
            let e = from_secret("oauth", &data(&pairs)).unwrap_err();
            assert_eq!(e.reason, Reason::SecretNotFound);
            assert!(e.message.contains(&format!("{missing:?}")) && e.message.contains("\"oauth\""), "{}", e.message);
            assert!(!e.message.contains(SECRET), "{}", e.message);
        }
        let mut pairs = full();
        pairs.push(("bearerToken", "static-token"));
        pairs.push(("username", "u"));
        let e = from_secret("oauth", &data(&pairs)).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(e.message.contains("username, bearerToken") && e.message.contains("tokenURL"), "{}", e.message);
        assert!(!e.message.contains("static-token") && !e.message.contains(SECRET), "{}", e.message);
    }

    #[test]
    fn bad_token_urls_and_scopes_are_refused() {
        for url in ["ftp://idp.example/t", "not a url", "https://user:pw@idp.example/t"] {
            let mut pairs = full();
            pairs[0] = ("tokenURL", url);
            let e = from_secret("oauth", &data(&pairs)).unwrap_err();
            assert!(e.message.contains("\"tokenURL\""), "{url}: {}", e.message);
            assert!(!e.message.contains("pw"), "{}", e.message);
        }
        let mut pairs = full();
        pairs.push(("scopes", "read \"write\""));
        let e = from_secret("oauth", &data(&pairs)).unwrap_err();
        assert!(e.message.contains("\"scopes\"") && e.message.contains("RFC 6749 §3.3"), "{}", e.message);
    }

    fn secret() -> SecretBytes {
        SecretBytes(SECRET.as_bytes().to_vec())
    }

    #[test]
    fn a_token_response_gives_a_sensitive_bearer_value_and_its_lifetime() {
        let body = br#"{"access_token":"tok-1","token_type":"bearer","expires_in":3599,"scope":"read"}"#;
        let issued = interpret("u", StatusCode::OK, body, &secret()).unwrap();
        assert_eq!(issued.authorization.to_str().unwrap(), "Bearer tok-1");
        assert!(issued.authorization.is_sensitive());
        assert_eq!(issued.expires_in, Some(Duration::from_secs(3599)));
        let body = br#"{"access_token":"tok-1","token_type":"Bearer","expires_in":"60"}"#;
        assert_eq!(interpret("u", StatusCode::OK, body, &secret()).unwrap().expires_in, Some(Duration::from_secs(60)));
        let body = br#"{"access_token":"tok-1","token_type":"Bearer"}"#;
        assert_eq!(interpret("u", StatusCode::OK, body, &secret()).unwrap().expires_in, None);
    }

    #[test]
    fn oauth2_errors_are_named_and_nothing_secret_is_echoed() {
        let body = br#"{"error":"invalid_client","error_description":"Client authentication failed."}"#;
        let e = interpret("http://idp/t", StatusCode::UNAUTHORIZED, body, &secret()).unwrap_err();
        assert!(matches!(&e, TokenError::Rejected { error, .. } if error == "invalid_client"), "{e:?}");
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "the token endpoint http://idp/t answered HTTP 401 Unauthorized with OAuth2 error \"invalid_client\" \
             (Client authentication failed.)"
        );
        let echo = format!(r#"{{"error":"invalid_client","error_description":"secret {SECRET} is wrong"}}"#);
        let e = interpret("u", StatusCode::BAD_REQUEST, echo.as_bytes(), &secret()).unwrap_err();
        assert!(!e.to_string().contains(SECRET), "{e}");
        let e = interpret("u", StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>", &secret()).unwrap_err();
        assert!(matches!(e, TokenError::Status { .. }) && !e.is_permanent(), "{e:?}");
        let e = interpret("u", StatusCode::OK, b"<html>login</html>", &secret()).unwrap_err();
        assert!(matches!(e, TokenError::Malformed { .. }) && e.is_permanent(), "{e:?}");
        let body = br#"{"access_token":"tok-mac","token_type":"mac"}"#;
        let e = interpret("u", StatusCode::OK, body, &secret()).unwrap_err();
        assert!(matches!(e, TokenError::UnsupportedTokenType { .. }) && !e.to_string().contains("tok-mac"), "{e}");
        let body = br#"{"access_token":"tok-2","token_type":"bearer","expires_in":"soon-tok-2"}"#;
        let e = interpret("u", StatusCode::OK, body, &secret()).unwrap_err();
        assert!(!e.to_string().contains("tok-2"), "{e}");
    }

    #[test]
    fn the_failure_names_the_secret_and_keeps_the_artifact() {
        let c = from_secret("oauth", &data(&full())).unwrap();
        let e = TokenError::Rejected {
            url: "https://idp.example/oauth2/token".into(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: None,
        };
        let Outcome::Failed(f) = c.failure(&e) else { panic!("a failure keeps the last artifact") };
        assert_eq!((f.reason, f.kind, f.retry), (Reason::FetchFailed, "oauth2_token", Retry::AtInterval));
        assert!(f.message.starts_with("spec.generator.http.secretRef: Secret \"oauth\""), "{}", f.message);
        assert!(f.message.contains("\"invalid_client\"") && !f.message.contains(SECRET), "{}", f.message);
    }

    #[tokio::test]
    async fn require_https_refuses_a_plain_http_token_url() {
        use crate::controller::upstream::egress::EgressPolicy;
        let mut pairs = full();
        pairs[0] = ("tokenURL", "http://192.0.2.1:9/oauth2/token");
        let client = from_secret("oauth", &data(&pairs)).unwrap();
        let strict = Fetcher::with_policy("t", EgressPolicy::default().requiring_https(true));
        let e =
            request_token(&strict, &client, &TlsSettings::default(), None, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, TokenError::PlainHttp(_)), "{e}");
        assert!(e.is_permanent());
        let message = client.failure(&e).message();
        assert!(
            message.contains(
                "the token endpoint is refused: http://192.0.2.1:9/oauth2/token is plain http://; \
                 fetch.require_https allows only https:// URLs; retrying at the next interval"
            ),
            "{message}"
        );
        assert!(!message.contains(SECRET));
    }
}
