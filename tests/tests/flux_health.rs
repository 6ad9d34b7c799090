//! kstatus health checks on ExternalSources: a real kustomize-controller applies ExternalSources
//! (the manifests themselves come from one of our ExternalArtifacts, "catalog") with
//! `wait: true`, and its health check follows our status:
//!
//! - healthy once the applied sources are Ready for their current generation;
//! - a source changed to a URL that cannot be fetched keeps the Kustomization unhealthy (health
//!   check timeout, `HealthCheckFailed` naming the source): `observedGeneration` lags until we
//!   handle the new generation, then `Ready=False` with `Reconciling=True` is kstatus'
//!   InProgress;
//! - healthy again once the source recovers;
//! - the gap every kstatus user has: an ExternalSource no controller has written a status for yet
//!   counts as Current (kstatus treats a custom resource without status as reconciled), shown
//!   here with a source of another shard; the `healthCheckExprs` of docs/usage.md close it.
//!
//! Needs the controller binary (`cargo build -p externalsource-controller --all-features`) and
//! `tests/testenv.sh flux`.

use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::binary::ControllerProcess;
use externalsource_tests::controlplane::testenv_cache;
use externalsource_tests::flux::start_controller;
use externalsource_tests::process::{target_dir, wait_http_ok};
use externalsource_tests::sources::{request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, poll_until};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Longest wait for kustomize-controller or our controller to act (a health check timeout
/// included).
const WAIT: Duration = Duration::from_secs(90);
/// The Kustomization's health check timeout (kustomize-controller raises anything shorter to 30 s).
const HEALTH_TIMEOUT: &str = "30s";
/// The shard our controller is not running: sources labelled with it get no status.
const OTHER_SHARD: &str = "elsewhere";

/// The `healthCheckExprs` docs/usage.md recommends: Current only when Ready is True for the
/// current generation, Failed when Stalled; anything else (no status yet included) InProgress.
fn health_check_exprs() -> Value {
    json!([{
        "apiVersion": "source.flux.oddkin.co/v1alpha1",
        "kind": "ExternalSource",
        "current": "status.conditions.exists(c, c.type == 'Ready' && c.status == 'True' && c.observedGeneration == metadata.generation)",
        "failed": "status.conditions.exists(c, c.type == 'Stalled' && c.status == 'True')",
    }])
}

/// The catalog's YAML: one ExternalSource per `(name, url, shard)`.
fn catalog(entries: &[(&str, &str, Option<&str>)]) -> String {
    entries
        .iter()
        .map(|(name, url, shard)| {
            let labels = shard.map(|s| format!("  labels:\n    sharding.fluxcd.io/key: {s}\n")).unwrap_or_default();
            format!(
                "apiVersion: source.flux.oddkin.co/v1alpha1\nkind: ExternalSource\nmetadata:\n  name: {name}\n{labels}\
                 spec:\n  interval: 1h\n  generator:\n    type: http\n    http:\n      url: {url}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    obj.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)
}

fn summary(obj: &DynamicObject) -> String {
    let cond = |t: &str| condition(obj, t).map(|c| format!("{t}={} ({}): {}", c["status"], c["reason"], c["message"]));
    format!(
        "{:?} {:?}, lastAttemptedRevision {:?}",
        cond("Ready"),
        cond("Healthy"),
        obj.data.pointer("/status/lastAttemptedRevision")
    )
}

/// The Kustomization once it has attempted `revision` of the catalog and its Ready condition has
/// `ready` with `reason` (when Ready, for its current generation).
async fn kustomization_at(api: &Api<DynamicObject>, revision: &str, ready: &str, reason: &str) -> DynamicObject {
    let last = std::sync::Mutex::new(String::new());
    let found = poll_until(WAIT, || async {
        let ks = api.get("sources").await.ok()?;
        *last.lock().expect("lock") = summary(&ks);
        let c = condition(&ks, "Ready")?;
        let attempted = ks.data.pointer("/status/lastAttemptedRevision").and_then(Value::as_str)?;
        // kustomize-controller records a new generation as observed only when it succeeded.
        let observed = ks.data.pointer("/status/observedGeneration").and_then(Value::as_i64);
        let current = ready != "True" || observed == ks.metadata.generation;
        (current && attempted == revision && c["status"] == ready && c["reason"] == reason).then_some(ks)
    })
    .await;
    let last = last.into_inner().expect("lock");
    found.unwrap_or_else(|| panic!("Kustomization sources Ready={ready} ({reason}) at {revision}; last seen: {last}"))
}

async fn annotate(api: &Api<DynamicObject>, name: &str, token: &str) {
    let patch = json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate Kustomization");
}

/// Serves the next catalog and waits until our controller published it; returns its revision.
async fn publish_catalog(
    fixture: &Upstream,
    sources: &Api<ExternalSource>,
    entries: &[(&str, &str, Option<&str>)],
    token: &str,
) -> String {
    fixture.set(Reply::ok(catalog(entries)));
    let es = request_reconcile(sources, "catalog", token).await;
    es.status.and_then(|s| s.artifact).map(|a| a.revision).expect("the catalog's revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_true_health_follows_our_ready_condition_for_the_current_generation() {
    let cache = testenv_cache("flux");
    let logs = target_dir().join("flux-health");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("log dir");
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let ns = cp.namespace("flux-health").await;
    let (kc, kc_health) = start_controller(&cache, "kustomize-controller", &cp.kubeconfig_path(), &logs.join("kc.log"));
    let selector = format!("sharding.fluxcd.io/key!={OTHER_SHARD}");
    let _ours = ControllerProcess::start_with(&cp, &ns, &logs, &[("WATCH_LABEL_SELECTOR", &selector)]).await;
    wait_http_ok(&kc, &format!("http://127.0.0.1:{kc_health}/readyz"), WAIT).await;

    let good = Upstream::start(Reply::ok(r#"{"price":1}"#)).await;
    let bad = Upstream::start(Reply::status(503)).await;
    let (good_url, bad_url) = (good.url("/prices"), bad.url("/prices"));
    let catalog_fixture = Upstream::start(Reply::ok(catalog(&[("prices", &good_url, None)]))).await;
    let sources: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    let mut catalog_source = source("catalog", &catalog_fixture.url("/sources.yaml"), json!({}));
    catalog_source.spec.destination_path = Some("sources.yaml".to_owned());
    sources.create(&PostParams::default(), &catalog_source).await.expect("create catalog");
    let first =
        wait_ready(&sources, "catalog", "True").await.status.and_then(|s| s.artifact).expect("artifact").revision;

    let gvk = GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization");
    let kustomizations: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "kustomizations"));
    let kustomization: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "sources", "namespace": ns},
        "spec": {
            "interval": "1h",
            // No automatic retry: a failed health check stays visible until the test asks again.
            "retryInterval": "1h",
            "timeout": HEALTH_TIMEOUT,
            "sourceRef": {"kind": "ExternalArtifact", "name": "catalog"},
            "path": "./",
            "prune": true,
            "wait": true,
            "targetNamespace": ns,
        },
    }))
    .expect("Kustomization");
    kustomizations.create(&PostParams::default(), &kustomization).await.expect("create Kustomization");

    // 1. Healthy: the applied source is Ready for its generation.
    let ks = kustomization_at(&kustomizations, &first, "True", "ReconciliationSucceeded").await;
    assert_eq!(condition(&ks, "Healthy").map(|c| c["status"].clone()), Some(json!("True")), "{}", summary(&ks));
    let prices = wait_ready(&sources, "prices", "True").await;
    assert_eq!(prices.metadata.generation, Some(1));

    // 2. The source's URL changes to one that cannot be fetched: unhealthy, by timeout.
    let second = publish_catalog(&catalog_fixture, &sources, &[("prices", &bad_url, None)], "to-bad").await;
    annotate(&kustomizations, "sources", "to-bad").await;
    let ks = kustomization_at(&kustomizations, &second, "False", "HealthCheckFailed").await;
    let message = condition(&ks, "Ready").and_then(|c| c["message"].as_str()).unwrap_or_default().to_owned();
    assert!(
        message.contains(&format!("timeout waiting for: [ExternalSource/{ns}/prices status: 'InProgress']")),
        "the health check timed out on our source: {message}"
    );
    assert_eq!(condition(&ks, "Healthy").map(|c| c["status"].clone()), Some(json!("False")), "{}", summary(&ks));
    let prices = wait_ready(&sources, "prices", "False").await;
    let status = prices.status.clone().expect("status");
    assert_eq!((prices.metadata.generation, status.observed_generation), (Some(2), Some(2)), "{status:?}");
    let reconciling = status.conditions.iter().find(|c| c.type_ == "Reconciling").expect("Reconciling");
    assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", "ProgressingWithRetry"));

    // 3. The upstream recovers: the source is Ready again, and so is the Kustomization.
    bad.set(Reply::ok(r#"{"price":2}"#));
    request_reconcile(&sources, "prices", "recovered").await;
    wait_ready(&sources, "prices", "True").await;
    annotate(&kustomizations, "sources", "recovered").await;
    kustomization_at(&kustomizations, &second, "True", "ReconciliationSucceeded").await;

    // 4. The kstatus gap: a source of a shard nobody runs never gets a status, and kstatus calls
    //    a custom resource without status Current, so `wait: true` alone passes.
    let entries = [("prices", bad_url.as_str(), None), ("unwatched", good_url.as_str(), Some(OTHER_SHARD))];
    let third = publish_catalog(&catalog_fixture, &sources, &entries, "unwatched").await;
    annotate(&kustomizations, "sources", "unwatched").await;
    let ks = kustomization_at(&kustomizations, &third, "True", "ReconciliationSucceeded").await;
    assert_eq!(condition(&ks, "Healthy").map(|c| c["status"].clone()), Some(json!("True")), "{}", summary(&ks));
    let unwatched = sources.get("unwatched").await.expect("the Kustomization created it");
    assert!(unwatched.status.is_none(), "no controller wrote its status: {:?}", unwatched.status);

    // 5. With the healthCheckExprs of docs/usage.md, a source without status is InProgress.
    let patch = json!({"spec": {"healthCheckExprs": health_check_exprs()}});
    kustomizations.patch("sources", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let ks = kustomization_at(&kustomizations, &third, "False", "HealthCheckFailed").await;
    let message = condition(&ks, "Ready").and_then(|c| c["message"].as_str()).unwrap_or_default().to_owned();
    assert!(message.contains(&format!("ExternalSource/{ns}/unwatched")), "{message}");
    assert!(!message.contains(&format!("ExternalSource/{ns}/prices")), "prices is Ready: {message}");
    kc.assert_running();
}
