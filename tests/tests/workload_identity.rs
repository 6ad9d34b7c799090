//! Workload identity (`spec.generator.http.serviceAccountName`) end to end: the controller gets
//! ServiceAccount tokens from the real kube-apiserver (TokenRequest), and a loopback upstream
//! accepts only tokens the same API server authenticates for the upstream's origin (TokenReview),
//! answering 401 to anything else.
//!
//! The second test runs the controller with the ServiceAccount token and the ClusterRole of
//! `deploy/base/rbac` instead of an administrator's credentials: the role grants what workload
//! identity needs, and without its `serviceaccounts/token` rule the request is denied with its
//! own message. The operator switch `fetch.workload_identity` is checked there too.

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::hidden::assert_never_shown;
use externalsource_tests::log_capture::Captured;
use externalsource_tests::protected_upstream::{ProtectedUpstream, authenticated_for};
use externalsource_tests::sources::{
    WAIT, artifact, download, ready, request_reconcile, source, wait_failing, wait_ready,
};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually, repo_root, sha256};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const ACCOUNT_FIELD: &str = "spec.generator.http.serviceAccountName";

fn identity_spec(url: &str, account: &str) -> serde_json::Value {
    json!({"generator": {"type": "http", "http": {"url": url, "serviceAccountName": account}}})
}

async fn create_account(client: &kube::Client, ns: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &sa).await.unwrap();
}

/// Replaces the source's `spec.generator.http` fields with `http` (merge patch: null removes).
async fn patch_http(api: &Api<ExternalSource>, name: &str, http: serde_json::Value) {
    let patch = json!({"spec": {"generator": {"http": http}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// The claims of a JWT, read without checking it (the API server's TokenReview did that).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_opens_an_upstream_that_reviews_it() {
    let log = Captured::install();
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("identity").await;
    let upstream = ProtectedUpstream::start_token_review(cp.client(), r#"{"v":1}"#).await;
    let origin = upstream.url("");
    create_account(&cp.client(), &ns, "reader").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let pp = PostParams::default();

    // The token of "reader", for the URL's origin: the upstream's TokenReview accepts it.
    let url = upstream.url("/items");
    api.create(&pp, &source("api", &url, identity_spec(&url, "reader"))).await.unwrap();
    let es = wait_ready(&api, "api", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));
    assert_eq!((upstream.tokens().len(), upstream.refused()), (1, 0), "one request, accepted");
    let first = upstream.tokens()[0].clone();
    let issued = claims(&first);
    assert_eq!(issued["aud"], json!([origin]), "the default audience is the URL's origin");
    assert_eq!(issued["sub"], "system:serviceaccount:identity:reader");
    let lifetime = issued["exp"].as_i64().unwrap() - issued["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 3600, "asked for an hour");

    // The next fetch reuses the cached token.
    upstream.set_payload(r#"{"v":2}"#);
    let es2 = request_reconcile(&api, "api", "second").await;
    assert_ne!(artifact(&es2).revision, artifact(&es).revision, "the new payload is published");
    assert_eq!(upstream.tokens(), vec![first.clone(), first.clone()], "the cached token was sent again");

    // The account is deleted and made again: the cached token (bound to the old account's UID)
    // is refused once, a new token is requested, and the fetch retried once.
    let accounts: Api<ServiceAccount> = Api::namespaced(cp.client(), &ns);
    accounts.delete("reader", &DeleteParams::default()).await.unwrap();
    eventually("the old token no longer authenticates", WAIT, || async {
        (!authenticated_for(&cp.client(), first.clone(), &origin).await).then_some(())
    })
    .await;
    create_account(&cp.client(), &ns, "reader").await;
    upstream.set_payload(r#"{"v":3}"#);
    let es3 = request_reconcile(&api, "api", "after-recreate").await;
    let (status, _, message) = ready(&es3).unwrap();
    assert_eq!(status, "True", "{message}");
    assert_ne!(artifact(&es3).revision, artifact(&es2).revision);
    let tokens = upstream.tokens();
    assert_eq!((tokens.len(), upstream.refused()), (4, 1), "the refused request and one retry");
    assert_eq!(tokens[2], first);
    assert_ne!(tokens[3], first, "the retry carries a new token");
    let good = artifact(&es3);

    // A token for another audience: the upstream refuses it; its own message, naming the
    // audience and the field to fix; the last good artifact stays.
    patch_http(&api, "api", json!({"audience": "https://elsewhere.example"})).await;
    let message = wait_failing(&api, "api", "FetchFailed").await;
    assert!(message.starts_with(&format!("{ACCOUNT_FIELD}: ")), "{message}");
    assert!(message.contains("(HTTP 401)") && message.contains("\"https://elsewhere.example\""), "{message}");
    assert!(message.contains("spec.generator.http.audience"), "says what to fix: {message}");
    assert_eq!(claims_of_last(&upstream)["aud"], json!(["https://elsewhere.example"]));
    let es = api.get("api").await.unwrap();
    assert_eq!(artifact(&es), good, "the last good artifact stays");
    let (code, bytes) = download(&good.url).await;
    assert_eq!((code, sha256(&bytes)), (200, good.digest.clone()));

    // A missing account: its own message; nothing reaches the upstream; the artifact stays.
    let requests = upstream.tokens().len();
    patch_http(&api, "api", json!({"audience": null, "serviceAccountName": "ghost"})).await;
    let message = wait_failing(&api, "api", "FetchFailed").await;
    assert!(
        message.starts_with(&format!("{ACCOUNT_FIELD}: ServiceAccount \"ghost\" not found in namespace \"identity\"")),
        "{message}"
    );
    assert_eq!(upstream.tokens().len(), requests, "no request without a token");
    assert_eq!(artifact(&api.get("api").await.unwrap()), good, "the last good artifact stays");

    // The account is created: the source recovers with the default audience.
    create_account(&cp.client(), &ns, "ghost").await;
    let es = request_reconcile(&api, "api", "ghost-created").await;
    assert_eq!(ready(&es).unwrap().0, "True", "{:?}", ready(&es));

    // Combined with secretRef: refused before anything is fetched, naming both fields.
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let creds = serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"bearerToken": "t"}}));
    secrets.create(&pp, &creds.unwrap()).await.unwrap();
    let mut both = identity_spec(&url, "reader");
    both["generator"]["http"]["secretRef"] = json!({"name": "creds"});
    api.create(&pp, &source("both", &url, both)).await.unwrap();
    let message = wait_failing(&api, "both", "InvalidSpec").await;
    assert!(
        message
            .starts_with(&format!("{ACCOUNT_FIELD}: \"reader\" cannot be combined with spec.generator.http.secretRef")),
        "{message}"
    );

    // Nor with an Authorization header from headersSecretRef.
    let headers = json!({"metadata": {"name": "hdrs"}, "stringData": {"Authorization": "Bearer static"}});
    secrets.create(&pp, &serde_json::from_value(headers).unwrap()).await.unwrap();
    let mut with_header = identity_spec(&url, "reader");
    with_header["generator"]["http"]["headersSecretRef"] = json!({"name": "hdrs"});
    api.create(&pp, &source("with-header", &url, with_header)).await.unwrap();
    let message = wait_failing(&api, "with-header", "InvalidSpec").await;
    assert!(
        message.starts_with(&format!("{ACCOUNT_FIELD}: \"reader\" conflicts with the Authorization key"))
            && message.contains("spec.generator.http.headersSecretRef"),
        "{message}"
    );

    // The token goes to the URL's origin only: a redirect to another origin is refused.
    let tokens_before = upstream.tokens().len();
    let redirector = Upstream::start(Reply::status(302).with_header("location", &url)).await;
    let moved = redirector.url("/moved");
    api.create(&pp, &source("redirected", &moved, identity_spec(&moved, "reader"))).await.unwrap();
    let message = wait_failing(&api, "redirected", "FetchFailed").await;
    assert!(message.contains("redirect to another origin (scheme, host or port) refused"), "{message}");
    assert!(message.contains("serviceAccountName"), "names what it protected: {message}");
    assert_eq!(upstream.tokens().len(), tokens_before, "the other origin got no token");
    let sent = redirector.requests()[0].headers.get("authorization").unwrap().to_str().unwrap().to_owned();
    let sent = sent.strip_prefix("Bearer ").unwrap();
    assert_eq!(claims(sent)["aud"], json!([redirector.url("")]), "a token for the URL's own origin");

    // No token in statuses, Events, metrics or the log.
    let mut hidden = upstream.distinct_tokens();
    hidden.push(sent.to_owned());
    assert!(hidden.len() >= 3, "{} tokens", hidden.len());
    let log = log.text();
    assert!(log.contains("obtained a ServiceAccount token"), "the log is captured");
    let events = assert_never_shown(&cp.client(), &ns, &ctl.registry, &log, &hidden).await;
    assert!(events.iter().any(|e| e.contains("not found in namespace")), "the failure was reported: {events:?}");
    ctl.stop().await;
}

fn claims_of_last(upstream: &ProtectedUpstream) -> serde_json::Value {
    claims(upstream.tokens().last().expect("a token was sent"))
}

/// A token of ServiceAccount `name` in `ns`, for the API server itself.
async fn token_of(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let granted = api.create_token_request(name, &PostParams::default(), &request).await.unwrap();
    granted.status.expect("a granted token").token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_rbac_grants_token_requests_and_the_switch_turns_them_off() {
    Captured::install();
    let cp = ControlPlane::start().await;
    let admin = cp.client();
    let system = cp.namespace("identity-system").await;
    let ns = cp.namespace("identity-rbac").await;
    let upstream = ProtectedUpstream::start_token_review(admin.clone(), "payload").await;

    // The controller's own ServiceAccount, bound to the ClusterRole deploy/base/rbac ships.
    create_account(&admin, &system, "externalsource-controller").await;
    let path = repo_root().join("deploy/base/rbac/cluster_role.yaml");
    let role: ClusterRole = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "externalsource-controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "externalsource-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": "externalsource-controller", "namespace": system}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&PostParams::default(), &binding).await.unwrap();
    let controller = cp.client_with_token(&token_of(&admin, &system, "externalsource-controller").await).await;
    let ctl = TestController::start(controller.clone(), Options::default()).await;

    create_account(&admin, &ns, "reader").await;
    create_account(&admin, &ns, "writer").await;
    let api: Api<ExternalSource> = Api::namespaced(admin.clone(), &ns);
    let pp = PostParams::default();
    let url = upstream.url("/");
    api.create(&pp, &source("granted", &url, identity_spec(&url, "reader"))).await.unwrap();
    let es = wait_ready(&api, "granted", "True").await;
    assert_eq!(upstream.refused(), 0, "{:?}", ready(&es));

    // Without the role's serviceaccounts/token rule, the API server denies the request.
    let mut reduced = roles.get("externalsource-controller").await.unwrap();
    let rules = reduced.rules.take().unwrap_or_default();
    let kept: Vec<_> = rules
        .into_iter()
        .filter(|r| !r.resources.as_ref().is_some_and(|res| res.iter().any(|x| x == "serviceaccounts/token")))
        .collect();
    reduced.rules = Some(kept);
    roles.replace("externalsource-controller", &pp, &reduced).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(controller, &ns);
    let request = TokenRequest::default();
    eventually("the reduced role in force", WAIT, || async {
        match accounts.create_token_request("writer", &pp, &request).await {
            Err(kube::Error::Api(s)) if s.code == 403 => Some(()),
            _ => None,
        }
    })
    .await;
    api.create(&pp, &source("denied", &url, identity_spec(&url, "writer"))).await.unwrap();
    let message = wait_failing(&api, "denied", "FetchFailed").await;
    assert!(message.starts_with(&format!("{ACCOUNT_FIELD}: the API server denied")), "{message}");
    assert!(message.contains("(HTTP 403") && message.contains("serviceaccounts/token"), "{message}");
    assert!(message.contains("ServiceAccount \"writer\" in namespace \"identity-rbac\""), "{message}");
    ctl.stop().await;

    // The operator's switch off: the source is not Ready, naming the key; nothing is fetched.
    let fetched = upstream.tokens().len();
    let ctl = TestController::start(admin.clone(), Options { workload_identity: false, ..Options::default() }).await;
    api.create(&pp, &source("switched-off", &url, identity_spec(&url, "reader"))).await.unwrap();
    let message = wait_failing(&api, "switched-off", "Unsupported").await;
    assert!(message.starts_with(&format!("{ACCOUNT_FIELD}: \"reader\"")), "{message}");
    assert!(message.contains("fetch.workload_identity = false"), "names the key: {message}");
    assert_eq!(upstream.tokens().len(), fetched, "nothing was fetched");
    ctl.stop().await;
}
