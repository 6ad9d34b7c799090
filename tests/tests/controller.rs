//! The reconciler against a real kube-apiserver, a real HTTP fixture and the real artifact server.

use std::time::Duration;

use externalsource_core::controller::api::{ExternalArtifact, ExternalSource};
use externalsource_tests::controller::Options;
use externalsource_tests::fixture::tls_material;
use externalsource_tests::sources::{WAIT, artifact, download, ready, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually, sha256};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_becomes_ready_with_a_servable_artifact_and_no_churn() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("ready").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok(r#"{"items":[1,2,3]}"#).with_etag("\"v1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(
        &PostParams::default(),
        &source("app", &fixture.url("/data.json"), json!({"destinationPath": "cfg/data.json"})),
    )
    .await
    .expect("create");

    let es = wait_ready(&api, "app", "True").await;
    let art = artifact(&es);
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    let ea = eas.get("app").await.expect("ExternalArtifact exists");
    let ea_art = ea.status.as_ref().and_then(|s| s.artifact.clone()).expect("ExternalArtifact status.artifact");
    assert_eq!(ea_art, art, "both statuses publish the same artifact");
    let (code, bytes) = download(&ea_art.url).await;
    assert_eq!(code, 200);
    assert_eq!(sha256(&bytes), ea_art.digest, "digest is the sha256 of the served bytes");
    assert_eq!(ea_art.size, Some(bytes.len() as i64));
    assert_eq!(ea_art.path, format!("artifacts/{ns}/app/{}.tar.gz", &ea_art.digest[7..]));
    assert_eq!(ea_art.revision, format!("v1@{}", ea_art.digest));
    assert_eq!(ea_art.metadata.get("etag").map(String::as_str), Some("\"v1\""));
    assert!(ea_art.url.starts_with(&ctl.base_url));
    let src = ea.spec.source_ref.as_ref().expect("sourceRef");
    assert_eq!((src.kind.as_str(), src.name.as_str(), src.namespace.as_str()), ("ExternalSource", "app", ns.as_str()));
    let owner = &ea.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("ExternalSource", Some(true)));
    let ea_ready = ea.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").expect("EA Ready");
    assert_eq!((ea_ready.status.as_str(), ea_ready.reason.as_str()), ("True", "Succeeded"));
    assert!(ea_ready.message.contains(&ea_art.revision));
    // The tarball holds the payload at destinationPath, readable by tar.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.tar.gz"), &bytes).unwrap();
    let out = std::process::Command::new("tar").arg("-xzf").arg("a.tar.gz").current_dir(dir.path()).status().unwrap();
    assert!(out.success());
    assert_eq!(std::fs::read_to_string(dir.path().join("cfg/data.json")).unwrap(), r#"{"items":[1,2,3]}"#);

    // Unchanged upstream: a conditional GET answered 304; same revision, no status churn.
    let rv = es.metadata.resource_version.clone();
    let before = fixture.request_count();
    let es2 = request_reconcile(&api, "app", "t1").await;
    assert_eq!(artifact(&es2).revision, art.revision);
    let last = fixture.requests().pop().unwrap();
    assert_eq!(fixture.request_count(), before + 1);
    assert_eq!(last.headers.get("if-none-match").and_then(|v| v.to_str().ok()), Some("\"v1\""));
    assert_eq!(last.status, 304);
    let ea2 = eas.get("app").await.unwrap();
    assert_eq!(ea2.metadata.resource_version, ea.metadata.resource_version, "ExternalArtifact not rewritten");
    assert_ne!(es2.metadata.resource_version, rv, "only the handled annotation changed");

    // Same content under a new ETag: same bytes, same digest, same revision.
    fixture.set(Reply::ok(r#"{"items":[1,2,3]}"#).with_etag("\"v2\""));
    let es3 = request_reconcile(&api, "app", "t2").await;
    assert_eq!(artifact(&es3).revision, art.revision);
    assert_eq!(eas.get("app").await.unwrap().metadata.resource_version, ea.metadata.resource_version);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_upstream_makes_a_new_revision_and_old_ones_are_collected() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("change").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("one")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("s", &fixture.url("/"), json!({}))).await.unwrap();
    let first = artifact(&wait_ready(&api, "s", "True").await);
    assert!(first.revision.starts_with("latest@sha256:"), "no ETag: {}", first.revision);

    let mut revisions = vec![first.clone()];
    for (i, body) in ["two", "three"].iter().enumerate() {
        fixture.set(Reply::ok(*body));
        let es = request_reconcile(&api, "s", &format!("c{i}")).await;
        let a = artifact(&es);
        assert_ne!(a.digest, revisions.last().unwrap().digest);
        let (code, bytes) = download(&a.url).await;
        assert_eq!((code, sha256(&bytes)), (200, a.digest.clone()));
        let ea: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
        assert_eq!(ea.get("s").await.unwrap().status.unwrap().artifact.unwrap().revision, a.revision);
        revisions.push(a);
    }
    // Retention 2: the current and the previous revision stay; the first is gone.
    let stored: Vec<String> =
        ctl.storage.list(&format!("artifacts/{ns}/s/")).await.unwrap().into_iter().map(|m| m.key.to_string()).collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&revisions[2].path) && stored.contains(&revisions[1].path));
    assert_eq!(download(&revisions[0].url).await.0, 404, "the oldest revision is deleted");
    assert_eq!(download(&revisions[1].url).await.0, 200, "the previous revision is still served");
    // Every new revision is an Event of its own that names it (minutes apart or not).
    let events: Api<Event> = Api::namespaced(cp.client(), &ns);
    let notes = eventually("an Event per revision", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        let notes: Vec<String> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("NewArtifact"))
            .filter_map(|e| e.note)
            .collect();
        (notes.len() == 3).then_some(notes)
    })
    .await;
    for a in &revisions {
        assert!(notes.iter().any(|n| n.contains(&a.revision)), "{} in {notes:?}", a.revision);
    }
    ctl.stop().await;
}

/// The same Event repeated within minutes is one Event with a series count; an Event deleted
/// meanwhile is created anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_fold_into_a_series() {
    use externalsource_core::controller::events::kubernetes::EventRecorder;
    use kube::runtime::events::{Event as Occurrence, EventType};

    let cp = ControlPlane::start().await;
    let ns = cp.namespace("series").await;
    let fixture = Upstream::start(Reply::ok("x")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let es = api.create(&PostParams::default(), &source("s", &fixture.url("/"), json!({}))).await.unwrap();
    let recorder = EventRecorder::new(cp.client(), "externalsource-controller", "test");
    let occurrence = |note: &str| Occurrence {
        type_: EventType::Warning,
        reason: "FetchFailed".into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let regarding = kube::Resource::object_ref(&es, &());
    for _ in 0..3 {
        recorder.publish(&occurrence("HTTP 500"), &regarding).await.unwrap();
    }
    recorder.publish(&occurrence("HTTP 503"), &regarding).await.unwrap();
    let events: Api<Event> = Api::namespaced(cp.client(), &ns);
    let list = events.list(&Default::default()).await.unwrap().items;
    assert_eq!(list.len(), 2, "one Event per distinct note: {list:?}");
    let repeated = list.iter().find(|e| e.note.as_deref() == Some("HTTP 500")).unwrap();
    assert_eq!(repeated.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(repeated.reporting_controller.as_deref(), Some("externalsource-controller"));
    assert_eq!(repeated.regarding.as_ref().and_then(|r| r.uid.clone()), es.metadata.uid);

    events.delete(repeated.metadata.name.as_deref().unwrap(), &DeleteParams::default()).await.unwrap();
    recorder.publish(&occurrence("HTTP 500"), &regarding).await.unwrap();
    let list = events.list(&Default::default()).await.unwrap().items;
    let renewed: Vec<_> = list.iter().filter(|e| e.note.as_deref() == Some("HTTP 500")).collect();
    assert_eq!(renewed.len(), 1);
    assert_ne!(renewed[0].metadata.name, repeated.metadata.name, "a new Event replaces the deleted one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_keep_the_last_good_artifact_and_recover() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("failures").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("good")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("f", &fixture.url("/"), json!({}))).await.unwrap();
    let good = artifact(&wait_ready(&api, "f", "True").await);

    // 500: transient; Ready=False FetchFailed, retried with backoff, artifact kept and served.
    fixture.set(Reply::status(500));
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "e1"}}})),
    )
    .await
    .unwrap();
    let failed = eventually("Ready=False FetchFailed", WAIT, || async {
        let es = api.get("f").await.ok()?;
        let (s, reason, msg) = ready(&es)?;
        (s == "False" && reason == "FetchFailed").then_some((es, msg))
    })
    .await;
    assert!(failed.1.contains("500"), "message names the status: {}", failed.1);
    assert_eq!(artifact(&failed.0), good, "the last good artifact stays in the status");
    let ea = eas.get("f").await.unwrap();
    let ea_status = ea.status.unwrap();
    assert_eq!(ea_status.artifact.as_ref(), Some(&good));
    let ea_ready = ea_status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ea_ready.status.as_str(), ea_ready.reason.as_str()), ("False", "FetchFailed"));
    assert_eq!(download(&good.url).await.0, 200, "still served during the outage");
    // Backoff retries on its own (1 s, 2 s, …) without any trigger.
    let n = fixture.request_count();
    eventually("a retry with backoff", WAIT, || async { (fixture.request_count() > n).then_some(()) }).await;

    // Recovery: the next retry succeeds and the source is Ready again with the same artifact.
    fixture.set(Reply::ok("good"));
    let es = wait_ready(&api, "f", "True").await;
    assert_eq!(artifact(&es).digest, good.digest);

    // 404: permanent until the next interval; no retry storm.
    fixture.set(Reply::status(404));
    request_reconcile(&api, "f", "e2").await;
    let (_, reason, _) = ready(&api.get("f").await.unwrap()).unwrap();
    assert_eq!(reason, "FetchFailed");
    let n = fixture.request_count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fixture.request_count(), n, "a 404 is not retried before the interval");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_ca_bundle_come_from_secrets() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("secrets").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let (ca, cert, key) = tls_material();
    let fixture = Upstream::start_tls(Reply::ok("secret data"), &cert, &key).await;
    let secrets: Api<Secret> = Api::namespaced(cp.client(), &ns);
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let spec = json!({"generator": {"type": "http", "http": {
        "url": fixture.url("/"),
        "headersSecretRef": {"name": "hdrs"},
        "caBundleSecretRef": {"name": "ca", "key": "ca.crt"},
    }}});
    api.create(&PostParams::default(), &source("tls", &fixture.url("/"), spec)).await.unwrap();

    // Missing Secret: a configuration problem, Stalled, not retried.
    let (_, reason, message) =
        eventually("SecretNotFound", WAIT, || async { ready(&api.get("tls").await.ok()?).filter(|r| r.0 == "False") })
            .await;
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("hdrs"), "{message}");
    assert_eq!(fixture.request_count(), 0);

    // The Secrets appear: the metadata watch triggers a reconcile without any spec change.
    let secret = |name: &str, data: serde_json::Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap()
    };
    secrets.create(&PostParams::default(), &secret("ca", json!({"ca.crt": ca}))).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("hdrs", json!({"X-Api-Key": "s3cr3t", "Authorization": "Bearer t0k"})))
        .await
        .unwrap();
    let es = wait_ready(&api, "tls", "True").await;
    let req = fixture.requests().pop().unwrap();
    assert_eq!(req.headers.get("x-api-key").unwrap(), "s3cr3t");
    assert_eq!(req.headers.get("authorization").unwrap(), "Bearer t0k");
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!((code, sha256(&bytes)), (200, artifact(&es).digest));

    // Without the CA bundle the fixture's certificate is not trusted.
    let spec = json!({"generator": {"type": "http", "http": {"url": fixture.url("/")}}});
    api.create(&PostParams::default(), &source("untrusted", &fixture.url("/"), spec)).await.unwrap();
    let (_, reason, message) = eventually("untrusted fails", WAIT, || async {
        ready(&api.get("untrusted").await.ok()?).filter(|r| r.0 == "False")
    })
    .await;
    assert_eq!(reason, "FetchFailed");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_invalid_specs_stop_without_retry_storms() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("invalid").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("x")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);

    api.create(
        &PostParams::default(),
        &source("bad-path", &fixture.url("/"), json!({"destinationPath": "../../etc/passwd"})),
    )
    .await
    .unwrap();
    let es = wait_ready(&api, "bad-path", "False").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("spec.destinationPath") && message.contains("../../etc/passwd") && message.contains(".."),
        "{message}"
    );
    let stalled = es.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(stalled.status, "True");
    let rv = es.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(api.get("bad-path").await.unwrap().metadata.resource_version, rv, "no status rewrites (no retry storm)");
    assert_eq!(fixture.request_count(), 0, "an invalid spec never fetches");
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    assert!(eas.get_opt("bad-path").await.unwrap().is_none());

    // Fixing the spec recovers.
    api.patch("bad-path", &PatchParams::default(), &Patch::Merge(json!({"spec": {"destinationPath": "ok.txt"}})))
        .await
        .unwrap();
    wait_ready(&api, "bad-path", "True").await;

    // Interval below the minimum is raised, with a condition saying so.
    api.create(&PostParams::default(), &source("fast", &fixture.url("/"), json!({"interval": "10ms"}))).await.unwrap();
    let es = wait_ready(&api, "fast", "True").await;
    let raised =
        es.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "IntervalRaised").expect("IntervalRaised");
    assert!(raised.message.contains("10ms"), "{}", raised.message);

    // Suspend: Ready=False Suspended, artifact kept, no fetch even when asked.
    api.patch("fast", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.unwrap();
    let es = eventually("Suspended", WAIT, || async {
        let es = api.get("fast").await.ok()?;
        (ready(&es)?.1 == "Suspended").then_some(es)
    })
    .await;
    assert!(es.status.as_ref().unwrap().artifact.is_some());
    let n = fixture.request_count();
    api.patch(
        "fast",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "s1"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fixture.request_count(), n, "a suspended source does not fetch");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_cleans_up_and_foreign_artifacts_are_left_alone() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("deletion").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("bye")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("gone", &fixture.url("/"), json!({}))).await.unwrap();
    let art = artifact(&wait_ready(&api, "gone", "True").await);
    // Someone deletes the ExternalArtifact: the owner is reconciled and publishes it again.
    let first_uid = eas.get("gone").await.unwrap().metadata.uid;
    eas.delete("gone", &DeleteParams::default()).await.unwrap();
    let recreated = eventually("ExternalArtifact recreated", WAIT, || async {
        let ea = eas.get_opt("gone").await.ok()??;
        (ea.metadata.uid != first_uid && ea.status.as_ref()?.artifact.is_some()).then_some(ea)
    })
    .await;
    assert_eq!(recreated.status.unwrap().artifact.unwrap().digest, art.digest);
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually("source deleted", WAIT, || async { api.get_opt("gone").await.ok()?.is_none().then_some(()) }).await;
    assert!(eas.get_opt("gone").await.unwrap().is_none(), "ExternalArtifact deleted");
    assert!(ctl.storage.list(&format!("artifacts/{ns}/gone/")).await.unwrap().is_empty(), "storage emptied");
    assert_eq!(download(&art.url).await.0, 404);

    // An ExternalArtifact we do not own is not touched; the source reports the conflict.
    let foreign: ExternalArtifact = serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "ExternalArtifact",
        "metadata": {"name": "taken"}, "spec": {}
    }))
    .unwrap();
    let foreign = eas.create(&PostParams::default(), &foreign).await.unwrap();
    api.create(&PostParams::default(), &source("taken", &fixture.url("/"), json!({}))).await.unwrap();
    let es = wait_ready(&api, "taken", "False").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "ArtifactConflict");
    assert!(message.contains("not owned"), "{message}");
    let after = eas.get("taken").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "foreign object untouched");
    api.delete("taken", &DeleteParams::default()).await.unwrap();
    eventually("source deleted", WAIT, || async { api.get_opt("taken").await.ok()?.is_none().then_some(()) }).await;
    assert!(eas.get_opt("taken").await.unwrap().is_some(), "foreign ExternalArtifact survives deletion");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_an_empty_memory_store_rebuilds() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("restart").await;
    let fixture = Upstream::start(Reply::ok("persist me").with_etag("\"e1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let store = |b: &str| -> std::sync::Arc<dyn externalsource_core::Storage> {
        externalsource_core::backend::host(externalsource_backend_memory::MemoryStorage::new(1 << 20), Some(b))
    };
    let ctl = TestController::start_with(cp.client(), Options::default(), store(&base), listener, base.clone()).await;
    api.create(&PostParams::default(), &source("r", &fixture.url("/"), json!({}))).await.unwrap();
    let art = artifact(&wait_ready(&api, "r", "True").await);
    ctl.stop().await;

    // A new process: same address, empty memory. The ETag is unchanged, but the artifact is
    // missing, so it is fetched whole (no If-None-Match) and stored again.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let ctl = TestController::start_with(cp.client(), Options::default(), store(&base), listener, base.clone()).await;
    let before = fixture.request_count();
    let es = request_reconcile(&api, "r", "after-restart").await;
    assert_eq!(artifact(&es).digest, art.digest);
    let req = &fixture.requests()[before];
    assert!(req.headers.get("if-none-match").is_none(), "a lost artifact is fetched unconditionally");
    let (code, bytes) = download(&art.url).await;
    assert_eq!((code, sha256(&bytes)), (200, art.digest.clone()));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_holds_the_lease() {
    use externalsource_core::controller::runtime::leader::{LeaderElector, Timings};
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("lease").await;
    let t = Timings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_every: Duration::from_millis(200),
    };
    let a = LeaderElector::new(cp.client(), &ns, "leader", "pod-a", t);
    let b = LeaderElector::new(cp.client(), &ns, "leader", "pod-b", t);
    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap(), "a held lease is not taken");
    assert!(a.try_acquire().await.unwrap(), "the holder renews");
    a.release().await;
    assert!(b.try_acquire().await.unwrap(), "a released lease is taken at once");
    assert!(!a.try_acquire().await.unwrap());
    // An expired lease (holder stopped renewing) is taken over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(a.try_acquire().await.unwrap(), "an expired lease is taken over");
}

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = externalsource_core::controller::api::crd_yaml().unwrap();
    // The kustomize base and the Helm chart's copy (a chart cannot read files outside itself).
    for rel in [
        "deploy/base/crd/source.flux.oddkin.co_externalsources.yaml",
        "deploy/chart/externalsource-controller/files/source.flux.oddkin.co_externalsources.yaml",
    ] {
        let path = externalsource_tests::repo_root().join(rel);
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            generated == committed,
            "{rel} is stale: regenerate it with `cargo run -p externalsource-controller -- crd > {rel}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_transforms_reshape_the_payload_in_the_sandbox() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("transform").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok(r#"{"items":[{"name":"a","x":1},{"name":"b","x":2}]}"#)).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let spec = json!({"destinationPath": "names.json", "transform": {"jq": ".items | map(.name)"}});
    api.create(&PostParams::default(), &source("jq", &fixture.url("/"), spec)).await.unwrap();
    let es = wait_ready(&api, "jq", "True").await;
    let (code, bytes) = download(&artifact(&es).url).await;
    assert_eq!(code, 200);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.tar.gz"), &bytes).unwrap();
    let ok = std::process::Command::new("tar").args(["-xzf", "a.tar.gz"]).current_dir(dir.path()).status().unwrap();
    assert!(ok.success());
    assert_eq!(std::fs::read_to_string(dir.path().join("names.json")).unwrap(), "[\"a\",\"b\"]\n");

    // A filter that does not compile is a spec error naming the field.
    let spec = json!({"transform": {"jq": ".items | map(("}});
    api.create(&PostParams::default(), &source("bad-jq", &fixture.url("/"), spec)).await.unwrap();
    let (_, reason, message) = ready(&wait_ready(&api, "bad-jq", "False").await).unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.starts_with("spec.transform.jq"), "{message}");

    // The environment is out of reach: `env` does not compile.
    let spec = json!({"transform": {"jq": "env"}});
    api.create(&PostParams::default(), &source("env-jq", &fixture.url("/"), spec)).await.unwrap();
    assert_eq!(ready(&wait_ready(&api, "env-jq", "False").await).unwrap().1, "InvalidSpec");

    // A payload the filter cannot handle keeps the last good artifact, Ready=False TransformFailed.
    fixture.set(Reply::ok("not json at all"));
    let es = request_reconcile(&api, "jq", "nonjson").await;
    let (status, reason, message) = ready(&es).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "TransformFailed"), "{message}");
    assert_eq!(artifact(&es).digest, sha256(&bytes));
    ctl.stop().await;
}

/// The source's labels reach its ExternalArtifact (flux-operator ResourceSets and sharded Flux
/// controllers select ExternalArtifacts by label); a changed or removed label follows at once,
/// and labels someone else put on the ExternalArtifact stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_labels_are_copied_to_its_external_artifact() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("labels").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("a: 1\n")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let mut es = source("labelled", &fixture.url("/a"), json!({}));
    es.metadata.labels = Some([("team".into(), "a".into()), ("sharding.fluxcd.io/key".into(), "shard1".into())].into());
    api.create(&PostParams::default(), &es).await.unwrap();
    wait_ready(&api, "labelled", "True").await;
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    let labels = |ea: &ExternalArtifact| ea.metadata.labels.clone().unwrap_or_default();
    let ea = eas.get("labelled").await.unwrap();
    assert_eq!(labels(&ea).get("team").map(String::as_str), Some("a"));
    assert_eq!(labels(&ea).get("sharding.fluxcd.io/key").map(String::as_str), Some("shard1"));
    assert_eq!(labels(&ea).get("app.kubernetes.io/managed-by").map(String::as_str), Some("externalsource-controller"));
    let theirs = json!({"metadata": {"labels": {"added-by-someone": "x"}}});
    eas.patch("labelled", &PatchParams::default(), &Patch::Merge(&theirs)).await.unwrap();

    let change = json!({"metadata": {"labels": {"team": "b", "sharding.fluxcd.io/key": null}}});
    api.patch("labelled", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap();
    let ea = eventually("the label change reaches the ExternalArtifact", WAIT, || async {
        let ea = eas.get("labelled").await.ok()?;
        (labels(&ea).get("team").map(String::as_str) == Some("b")).then_some(ea)
    })
    .await;
    assert!(!labels(&ea).contains_key("sharding.fluxcd.io/key"), "a removed label is removed: {:?}", labels(&ea));
    assert_eq!(labels(&ea).get("added-by-someone").map(String::as_str), Some("x"), "other labels stay");
    assert_eq!(labels(&ea).get("app.kubernetes.io/managed-by").map(String::as_str), Some("externalsource-controller"));

    // Annotations are opt-in: only those `source.flux.oddkin.co/copy-annotations` names.
    let annotations = |ea: &ExternalArtifact| ea.metadata.annotations.clone().unwrap_or_default();
    let chosen = json!({"metadata": {"annotations": {
        "source.flux.oddkin.co/copy-annotations": "docs.example/owner",
        "docs.example/owner": "team-b",
        "docs.example/private": "stays on the source",
    }}});
    api.patch("labelled", &PatchParams::default(), &Patch::Merge(&chosen)).await.unwrap();
    let ea = eventually("the chosen annotation reaches the ExternalArtifact", WAIT, || async {
        let ea = eas.get("labelled").await.ok()?;
        (annotations(&ea).get("docs.example/owner").map(String::as_str) == Some("team-b")).then_some(ea)
    })
    .await;
    assert!(!annotations(&ea).contains_key("docs.example/private"), "{:?}", annotations(&ea));
    let unchosen = json!({"metadata": {"annotations": {"source.flux.oddkin.co/copy-annotations": null}}});
    api.patch("labelled", &PatchParams::default(), &Patch::Merge(&unchosen)).await.unwrap();
    let ea = eventually("the no longer chosen annotation leaves the ExternalArtifact", WAIT, || async {
        let ea = eas.get("labelled").await.ok()?;
        (!annotations(&ea).contains_key("docs.example/owner")).then_some(ea)
    })
    .await;
    assert_eq!(labels(&ea).get("team").map(String::as_str), Some("b"), "labels are untouched");
    ctl.stop().await;
}

/// Sharding like Flux: each controller reconciles only the sources its
/// `controller.watch_label_selector` matches; a source no shard selects is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_reconcile_only_the_sources_their_selector_matches() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("shards").await;
    let shard = |key: &str| Options {
        watch_label_selector: Some(format!("sharding.fluxcd.io/key={key}")),
        ..Options::default()
    };
    let one = TestController::start(cp.client(), shard("shard1")).await;
    let two = TestController::start(cp.client(), shard("shard2")).await;
    let fixture = Upstream::start(Reply::ok("a: 1\n")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    for (name, key) in [("first", Some("shard1")), ("second", Some("shard2")), ("nobodys", None)] {
        let mut es = source(name, &fixture.url(&format!("/{name}")), json!({}));
        es.metadata.labels = key.map(|k| [("sharding.fluxcd.io/key".to_owned(), k.to_owned())].into());
        api.create(&PostParams::default(), &es).await.unwrap();
    }
    let first = artifact(&wait_ready(&api, "first", "True").await);
    let second = artifact(&wait_ready(&api, "second", "True").await);
    assert!(first.url.starts_with(&one.base_url), "{} from shard1's controller", first.url);
    assert!(second.url.starts_with(&two.base_url), "{} from shard2's controller", second.url);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nobodys = api.get("nobodys").await.unwrap();
    assert!(nobodys.status.is_none(), "no shard touched it: {:?}", nobodys.status);
    assert!(nobodys.metadata.finalizers.is_none(), "no finalizer added");
    assert_eq!(fixture.requests().iter().filter(|r| r.path == "/nobodys").count(), 0);
    one.stop().await;
    two.stop().await;
}

/// A new generation whose fetch is quick goes straight to its final status (one status write);
/// one whose fetch takes longer than a second is announced with Reconciling=True first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_announced_only_when_its_fetch_is_slow() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let cp = ControlPlane::start().await;
    let ns = cp.namespace("announce").await;
    let _ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    // Every status the API server stores, as the watch sees it: (name, Reconciling reason).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Option<String>)>::new()));
    let recorder = tokio::spawn({
        // With backoff, and errors skipped: a failed (re)connect of the watch must not end the
        // recording (the stream resumes, relisting the current objects).
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff().applied_objects();
        let seen = seen.clone();
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let Ok(es) = item else { continue };
                let reconciling = es
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Reconciling").map(|c| c.reason.clone()));
                seen.lock().unwrap().push((es.metadata.name.clone().unwrap_or_default(), reconciling));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let fast = Upstream::start(Reply::ok("quick")).await;
    api.create(&PostParams::default(), &source("fast", &fast.url("/"), json!({}))).await.unwrap();
    wait_ready(&api, "fast", "True").await;
    let slow = Upstream::start(Reply::ok("slow").with_delay(Duration::from_secs(3))).await;
    api.create(&PostParams::default(), &source("slow", &slow.url("/"), json!({}))).await.unwrap();
    eventually("slow announced as Reconciling/Progressing", WAIT, || async {
        let es = api.get("slow").await.ok()?;
        let status = es.status?;
        status.conditions.iter().any(|c| c.type_ == "Reconciling" && c.reason == "Progressing").then_some(())
    })
    .await;
    let es = wait_ready(&api, "slow", "True").await;
    assert!(es.status.unwrap().conditions.iter().all(|c| c.type_ != "Reconciling"), "done: no longer reconciling");
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let seen = seen.lock().unwrap();
    let fast_states: Vec<_> = seen.iter().filter(|(n, _)| n == "fast").map(|(_, r)| r.clone()).collect();
    assert!(!fast_states.is_empty(), "the watch saw the fast source");
    assert!(fast_states.iter().all(|r| r.as_deref() != Some("Progressing")), "quick: never announced: {fast_states:?}");
}

/// A new source costs one reconcile: the finalizer is added in the pass that publishes, and that
/// write does not echo back as a second reconcile (nor do the status writes). A finalizer someone
/// removes from a published source is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_is_published_in_one_reconcile_and_its_finalizer_is_kept() {
    use externalsource_core::controller::api::FINALIZER;

    let cp = ControlPlane::start().await;
    let ns = cp.namespace("onepass").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("x: 1\n").with_etag("\"e1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("one", &fixture.url("/"), json!({}))).await.unwrap();
    let es = wait_ready(&api, "one", "True").await;
    assert_eq!(es.metadata.finalizers.as_deref(), Some(&[FINALIZER.to_owned()][..]));
    // Time for any echo of our own writes to be reconciled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reconciles(&ctl, &ns, "one"), 1, "one reconcile for a new source");
    assert_eq!(fixture.request_count(), 1, "fetched once");

    let rv = api.get("one").await.unwrap().metadata.resource_version;
    api.patch("one", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    eventually("the finalizer is put back", WAIT, || async {
        let es = api.get("one").await.ok()?;
        (es.metadata.finalizers.as_deref() == Some(&[FINALIZER.to_owned()][..]) && es.metadata.resource_version != rv)
            .then_some(())
    })
    .await;
    assert_eq!(artifact(&api.get("one").await.unwrap()).revision, artifact(&es).revision, "nothing else changed");
    ctl.stop().await;
}

/// Steady-state reconciles do not read an ExternalArtifact nobody changed: the controller works
/// from the version it wrote while the watch reports no newer one. A change by someone else is
/// seen, read and put right at the next reconcile. A write from a remembered version is
/// conditional on it, which the API server enforces on the status subresource too.
#[tokio::test]
async fn an_unchanged_external_artifact_is_not_read_again_and_a_changed_one_is_put_right() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("remembered").await;
    let (client, requests) = cp.recording_client().await;
    let ctl = TestController::start(client, Options::default()).await;
    let fixture = Upstream::start(Reply::ok("x: 1\n").with_etag("\"e1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("steady", &fixture.url("/"), json!({"interval": "1s"}))).await.unwrap();
    let es = wait_ready(&api, "steady", "True").await;
    let path = format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/{ns}/externalartifacts/steady");
    eventually("four reconciles at a 1 s interval", WAIT, || async {
        (reconciles(&ctl, &ns, "steady") >= 4).then_some(())
    })
    .await;
    assert!(fixture.request_count() >= 4, "each reconcile asked upstream");
    assert_eq!(requests.count(&http::Method::GET, &path), 0, "the ExternalArtifact was never read");
    assert_eq!(requests.count(&http::Method::PATCH, &format!("{path}/status")), 1, "its status was written once");

    // Someone else rewrites the published status: the next reconcile reads it and puts it right.
    let artifacts: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    let tampered = json!({"status": {"artifact": {"revision": "tampered", "digest": "sha256:00"}}});
    artifacts.patch_status("steady", &PatchParams::default(), &Patch::Merge(&tampered)).await.unwrap();
    let revision = artifact(&es).revision;
    eventually("the published status is put right", WAIT, || async {
        let ea = artifacts.get("steady").await.ok()?;
        let published = ea.status?.artifact?;
        (published.revision == revision && published.digest == artifact(&es).digest).then_some(())
    })
    .await;
    assert!(requests.count(&http::Method::GET, &path) >= 1, "the changed ExternalArtifact was read");

    // The precondition the controller relies on: a status merge patch naming an older
    // resourceVersion is refused, not applied over the newer object.
    let current = artifacts.get("steady").await.unwrap();
    artifacts.patch_status("steady", &PatchParams::default(), &Patch::Merge(&tampered)).await.unwrap();
    let stale = json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "status": {"artifact": {"revision": "from-a-stale-version"}},
    });
    match artifacts.patch_status("steady", &PatchParams::default(), &Patch::Merge(&stale)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale resourceVersion was accepted: {other:?}"),
    }
    ctl.stop().await;
}

/// Reconciles of `namespace/name` the controller counted, whatever their result.
fn reconciles(ctl: &TestController, namespace: &str, name: &str) -> u64 {
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &ctl.registry).unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("externalsource_reconciliation_total{")
                && l.contains(&format!("namespace=\"{namespace}\""))
                && l.contains(&format!("name=\"{name}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Flux's tools ask the object they know, the ExternalArtifact, for a reconcile: the request
/// reaches its ExternalSource, which fetches and records it as handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_requested_on_the_external_artifact_reaches_its_source() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("requested").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("v1")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    // An hour's interval: nothing but the request can make the next fetch.
    api.create(&PostParams::default(), &source("r", &fixture.url("/"), json!({}))).await.unwrap();
    let first = artifact(&wait_ready(&api, "r", "True").await);
    fixture.set(Reply::ok("v2"));
    let fetched = fixture.request_count();

    let request = |value: &str| json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": value}}});
    eas.patch("r", &PatchParams::default(), &Patch::Merge(request("from-flux-1"))).await.unwrap();
    let handled = eventually("the ExternalSource to handle the artifact's request", WAIT, || async {
        let es = api.get("r").await.ok()?;
        let status = es.status.as_ref()?;
        (status.last_handled_reconcile_at.as_deref() == Some("from-flux-1")).then_some(es)
    })
    .await;
    assert_eq!(fixture.request_count(), fetched + 1, "the request made one fetch");
    let second = artifact(&handled);
    assert_ne!(second.digest, first.digest, "the fetch published the upstream's new content");
    let ea = eas.get("r").await.unwrap();
    assert_eq!(ea.status.and_then(|s| s.artifact).map(|a| a.digest), Some(second.digest), "and the artifact is it");

    // A value already handled is not a new request: an unrelated edit of the artifact, which
    // the watch reports with the old value still on it, fetches nothing.
    let labelled = json!({"metadata": {"labels": {"unrelated": "edit"}}});
    eas.patch("r", &PatchParams::default(), &Patch::Merge(labelled)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fixture.request_count(), fetched + 1, "an old request is not handed on again");

    // A second request is handed on as well.
    eas.patch("r", &PatchParams::default(), &Patch::Merge(request("from-flux-2"))).await.unwrap();
    eventually("the second request to be handled", WAIT, || async {
        let es = api.get("r").await.ok()?;
        (es.status?.last_handled_reconcile_at.as_deref() == Some("from-flux-2")).then_some(())
    })
    .await;
    assert_eq!(fixture.request_count(), fetched + 2);
    ctl.stop().await;
}
