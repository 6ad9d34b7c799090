//! Upstream authentication like Flux's sources, against real loopback servers that check it:
//! `secretRef` (basic, bearer), `certSecretRef` (mTLS, CA) and `proxySecretRef` (an HTTP proxy
//! that requires its own credentials). Each missing key stalls the source naming key and
//! Secret; fixing the Secret recovers without touching the source.

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::fixture::mutual_tls_material;
use externalsource_tests::proxy::Proxy;
use externalsource_tests::sources::{artifact, download, request_reconcile, source, wait_failing, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, sha256};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn secret(name: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap()
}

/// Replaces the Secret's data with exactly `data` (keys not named are removed).
async fn put_secret(secrets: &Api<Secret>, name: &str, data: serde_json::Value) {
    let mut current = secrets.get(name).await.unwrap();
    current.data = Some(
        data.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.as_str().unwrap().as_bytes().to_vec())))
            .collect(),
    );
    current.string_data = None;
    secrets.replace(name, &PostParams::default(), &current).await.unwrap();
}

fn http_spec(url: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut http = json!({"url": url});
    for (k, v) in extra.as_object().unwrap() {
        http[k] = v.clone();
    }
    json!({"generator": {"type": "http", "http": http}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_credentials_reach_an_upstream_that_checks_them() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("auth").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);

    // Basic: base64("flux:s3cret").
    let basic = Upstream::start(Reply::ok("basic data").requiring("authorization", "Basic Zmx1eDpzM2NyZXQ=")).await;
    secrets.create(&PostParams::default(), &secret("basic", json!({"username": "flux"}))).await.unwrap();
    let spec = http_spec(&basic.url("/"), json!({"secretRef": {"name": "basic"}}));
    api.create(&PostParams::default(), &source("basic", &basic.url("/"), spec)).await.unwrap();
    let message = wait_failing(&api, "basic", "SecretNotFound").await;
    assert!(message.contains("\"basic\"") && message.contains("\"password\""), "names Secret and key: {message}");
    assert!(message.contains("spec.generator.http.secretRef"), "{message}");
    assert_eq!(basic.request_count(), 0, "nothing is fetched with half a credential");

    // The missing key arrives: the Secret watch reconciles the source.
    put_secret(&secrets, "basic", json!({"username": "flux", "password": "s3cret"})).await;
    let es = wait_ready(&api, "basic", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));
    assert!(!serde_json::to_string(&es.status).unwrap().contains("s3cret"), "no credential in the status");

    // A wrong password: the upstream says 401, the last good artifact stays.
    put_secret(&secrets, "basic", json!({"username": "flux", "password": "wrong"})).await;
    let message = wait_failing(&api, "basic", "FetchFailed").await;
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("wrong"), "{message}");
    let es = api.get("basic").await.unwrap();
    assert_eq!(artifact(&es).digest, sha256(&bytes), "the last good artifact is kept");

    // Bearer.
    let bearer = Upstream::start(Reply::ok("bearer data").requiring("authorization", "Bearer tok-42")).await;
    secrets.create(&PostParams::default(), &secret("bearer", json!({"bearerToken": "tok-42\n"}))).await.unwrap();
    let spec = http_spec(&bearer.url("/"), json!({"secretRef": {"name": "bearer"}}));
    api.create(&PostParams::default(), &source("bearer", &bearer.url("/"), spec)).await.unwrap();
    wait_ready(&api, "bearer", "True").await;
    assert_eq!(bearer.requests().last().unwrap().status, 200);

    // Both kinds in one Secret is ambiguous; the same header from two places too.
    put_secret(&secrets, "bearer", json!({"bearerToken": "tok-42", "username": "u", "password": "p"})).await;
    let message = wait_failing(&api, "bearer", "InvalidSpec").await;
    assert!(message.contains("bearerToken") && !message.contains("tok-42"), "{message}");
    put_secret(&secrets, "bearer", json!({"bearerToken": "tok-42"})).await;
    wait_ready(&api, "bearer", "True").await;
    secrets.create(&PostParams::default(), &secret("hdrs", json!({"Authorization": "Bearer other"}))).await.unwrap();
    api.patch(
        "bearer",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"generator": {"http": {"headersSecretRef": {"name": "hdrs"}}}}})),
    )
    .await
    .unwrap();
    let message = wait_failing(&api, "bearer", "InvalidSpec").await;
    assert!(message.contains("Authorization") && message.contains("headersSecretRef"), "{message}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_cert_secret_ref_passes_mtls() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("mtls").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let m = mutual_tls_material();
    let upstream = Upstream::start_mtls(Reply::ok("mtls data"), &m.server_cert, &m.server_key, &m.ca).await;

    // The CA alone: the server is trusted, but it wants a client certificate.
    secrets.create(&PostParams::default(), &secret("ca-only", json!({"ca.crt": m.ca}))).await.unwrap();
    let spec = http_spec(&upstream.url("/"), json!({"certSecretRef": {"name": "ca-only"}}));
    api.create(&PostParams::default(), &source("no-client-cert", &upstream.url("/"), spec)).await.unwrap();
    let message = wait_failing(&api, "no-client-cert", "FetchFailed").await;
    assert!(message.contains(&upstream.url("/")), "names the URL: {message}");
    assert_eq!(upstream.request_count(), 0, "the handshake failed before any request");

    // Certificate and key: the handshake passes.
    secrets
        .create(
            &PostParams::default(),
            &secret("client-tls", json!({"ca.crt": m.ca, "tls.crt": m.client_cert, "tls.key": m.client_key})),
        )
        .await
        .unwrap();
    let spec = http_spec(&upstream.url("/"), json!({"certSecretRef": {"name": "client-tls"}}));
    api.create(&PostParams::default(), &source("mtls", &upstream.url("/"), spec)).await.unwrap();
    let es = wait_ready(&api, "mtls", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!(code, 200);
    assert_eq!(sha256(&bytes), artifact(&es).digest);
    let seen = upstream.requests();
    assert!(!seen.is_empty() && seen.iter().all(|r| r.status == 200), "every request passed the mTLS handshake");

    // A redirect to another origin is refused, naming what it protected: the client certificate.
    let elsewhere = Upstream::start(Reply::ok("elsewhere")).await;
    let moved = Reply::status(302).with_header("location", &elsewhere.url("/"));
    let redirecting = Upstream::start_mtls(moved, &m.server_cert, &m.server_key, &m.ca).await;
    let spec = http_spec(&redirecting.url("/"), json!({"certSecretRef": {"name": "client-tls"}}));
    api.create(&PostParams::default(), &source("redirected", &redirecting.url("/"), spec)).await.unwrap();
    let message = wait_failing(&api, "redirected", "FetchFailed").await;
    assert!(message.contains("another origin"), "{message}");
    assert!(message.contains("a client certificate (certSecretRef)"), "names what it protected: {message}");
    assert_eq!(elsewhere.request_count(), 0, "the redirect was not followed");

    // Half an identity is a configuration problem naming the key.
    put_secret(&secrets, "client-tls", json!({"ca.crt": m.ca, "tls.crt": m.client_cert})).await;
    let message = wait_failing(&api, "mtls", "SecretNotFound").await;
    assert!(message.contains("\"client-tls\"") && message.contains("\"tls.key\""), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_the_proxy_of_proxy_secret_ref() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("proxy").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let upstream = Upstream::start(Reply::ok("via proxy")).await;
    let proxy = Proxy::start(Some("px-user:px-pass")).await;

    secrets
        .create(
            &PostParams::default(),
            &secret("proxy", json!({"address": proxy.address(), "username": "px-user", "password": "px-pass"})),
        )
        .await
        .unwrap();
    let spec = http_spec(&upstream.url("/data"), json!({"proxySecretRef": {"name": "proxy"}}));
    api.create(&PostParams::default(), &source("proxied", &upstream.url("/data"), spec)).await.unwrap();
    let es = wait_ready(&api, "proxied", "True").await;
    let target = format!("localhost:{}", upstream.url("/").rsplit(':').next().unwrap().trim_end_matches('/'));
    let targets = proxy.targets();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == target),
        "requests went through the proxy: {targets:?}"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), targets.len(), "every upstream request came through the proxy");
    assert!(seen.iter().all(|r| r.headers.get("proxy-authorization").is_none()), "proxy credentials stop at the proxy");
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));

    // Wrong proxy credentials: 407, named; the artifact stays.
    put_secret(&secrets, "proxy", json!({"address": proxy.address(), "username": "px-user", "password": "nope"})).await;
    let message = wait_failing(&api, "proxied", "FetchFailed").await;
    assert!(message.contains("407"), "{message}");
    assert!(!message.contains("nope"), "{message}");
    assert_eq!(artifact(&api.get("proxied").await.unwrap()).digest, artifact(&es).digest);

    // No address: stalled, naming the key.
    put_secret(&secrets, "proxy", json!({"username": "px-user", "password": "px-pass"})).await;
    let message = wait_failing(&api, "proxied", "SecretNotFound").await;
    assert!(message.contains("\"address\"") && message.contains("\"proxy\""), "{message}");

    // Without proxySecretRef (and no proxy in the environment) the controller connects directly.
    let before = proxy.targets().len();
    let direct = source("direct", &upstream.url("/direct"), json!({}));
    api.create(&PostParams::default(), &direct).await.unwrap();
    wait_ready(&api, "direct", "True").await;
    request_reconcile(&api, "direct", "again").await;
    assert_eq!(proxy.targets().len(), before);
    ctl.stop().await;
}
