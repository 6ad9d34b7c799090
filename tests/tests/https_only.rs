//! `fetch.require_https` against real servers on loopback: a plain `http://` source URL is a
//! configuration problem, an `https://` source is fetched, and an `https://` upstream that
//! redirects to `http://` is refused on that hop while the last artifact stays served.

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::fixture::tls_material;
use externalsource_tests::sources::{artifact, download, request_reconcile, source, wait_failing, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

fn strict() -> Options {
    Options { require_https: true, ..Options::default() }
}

fn condition(es: &ExternalSource, type_: &str) -> Option<(String, String)> {
    let c = es.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_url_is_a_configuration_problem() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("https-only").await;
    let ctl = TestController::start(cp.client(), strict()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let plain = Upstream::start(Reply::ok("plain")).await;
    let url = plain.url("/items?api_key=k3y-in-url");
    api.create(&PostParams::default(), &source("plain", &url, json!({}))).await.unwrap();
    let message = wait_failing(&api, "plain", "InvalidSpec").await;
    let shown = url.replace("k3y-in-url", "redacted");
    assert_eq!(
        message,
        format!("spec.generator.http.url: {shown:?} is plain http://; fetch.require_https allows only https:// URLs")
    );
    let es = api.get("plain").await.unwrap();
    assert_eq!(condition(&es, "Stalled"), Some(("True".into(), "InvalidSpec".into())));
    assert_eq!(plain.request_count(), 0, "nothing was sent over plain HTTP");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_source_works_and_a_redirect_to_http_is_refused_keeping_the_artifact() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("https-redirect").await;
    let ctl = TestController::start(cp.client(), strict()).await;
    let (ca, cert, key) = tls_material();
    let tls = Upstream::start_tls(Reply::ok("served over TLS"), &cert, &key).await;
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let secret = serde_json::from_value(json!({"metadata": {"name": "ca"}, "stringData": {"ca.crt": ca}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let spec = json!({"generator": {"type": "http", "http": {
        "url": tls.url("/"), "caBundleSecretRef": {"name": "ca", "key": "ca.crt"},
    }}});
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("tls", &tls.url("/"), spec)).await.unwrap();
    let es = wait_ready(&api, "tls", "True").await;
    let good = artifact(&es);
    assert_eq!(tls.request_count(), 1);

    // The same upstream now downgrades: https://localhost:P/ → http://localhost:P/plain.
    let downgrade = tls.url("/plain").replacen("https://", "http://", 1);
    tls.set(Reply::status(302).with_header("location", &downgrade));
    let es = request_reconcile(&api, "tls", "downgrade").await;
    let (status, reason, message) = externalsource_tests::sources::ready(&es).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"), "{message}");
    assert!(
        message.contains(&format!(
            "the redirect to {downgrade} is plain http://; fetch.require_https allows only https:// URLs"
        )),
        "{message}"
    );
    assert_eq!(tls.request_count(), 2, "the redirect was never followed");
    assert_eq!(artifact(&es), good, "the last good artifact stays published");
    let (code, _) = download(&good.url).await;
    assert_eq!(code, 200, "and served");
    ctl.stop().await;
}
