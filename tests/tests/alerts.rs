//! Flux alerting end to end: our controller posts Flux events to a real notification-controller
//! (`controller.events_addr`), whose `Alert` selects them by `eventSources` kind
//! `ExternalArtifact` and whose `Provider` (type `generic`) forwards them to a webhook receiver on
//! loopback. A new revision arrives as an `info` notification carrying the revision and the
//! source's `event.toolkit.fluxcd.io/` annotations; a failing upstream as one `error`
//! notification, not one per retry; Kubernetes Events are still recorded.
//!
//! Needs `bash tests/testenv.sh flux` (it builds notification-controller).

use std::process::Command;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::{Options, TestController};
use externalsource_tests::controlplane::testenv_cache;
use externalsource_tests::process::{ChildProcess, target_dir, wait_http_ok};
use externalsource_tests::sources::{artifact, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually, free_port};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn notification_api(client: &kube::Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("notification.toolkit.fluxcd.io", "v1beta3", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The notifications the receiver got, as JSON.
fn notifications(receiver: &Upstream) -> Vec<Value> {
    receiver.requests().iter().filter_map(|r| serde_json::from_slice(&r.body).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_controller_forwards_new_revisions_and_failures() {
    let cache = testenv_cache("flux");
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let ns = cp.namespace("alerts").await;

    // notification-controller, with its event endpoint on loopback.
    let bin = cache.join("bin/notification-controller");
    assert!(bin.is_file(), "{} missing: run `bash tests/testenv.sh flux`", bin.display());
    let (events_port, health_port) = (free_port(), free_port());
    let logs = target_dir().join("alerts");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--events-addr=127.0.0.1:{events_port}"))
        .arg(format!("--receiverAddr=127.0.0.1:{}", free_port()))
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{health_port}"))
        .arg("--watch-all-namespaces=true")
        .arg("--log-level=debug")
        .arg("--log-encoding=console")
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let nc = ChildProcess::spawn("notification-controller", cmd, &logs.join("notification-controller.log"));
    wait_http_ok(&nc, &format!("http://127.0.0.1:{health_port}/readyz"), WAIT).await;

    // A Provider that forwards to our webhook receiver, and an Alert on every ExternalArtifact.
    let receiver = Upstream::start(Reply::ok("")).await;
    let provider: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Provider",
        "metadata": {"name": "webhook", "namespace": ns},
        "spec": {"type": "generic", "address": receiver.url("/flux")},
    }))
    .expect("Provider");
    notification_api(&client, &ns, "Provider", "providers")
        .create(&PostParams::default(), &provider)
        .await
        .expect("create Provider");
    let alert: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Alert",
        "metadata": {"name": "artifacts", "namespace": ns},
        "spec": {
            "providerRef": {"name": "webhook"},
            "eventSeverity": "info",
            "eventSources": [{"kind": "ExternalArtifact", "name": "*"}],
        },
    }))
    .expect("Alert");
    notification_api(&client, &ns, "Alert", "alerts")
        .create(&PostParams::default(), &alert)
        .await
        .expect("create Alert");

    let upstream = Upstream::start(Reply::ok("price: 10\n")).await;
    let options = Options { events_addr: Some(format!("http://127.0.0.1:{events_port}/")), ..Options::default() };
    let controller = TestController::start(client.clone(), options).await;
    let sources: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    let mut es = source("prices", &upstream.url("/prices"), json!({}));
    es.metadata.annotations = Some([("event.toolkit.fluxcd.io/team".to_owned(), "payments".to_owned())].into());
    sources.create(&PostParams::default(), &es).await.expect("create source");
    let revision = artifact(&wait_ready(&sources, "prices", "True").await).revision;

    let info = eventually("an info notification for the new revision", WAIT, || async {
        notifications(&receiver).into_iter().find(|n| n["severity"] == "info")
    })
    .await;
    assert_eq!(info["involvedObject"]["kind"], "ExternalArtifact", "{info}");
    assert_eq!(info["involvedObject"]["name"], "prices");
    assert_eq!(info["involvedObject"]["namespace"], ns.as_str());
    assert_eq!(info["reason"], "NewArtifact");
    assert_eq!(info["reportingController"], "externalsource-controller");
    // notification-controller hands providers the metadata without the group prefixes.
    assert_eq!(info["metadata"]["revision"], revision.as_str(), "{info}");
    assert_eq!(info["metadata"]["team"], "payments", "{info}");
    assert!(info["message"].as_str().unwrap_or_default().contains(&revision), "{info}");

    // The upstream breaks: one error notification, however often the reconcile is retried.
    upstream.set(Reply::status(503));
    request_reconcile(&sources, "prices", "break").await;
    let error = eventually("an error notification", WAIT, || async {
        notifications(&receiver).into_iter().find(|n| n["severity"] == "error")
    })
    .await;
    assert_eq!(error["involvedObject"]["kind"], "ExternalArtifact", "{error}");
    assert_eq!(error["reason"], "FetchFailed", "{error}");
    assert!(error["metadata"].get("revision").is_none(), "a failure is not about a revision: {error}");
    let fetches_before = upstream.request_count();
    eventually("the failing fetch to be retried", WAIT, || async {
        (upstream.request_count() >= fetches_before + 2).then_some(())
    })
    .await;
    request_reconcile(&sources, "prices", "again").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors = notifications(&receiver).into_iter().filter(|n| n["severity"] == "error").count();
    assert_eq!(errors, 1, "the same failure is notified once: {:?}", notifications(&receiver));

    // Kubernetes Events are recorded as before.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "NewArtifact"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "FetchFailed"), "{reasons:?}");

    // A recovered upstream with new content: a second info notification, with the new revision.
    upstream.set(Reply::ok("price: 11\n"));
    request_reconcile(&sources, "prices", "recover").await;
    let second = artifact(&wait_ready(&sources, "prices", "True").await).revision;
    assert_ne!(second, revision);
    eventually("an info notification for the second revision", WAIT, || async {
        notifications(&receiver)
            .into_iter()
            .find(|n| n["severity"] == "info" && n["metadata"]["revision"] == second.as_str())
    })
    .await;
    nc.assert_running();
    controller.stop().await;
}
