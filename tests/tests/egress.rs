//! The egress policy of fetches (SSRF guard) against real servers on loopback: denied IP
//! literals, names that resolve only to denied addresses, redirects into denied networks, and
//! Secret headers that never follow a redirect to another origin.

use externalsource_core::config::parse_cidr;
use externalsource_core::controller::api::ExternalSource;
use externalsource_core::controller::upstream::egress::EgressPolicy;
use externalsource_tests::controller::Options;
use externalsource_tests::fixture::tls_material;
use externalsource_tests::sources::{WAIT, ready, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

fn deny(extra: &[&str]) -> Options {
    let mut nets: Vec<_> =
        externalsource_core::config::DEFAULT_DENY_CIDRS.iter().chain(extra).map(|c| parse_cidr(c).unwrap()).collect();
    nets.dedup();
    Options { egress: EgressPolicy::new(nets, None), ..Options::default() }
}

async fn failure(api: &Api<ExternalSource>, name: &str) -> (String, String) {
    let es = eventually(&format!("{name} Ready=False"), WAIT, || async {
        let es = api.get(name).await.ok()?;
        ready(&es).filter(|r| r.0 == "False" && r.1 != "Progressing").map(|_| es)
    })
    .await;
    let (_, reason, message) = ready(&es).unwrap();
    (reason, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_addresses_are_never_contacted_on_any_hop() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("egress").await;
    let ctl = TestController::start(cp.client(), deny(&["127.0.0.2/32"])).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let inside = Upstream::start_at("127.0.0.2", Reply::ok("internal secrets")).await;

    // An IP literal in a denied network.
    api.create(&PostParams::default(), &source("literal", &inside.url_by_ip("/"), json!({}))).await.unwrap();
    let (reason, message) = failure(&api, "literal").await;
    assert_eq!(reason, "FetchFailed");
    assert!(message.contains("denied by fetch.deny_cidrs entry 127.0.0.2/32"), "{message}");

    // An allowed server redirecting into the denied network.
    let outside = Upstream::start(Reply::status(302).with_header("location", &inside.url_by_ip("/steal"))).await;
    api.create(&PostParams::default(), &source("redirect", &outside.url("/"), json!({}))).await.unwrap();
    let (_, message) = failure(&api, "redirect").await;
    assert!(message.contains("127.0.0.2") && message.contains("fetch.deny_cidrs"), "{message}");
    assert_eq!(outside.request_count(), 1, "the allowed hop was asked once");
    assert_eq!(inside.request_count(), 0, "the denied address was never contacted");

    // Control: an allowed address is fetched.
    let ok = Upstream::start(Reply::ok("public")).await;
    api.create(&PostParams::default(), &source("allowed", &ok.url_by_ip("/"), json!({}))).await.unwrap();
    wait_ready(&api, "allowed", "True").await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_checked_when_resolved() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("egress-names").await;
    let ctl = TestController::start(cp.client(), deny(&["127.0.0.0/8", "::1/128"])).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let fixture = Upstream::start(Reply::ok("x")).await;
    // `localhost` resolves to 127.0.0.1 and ::1, both denied.
    api.create(&PostParams::default(), &source("name", &fixture.url("/"), json!({}))).await.unwrap();
    let (reason, message) = failure(&api, "name").await;
    assert_eq!(reason, "FetchFailed");
    assert!(message.contains("denied by fetch.deny_cidrs"), "{message}");
    assert!(message.contains("next interval"), "a policy refusal is not retried with backoff: {message}");
    assert_eq!(fixture.request_count(), 0);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_headers_never_follow_a_scheme_downgrade() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("egress-downgrade").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let (ca, cert, key) = tls_material();
    let tls = Upstream::start_tls(Reply::ok("x"), &cert, &key).await;
    // https://localhost:P → http://localhost:P: same host and port, another scheme.
    let downgrade = tls.url("/").replacen("https://", "http://", 1);
    tls.set(Reply::status(302).with_header("location", &downgrade));
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    for (name, data) in [("hdrs", json!({"Authorization": "Bearer t0k"})), ("ca", json!({"ca.crt": ca}))] {
        let secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let spec = json!({"generator": {"type": "http", "http": {
        "url": tls.url("/"), "headersSecretRef": {"name": "hdrs"}, "caBundleSecretRef": {"name": "ca", "key": "ca.crt"},
    }}});
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("down", &tls.url("/"), spec)).await.unwrap();
    let (reason, message) = failure(&api, "down").await;
    assert_eq!(reason, "FetchFailed");
    assert!(message.contains("another origin"), "{message}");
    assert!(
        message.contains("credential headers (headersSecretRef, secretRef or serviceAccountName)"),
        "names what it protected: {message}"
    );
    assert!(!message.contains("t0k"), "{message}");
    assert_eq!(tls.request_count(), 1, "only the first, encrypted hop carried the header");
    ctl.stop().await;
}
