//! OAuth2 client credentials (RFC 6749 §4.4) end to end: a real OAuth2 server (Ory Hydra, built
//! by `tests/oauth2/hydra.sh`), the real kube-apiserver, and a loopback upstream that serves its
//! payload only to a token the OAuth2 server's introspection endpoint calls active.
//!
//! Needs `OAUTH2_SERVER_BIN` (see `tests/oauth2/hydra.sh`) besides the control plane. The TLS
//! test puts a loopback HTTPS fixture in the token endpoint's place: what it checks is the
//! source's TLS settings reaching the token request, which needs a server that requires a client
//! certificate, not a second OAuth2 implementation.

use externalsource_core::config::parse_cidr;
use externalsource_core::controller::api::ExternalSource;
use externalsource_core::controller::upstream::egress::EgressPolicy;
use externalsource_tests::controller::Options;
use externalsource_tests::fixture::mutual_tls_material;
use externalsource_tests::hidden::assert_never_shown;
use externalsource_tests::log_capture::Captured;
use externalsource_tests::oauth2_server::{OAuth2Server, ProtectedUpstream};
use externalsource_tests::sources::{artifact, download, ready, request_reconcile, source, wait_failing, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, free_port, sha256};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

const CLIENT_ID: &str = "flux-reader";
const CLIENT_SECRET: &str = "client-secret-9f3a7c1e-not-for-logs";
const WRONG_SECRET: &str = "wrong-secret-5b2d-not-for-logs";

fn secret(name: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap()
}

fn spec_with_secret(url: &str, secret: &str) -> serde_json::Value {
    json!({"generator": {"type": "http", "http": {"url": url, "secretRef": {"name": secret}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_from_a_real_oauth2_server() {
    let log = Captured::install();
    let hydra = OAuth2Server::start().await;
    hydra.create_client(CLIENT_ID, CLIENT_SECRET, "read write").await;
    let upstream = ProtectedUpstream::start(&hydra, "read", r#"{"v":1}"#).await;

    let cp = ControlPlane::start().await;
    let ns = cp.namespace("oauth2").await;
    // 127.0.0.2 stands for a network the operator denied (fetch.deny_cidrs).
    let deny = vec![parse_cidr("127.0.0.2/32").unwrap()];
    let ctl =
        TestController::start(cp.client(), Options { egress: EgressPolicy::new(deny, None), ..Options::default() })
            .await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let pp = PostParams::default();

    // A valid client: the token it gets opens the upstream.
    let creds = json!({
        "tokenURL": hydra.token_url(), "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": "read",
    });
    secrets.create(&pp, &secret("oauth", creds)).await.unwrap();
    let url = upstream.url("/items");
    api.create(&pp, &source("api", &url, spec_with_secret(&url, "oauth"))).await.unwrap();
    let es = wait_ready(&api, "api", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));
    assert_eq!(upstream.distinct_tokens().len(), 1, "one token: {:?}", upstream.tokens().len());
    assert_eq!(upstream.refused(), 0, "the first token was accepted");

    // A second fetch reuses the cached token: no new token request.
    upstream.set_payload(r#"{"v":2}"#);
    let es2 = request_reconcile(&api, "api", "second").await;
    assert_ne!(artifact(&es2).revision, artifact(&es).revision, "the new payload is published");
    assert_eq!(upstream.tokens().len(), 2);
    assert_eq!(upstream.distinct_tokens().len(), 1, "the cached token was sent again");

    // The token is revoked mid-way: the upstream refuses it once, the controller gets a new
    // token and retries once.
    let first = upstream.distinct_tokens()[0].clone();
    hydra.revoke(CLIENT_ID, CLIENT_SECRET, &first).await;
    upstream.set_payload(r#"{"v":3}"#);
    let es3 = request_reconcile(&api, "api", "after-revoke").await;
    let (status, _, message) = ready(&es3).unwrap();
    assert_eq!(status, "True", "{message}");
    assert_ne!(artifact(&es3).revision, artifact(&es2).revision);
    assert_eq!(upstream.refused(), 1, "one 401, to the revoked token");
    let tokens = upstream.tokens();
    assert_eq!(tokens.len(), 4, "the refused request and one retry");
    assert_eq!(tokens[2], first);
    assert_ne!(tokens[3], first, "the retry carries a new token");
    let good = artifact(&es3);

    // A wrong client secret: Ready=False naming the Secret and the OAuth2 error, never the
    // secret; the last good artifact stays published.
    let wrong = json!({
        "tokenURL": hydra.token_url(), "clientID": CLIENT_ID, "clientSecret": WRONG_SECRET, "scopes": "read",
    });
    let mut current = secrets.get("oauth").await.unwrap();
    current.data = None;
    current.string_data = Some(serde_json::from_value(wrong).unwrap());
    secrets.replace("oauth", &pp, &current).await.unwrap();
    let message = wait_failing(&api, "api", "FetchFailed").await;
    assert!(message.contains("secretRef: Secret \"oauth\""), "names the Secret: {message}");
    assert!(message.contains("\"invalid_client\""), "names the OAuth2 error: {message}");
    assert!(message.contains("RFC 6749 §4.4"), "names the rule: {message}");
    let es = api.get("api").await.unwrap();
    assert_eq!(artifact(&es), good, "the last good artifact stays");
    let (code, bytes) = download(&good.url).await;
    assert_eq!((code, sha256(&bytes)), (200, good.digest.clone()));
    assert_eq!(upstream.tokens().len(), 4, "nothing reached the upstream without a token");

    // A token endpoint in a denied network is refused by the egress policy before any request.
    let denied_url = hydra.token_url().replace("127.0.0.1", "127.0.0.2");
    let creds = json!({"tokenURL": denied_url, "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET});
    secrets.create(&pp, &secret("denied", creds)).await.unwrap();
    api.create(&pp, &source("denied", &url, spec_with_secret(&url, "denied"))).await.unwrap();
    let message = wait_failing(&api, "denied", "FetchFailed").await;
    assert!(message.contains("Secret \"denied\"") && message.contains("token endpoint"), "{message}");
    assert!(message.contains("fetch.deny_cidrs entry 127.0.0.2/32"), "names the egress rule: {message}");

    // An unreachable token endpoint, and one that answers a login page instead of JSON.
    let closed = format!("http://127.0.0.1:{}/oauth2/token", free_port());
    let creds = json!({"tokenURL": closed, "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET});
    secrets.create(&pp, &secret("unreachable", creds)).await.unwrap();
    api.create(&pp, &source("unreachable", &url, spec_with_secret(&url, "unreachable"))).await.unwrap();
    let message = wait_failing(&api, "unreachable", "FetchFailed").await;
    assert!(message.contains("Secret \"unreachable\"") && message.contains("is unreachable"), "{message}");
    let login = Upstream::start(Reply::ok("<html>please log in</html>")).await;
    let creds = json!({"tokenURL": login.url("/token"), "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET});
    secrets.create(&pp, &secret("html", creds)).await.unwrap();
    api.create(&pp, &source("html", &url, spec_with_secret(&url, "html"))).await.unwrap();
    let message = wait_failing(&api, "html", "FetchFailed").await;
    assert!(message.contains("Secret \"html\"") && message.contains("not a JSON object"), "{message}");
    let token_request = &login.requests()[0];
    assert_eq!(token_request.method, "POST");
    assert_eq!(&token_request.body[..], b"grant_type=client_credentials");
    let basic = token_request.headers.get("authorization").unwrap().to_str().unwrap();
    assert!(basic.starts_with("Basic "), "client authentication with HTTP Basic (RFC 6749 §2.3.1)");

    // Neither the client secrets nor any token appear in statuses, Events, metrics or the log.
    let mut hidden: Vec<String> = upstream.distinct_tokens();
    hidden.push(CLIENT_SECRET.into());
    hidden.push(WRONG_SECRET.into());
    let log = log.text();
    assert!(log.contains("obtained an OAuth2 access token"), "the log is captured");
    let events = assert_never_shown(&cp.client(), &ns, &ctl.registry, &log, &hidden).await;
    assert!(events.iter().any(|e| e.contains("invalid_client")), "the failure was reported: {events:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_request_uses_the_sources_ca_and_client_certificate() {
    Captured::install();
    let m = mutual_tls_material();
    let issued = r#"{"access_token":"tok-over-mtls","token_type":"bearer","expires_in":300}"#;
    let token = Upstream::start_mtls(
        Reply::ok(issued).with_header("content-type", "application/json"),
        &m.server_cert,
        &m.server_key,
        &m.ca,
    )
    .await;
    let upstream = Upstream::start_mtls(
        Reply::ok("mtls payload").requiring("authorization", "Bearer tok-over-mtls"),
        &m.server_cert,
        &m.server_key,
        &m.ca,
    )
    .await;
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("oauth2-tls").await;
    let _ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let pp = PostParams::default();
    let creds = json!({"tokenURL": token.url("/token"), "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET});
    secrets.create(&pp, &secret("oauth", creds.clone())).await.unwrap();
    // The same client in a second Secret: a token is cached per Secret, so this one's source
    // asks the token endpoint itself.
    secrets.create(&pp, &secret("oauth-again", creds)).await.unwrap();
    let tls = json!({"tls.crt": m.client_cert, "tls.key": m.client_key, "ca.crt": m.ca});
    secrets.create(&pp, &secret("client-tls", tls)).await.unwrap();
    secrets.create(&pp, &secret("ca-only", json!({"ca.crt": m.ca}))).await.unwrap();
    let url = upstream.url("/");
    let spec = |oauth: &str, cert: &str| {
        json!({"generator": {"type": "http", "http": {
            "url": url, "secretRef": {"name": oauth}, "certSecretRef": {"name": cert},
        }}})
    };

    // Both endpoints require a client certificate signed by the test CA and present a server
    // certificate only that CA vouches for: the token request used the source's CA and identity.
    api.create(&pp, &source("mtls", &url, spec("oauth", "client-tls"))).await.unwrap();
    let es = wait_ready(&api, "mtls", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));
    assert_eq!(token.request_count(), 1);

    // Without the client certificate the token endpoint's handshake fails: no token, no fetch.
    let fetches = upstream.request_count();
    api.create(&pp, &source("no-identity", &url, spec("oauth-again", "ca-only"))).await.unwrap();
    let message = wait_failing(&api, "no-identity", "FetchFailed").await;
    assert!(message.contains("Secret \"oauth-again\"") && message.contains("is unreachable"), "{message}");
    assert_eq!(token.request_count(), 1, "the handshake failed before any request");
    assert_eq!(upstream.request_count(), fetches, "nothing was fetched without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_a_paged_source_carries_one_cached_token() {
    let hydra = OAuth2Server::start().await;
    hydra.create_client(CLIENT_ID, CLIENT_SECRET, "read").await;
    let upstream = ProtectedUpstream::start(&hydra, "read", "{}").await;
    upstream.set_page("/items", r#"{"items":[{"id":1}],"next":"/items?page=2"}"#);
    upstream.set_page("/items?page=2", r#"{"items":[{"id":2}],"next":"/items?page=3"}"#);
    upstream.set_page("/items?page=3", r#"{"items":[{"id":3}],"next":null}"#);
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("oauth2-pages").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let creds =
        json!({"tokenURL": hydra.token_url(), "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": "read"});
    secrets.create(&PostParams::default(), &secret("oauth", creds)).await.unwrap();
    let url = upstream.url("/items");
    let mut spec = spec_with_secret(&url, "oauth");
    spec["generator"]["http"]["pagination"] = json!({"type": "jq", "next": ".next", "items": ".items"});
    spec["transform"] = json!({"jq": "map(.id)"});
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("paged", &url, spec)).await.unwrap();
    let es = wait_ready(&api, "paged", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));
    // Three pages (a reconcile that follows the first may have begun by now).
    assert!(upstream.tokens().len() >= 3, "{} requests", upstream.tokens().len());
    assert_eq!(upstream.refused(), 0, "every page carried a token the upstream accepted");
    assert_eq!(upstream.distinct_tokens().len(), 1, "one token, obtained once, for all pages");
    ctl.stop().await;
}
