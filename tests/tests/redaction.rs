//! Credentials a tenant puts in a URL (userinfo, query values) are sent upstream but never shown:
//! not in status messages, Events or the artifact's `org.opencontainers.image.source`.

use std::time::Duration;

use externalsource_core::controller::api::{ExternalArtifact, ExternalSource};
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{WAIT, artifact, ready, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const SECRETS: [&str; 2] = ["pa55word", "t0ken-value"];

fn assert_hidden(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows a credential: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_never_appear_in_status_events_or_metadata() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("redaction").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("data")).await;
    let url = fixture.url("/feed?token=t0ken-value&page=1").replacen("http://", "http://alice:pa55word@", 1);
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("creds", &url, json!({}))).await.unwrap();
    let es = wait_ready(&api, "creds", "True").await;
    // The upstream got the credentials: they are used, just not shown.
    let req = fixture.requests().pop().unwrap();
    assert!(req.headers.get("authorization").is_some(), "userinfo is sent as Basic auth");
    let shown = artifact(&es).metadata.get("org.opencontainers.image.source").cloned().unwrap();
    assert_hidden("org.opencontainers.image.source", &shown);
    assert!(shown.contains("/feed?token=redacted&page=redacted"), "{shown}");

    // Failures name the URL, redacted.
    fixture.set(Reply::status(500));
    let es = request_reconcile(&api, "creds", "fail").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "FetchFailed");
    assert!(message.contains("500") && message.contains("redacted@"), "{message}");
    assert_hidden("the Ready message", &serde_json::to_string(&es.status).unwrap());
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    assert_hidden("the ExternalArtifact", &serde_json::to_string(&eas.get("creds").await.unwrap()).unwrap());
    // Connection failures too (reqwest's own messages carry the URL).
    let closed = format!("http://alice:pa55word@127.0.0.1:{}/?token=t0ken-value", externalsource_tests::free_port());
    api.create(&PostParams::default(), &source("unreachable", &closed, json!({}))).await.unwrap();
    let es = eventually("unreachable fails", WAIT, || async {
        let es = api.get("unreachable").await.ok()?;
        (ready(&es)?.1 == "FetchFailed").then_some(es)
    })
    .await;
    assert_hidden("a transport error", &serde_json::to_string(&es.status).unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Api<Event> = Api::namespaced(cp.client(), &ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(!list.items.is_empty());
    for e in list.items {
        assert_hidden("an Event", &e.note.unwrap_or_default());
    }
    ctl.stop().await;
}
